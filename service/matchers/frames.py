"""Sampled video and animation frames, and further document pages, against the image PDQ banks.

A frame of known material is known material: each frame's PDQ (as shown, no dihedral variants) is
looked up in the same banks as image uploads.  The hits of one bank entry over all frames become one
:class:`~service.models.Match` (matcher ``pdq``, so it counts and alerts like an image match) whose
``details`` say where: the time offsets and frame numbers (video, animation) or page numbers
(document), how many frames matched and how many were hashed.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from service.matchers.banks import BankSet
from service.matchers.pdq import INLINE_MAX_HASHES
from service.models import KIND_DOCUMENT, Match, PdqSignal, PreparedMedia

MAX_LISTED = 50  # offsets listed per match (the count says how many there were)


class FrameMatcher:
    name = "pdq-frames"

    def __init__(self, banks: BankSet, *, inline_max_hashes: int = INLINE_MAX_HASHES) -> None:
        self._banks = banks
        self._inline_max = inline_max_hashes

    async def match(self, media: PreparedMedia) -> list[Match]:
        if not media.frames:
            return []
        if self._banks.pdq_count * len(media.frames) <= self._inline_max:
            return match_frames(self._banks, media)
        return await asyncio.to_thread(match_frames, self._banks, media)

    async def aclose(self) -> None:
        return None


def match_frames(banks: BankSet, media: PreparedMedia) -> list[Match]:
    """One match per bank entry hit by any frame, with where it was hit (see the module docstring)."""
    hits: dict[str, tuple[Match, list[tuple[float, int, int]]]] = {}
    for frame in media.frames:
        for m in banks.match_pdq(PdqSignal(hashes=(frame.pdq,), quality=frame.quality)):
            spot = (frame.timestamp, frame.frame_number, m.distance if m.distance is not None else 0)
            if m.key in hits:
                hits[m.key][1].append(spot)
            else:
                hits[m.key] = (m, [spot])
    out: list[Match] = []
    for first, spots in hits.values():
        where = sorted(spots)
        best = min(d for _, _, d in where)
        details: dict[str, object] = {
            "media": media.kind,
            "threshold": first.details.get("threshold"),
            "quality": max(f.quality for f in media.frames),
            "frames_matched": len(where),
            "frames_hashed": media.frames_sampled or len(media.frames),
        }
        if media.kind == KIND_DOCUMENT:
            details["pages"] = [n for _, n, _ in where[:MAX_LISTED]]
        else:
            details["offsets"] = [t for t, _, _ in where[:MAX_LISTED]]
            details["frame_numbers"] = [n for _, n, _ in where[:MAX_LISTED]]
        out.append(replace(first, distance=best, details=details))
    out.sort(key=lambda m: (m.distance or 0, m.bank))
    return out
