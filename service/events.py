"""Turn raw ``mediawiki.recentchange`` events into :class:`UploadEvent` records.

``classify`` returns either an UploadEvent or a :class:`Skip` with a reason.  A malformed event
raises :class:`MalformedEvent` whose ``problem`` is a short slug for the metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from service.errors import MalformedEvent
from service.models import LOG_ACTIONS, UploadEvent

MAX_EVENT_BYTES = 1_000_000  # a recentchange event is a few KB; anything this large is hostile
MAX_TITLE_LEN = 1024
_B36 = re.compile(r"^[0-9a-z]{1,40}$")
_MW_TS = re.compile(r"^\d{14}$")


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str  # canary / not-upload / wiki-not-configured


class _Malformed(MalformedEvent):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem


def sha1_from_base36(value: str) -> str:
    """MediaWiki stores SHA-1s in base 36 (31 chars, may lack leading zeros); return 40 hex digits."""
    text = value.strip().lower()
    if not _B36.match(text):
        raise ValueError(f"not a base-36 SHA-1: {value!r}")
    number = int(text, 36)
    if number >= 1 << 160:
        raise ValueError(f"base-36 value too large for a SHA-1: {value!r}")
    return format(number, "040x")


def sha1_to_base36(hex_sha1: str) -> str:
    n = int(hex_sha1, 16)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out.rjust(31, "0")


def decode(data: str | bytes) -> dict[str, Any]:
    if len(data) > MAX_EVENT_BYTES:
        raise _Malformed("too-large", f"{len(data)} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Malformed("bad-json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise _Malformed("not-an-object", type(obj).__name__)
    return obj


def _get(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], *, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Malformed("missing-field", key)
        return None
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise _Malformed("wrong-type", f"{key} is a boolean")
    if not isinstance(value, typ):
        raise _Malformed("wrong-type", f"{key} is {type(value).__name__}")
    return value


def _upload_time(obj: dict[str, Any], params: dict[str, Any]) -> datetime:
    ts = params.get("img_timestamp")
    if isinstance(ts, str) and _MW_TS.match(ts):
        try:
            return datetime.strptime(ts, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            pass
    unix = obj.get("timestamp")
    if isinstance(unix, int | float) and not isinstance(unix, bool) and 0 <= unix < 1 << 34:
        return datetime.fromtimestamp(unix, tz=UTC)
    raise _Malformed("missing-field", "timestamp")


def classify(obj: dict[str, Any], wikis: Collection[str], position: Any = None) -> UploadEvent | Skip:
    """Decide what one decoded recentchange event is.  Order: canary, upload-ness, wiki, then validity."""
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        raise _Malformed("missing-field", "meta")
    if meta.get("domain") == "canary":
        return Skip("canary")
    if obj.get("type") != "log" or obj.get("log_type") != "upload":
        return Skip("not-upload")
    wiki = _get(obj, "wiki", str)
    if wiki not in wikis:
        return Skip("wiki-not-configured")

    event_id = _get(meta, "id", str)
    if not 0 < len(event_id) <= 200:
        raise _Malformed("wrong-type", "meta.id length")
    log_action = _get(obj, "log_action", str)
    if log_action not in LOG_ACTIONS:
        return Skip("not-upload")
    title = _get(obj, "title", str)
    if not 0 < len(title) <= MAX_TITLE_LEN or "\n" in title:
        raise _Malformed("wrong-type", "title")
    server_url = _get(obj, "server_url", str)
    if not server_url.startswith(("https://", "http://")) or len(server_url) > 300:
        raise _Malformed("wrong-type", "server_url")
    uploader = _get(obj, "user", str, required=False)
    params = obj.get("log_params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        # MediaWiki serialises empty arrays as [] rather than {}.
        if params == []:
            params = {}
        else:
            raise _Malformed("wrong-type", "log_params")
    sha1: str | None = None
    raw_sha1 = params.get("img_sha1")
    if raw_sha1 is not None:
        if not isinstance(raw_sha1, str):
            raise _Malformed("wrong-type", "log_params.img_sha1")
        try:
            sha1 = sha1_from_base36(raw_sha1)
        except ValueError as exc:
            raise _Malformed("bad-sha1", str(exc)) from None
    page_url = meta.get("uri")
    if not isinstance(page_url, str) or not page_url.startswith(("https://", "http://")):
        page_url = f"{server_url}/wiki/{quote(title.replace(' ', '_'), safe=':/()_,-.')}"
    return UploadEvent(
        event_id=event_id,
        wiki=wiki,
        title=title,
        server_url=server_url,
        page_url=page_url,
        uploader=uploader,
        upload_time=_upload_time(obj, params),
        log_action=log_action,
        sha1=sha1,
        position=position,
    )


def event_time(obj: dict[str, Any]) -> float | None:
    """Unix seconds of the event for the source-lag metric (``meta.dt``, else ``timestamp``)."""
    meta = obj.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("dt"), str):
        try:
            return datetime.fromisoformat(meta["dt"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    ts = obj.get("timestamp")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return float(ts)
    return None
