"""The PhotoDNA Cloud Service Match API's contract, and what the service keeps of it.

* Request: ``POST https://api.microsoftmoderator.com/photodna/v1.0/Match[?enhance=true|false]`` with
  ``Ocp-Apim-Subscription-Key`` and the ``Content-Type`` of the bytes actually sent (one of
  :data:`CONTENT_TYPES`); the image at least 160 x 160 px and at most 4 MB.
* Answer (HTTP 200): ``{"Status": {"Code", "Description"}, "IsMatch", "MatchDetails": {"MatchFlags": [{"Source",
  "Violations", "MatchDistance", "AdvancedInfo": [{"Key": "MatchId", ...}]}]}, "TrackingId", ...}``;
  :func:`parse_answer` keeps all of it.  Codes: 3000 OK, 3002 invalid request, 3004 unknown error
  (transient), 3206 not an image, 3208 image size out of range, 3209 request too large (undocumented).
* Errors outside the envelope: non-2xx with the Azure API-management body ``{"statusCode": 401,
  "message": "Access denied ..."}``; 429 and ``Retry-After`` are undocumented but happen.

Also here: the errors a call ends with, and the one re-encoding a size refusal allows (:func:`refit_jpeg`).
The client is :mod:`service.matchers.photodna_client`, the matcher :mod:`service.matchers.photodna`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from service.errors import ServiceError

OK, INVALID_REQUEST, UNKNOWN_ERROR, NOT_AN_IMAGE, IMAGE_SIZE, REQUEST_SIZE = 3000, 3002, 3004, 3206, 3208, 3209
CONTENT_TYPES = ("image/jpeg", "image/png", "image/gif", "image/bmp", "image/tiff")
MIN_SIDE = 160
MAX_BYTES = 4_000_000


# --------------------------------------------------------------------------- the answer


@dataclass(frozen=True, slots=True)
class MatchFlag:
    source: str
    violations: tuple[str, ...]
    distance: int | None
    match_id: str | None
    advanced_info: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PhotoDnaResult:
    code: int
    description: str
    is_match: bool
    flags: tuple[MatchFlag, ...]
    tracking_id: str | None
    content_id: str | None = None
    raw: str = field(default="", compare=False, repr=False)  # the body as received

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": {"code": self.code, "description": self.description},
            "is_match": self.is_match,
            "tracking_id": self.tracking_id,
            "content_id": self.content_id,
            "match_flags": [
                {"source": f.source, "violations": list(f.violations), "match_distance": f.distance,
                 "match_id": f.match_id, "advanced_info": dict(f.advanced_info)} for f in self.flags
            ],
        }


class BadAnswer(ValueError):
    """A 200 answer that is not the documented JSON envelope."""


def _kv(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if isinstance(item, dict) and "Key" in item:
            out[str(item["Key"])] = str(item.get("Value"))
    return out


def parse_answer(body: bytes | str) -> PhotoDnaResult:
    """Parse a Match answer, keeping everything the service uses; :class:`BadAnswer` when malformed."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadAnswer(f"not JSON: {text[:80]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Status"), dict):
        raise BadAnswer(f"no Status object: {text[:80]!r}")
    status = data["Status"]
    try:
        code = int(status.get("Code"))
    except (TypeError, ValueError) as exc:
        raise BadAnswer(f"Status.Code is not a number: {status.get('Code')!r}") from exc
    flags: list[MatchFlag] = []
    details = data.get("MatchDetails")
    for f in (details.get("MatchFlags") if isinstance(details, dict) else None) or []:
        if not isinstance(f, dict):
            continue
        info = _kv(f.get("AdvancedInfo"))
        violations = f.get("Violations") or []
        distance = f.get("MatchDistance")
        flags.append(MatchFlag(
            source=str(f.get("Source") or ""),
            violations=tuple(str(v) for v in violations) if isinstance(violations, list) else (str(violations),),
            distance=int(distance) if isinstance(distance, int | float) else None,
            match_id=info.get("MatchId"),
            advanced_info=info,
        ))
    tracking = data.get("TrackingId")
    content_id = data.get("ContentId")
    return PhotoDnaResult(
        code=code,
        description=str(status.get("Description") or ""),
        is_match=data.get("IsMatch") is True,
        flags=tuple(flags),
        tracking_id=str(tracking) if tracking else None,
        content_id=str(content_id) if content_id else None,
        raw=text,
    )


# --------------------------------------------------------------------------- errors


class PhotoDnaError(ServiceError):
    """A PhotoDNA call ended without a verdict; ``reason`` becomes the outcome ``error:<reason>``."""

    def __init__(self, message: str, *, reason: str = "photodna", retriable: bool = True,
                 tracking_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retriable = retriable
        self.tracking_id = tracking_id


class PhotoDnaUnauthorized(PhotoDnaError):
    """PhotoDNA refuses the key (HTTP 401/403), or there is no key: nothing is sent until a probe passes."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="photodna-unauthorized", retriable=True)


# --------------------------------------------------------------------------- re-encoding


def refit_jpeg(data: bytes, *, min_side: int = MIN_SIDE, max_bytes: int = MAX_BYTES) -> bytes:
    """Re-encode an image PhotoDNA refused for its size: small ones grown well past ``min_side``, others
    shrunk to about half the pixels; always a baseline JPEG comfortably under ``max_bytes``."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    w, h = rgb.size
    target = max(min_side * 1.6, 256)
    scale = target / min(w, h) if min(w, h) < target else max(0.7, target / min(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = rgb.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BILINEAR)
    for quality in (85, 70, 50):
        out = io.BytesIO()
        resized.save(out, "JPEG", quality=quality)
        if out.tell() < max_bytes * 0.75:
            break
    return out.getvalue()
