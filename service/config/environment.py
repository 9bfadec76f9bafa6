"""Checks of what a configuration refers to outside the file: secrets and bank files.

Run by ``check-config`` and by the commands that start the service, not by every ``load_config``: a config
can be valid while the machine reading it (CI, a laptop) has neither the secrets nor the hash lists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from service.config.core import Secret
from service.config.fields import secret_shape_problem, secrets_in
from service.config.matching import BanksSection
from service.config.problems import _Problems
from service.config.root import Config
from service.config.values import resolve_path
from service.errors import BankError


def secret_problems(cfg: Config, problems: _Problems) -> None:
    """Every ``{env: VAR}`` / ``{file: PATH}`` of an enabled section must yield a value now."""
    for path, secret in secrets_in(cfg, enabled_only=True):
        if secret_shape_problem(secret) is not None:
            continue  # reported by the validation
        why = secret.problem()
        if why is not None:
            problems.add(path, f"no secret available: {why}")
    if cfg.review.enabled:
        for i, reviewer in enumerate(cfg.review.reviewers):
            stored = reviewer.password_hash
            value = stored.get() if isinstance(stored, Secret) else None
            if value is not None and not value.startswith("$argon2"):
                problems.add(f"review.reviewers[{i}].password_hash",
                             f"{stored!r} does not hold an argon2 hash (mediamoderation reviewer hash-password)")


def bank_file_problems(banks: BanksSection, base: Path, problems: _Problems) -> None:
    """Each bank file parses with the service's own bank parser (relative paths are relative to ``base``)."""
    from service.matchers.banks import load_bank  # the matcher stack (numpy, Pillow) only when asked

    for i, bank in enumerate(banks.list):
        if not (isinstance(bank.path, str) and bank.path):
            continue  # a wrong or missing path: reported by the validation
        try:
            path = resolve_path(base, bank.path)
            if not path.is_file():
                continue
        except (RuntimeError, OSError, ValueError):
            continue  # an unusable path: reported by the validation
        try:
            load_bank(dataclasses.replace(bank, path=str(path)))
        except BankError as exc:
            problems.add(f"banks.list[{i}].path", str(exc))
