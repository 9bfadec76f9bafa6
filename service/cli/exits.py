"""The documented exit codes, and how the outcomes of several files combine into one."""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_MATCH = 1  # a file matched a bank (or PhotoDNA)
EXIT_USAGE = 2  # a usage error or an invalid config
EXIT_CONFIG = EXIT_USAGE
EXIT_UNSCANNABLE = 3  # a file could not be scanned
EXIT_UPSTREAM = 4  # an upstream (PhotoDNA, the wiki, the stream) failed

# Which code wins when several files end differently: a match must never hide behind an unscannable file.
_PRECEDENCE = (EXIT_MATCH, EXIT_UNSCANNABLE, EXIT_UPSTREAM, EXIT_OK)


def outcome_code(outcome: str) -> int:
    """The exit code for one scan outcome (``clean``, ``match``, ``unscannable:<reason>``, ``error:<reason>``)."""
    if outcome == "match":
        return EXIT_MATCH
    if outcome.startswith(("unscannable:", "error:")):
        return EXIT_UNSCANNABLE
    return EXIT_OK


def combine(codes: Iterable[int]) -> int:
    """One exit code for a batch: match (1) before unscannable (3) before upstream error (4) before ok (0)."""
    seen = set(codes)
    return next((code for code in _PRECEDENCE if code in seen), EXIT_OK)
