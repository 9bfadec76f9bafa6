"""Turn raw ``mediawiki.recentchange`` events into :class:`UploadEvent` records.

:func:`parse` is the one entry point every source's events go through (the pipeline, the ingest
role and replay): it returns an UploadEvent or a :class:`Skip` with a reason, and raises nothing but
:class:`MalformedEvent`, whose ``problem`` is a short slug for the metric (``too-large``,
``bad-utf8``, ``too-deep``, ``bad-json``, ``bad-timestamp``, ``bad-text``, ...).  Text that becomes
a key or part of a URL (``meta.id``, ``title``, ``wiki``, ``server_url``) must be clean, or the
event is malformed; free text (the user name) is kept with lone surrogates and NUL replaced by
U+FFFD, so what is stored and emailed can always be encoded.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from service.errors import MalformedEvent
from service.models import LOG_ACTIONS, RawEvent, UploadEvent

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 1_000_000  # a recentchange event is a few KB; anything this large is hostile
MAX_DEPTH = 32  # a recentchange event nests 3 deep
MAX_TITLE_LEN = 1024
MAX_USER_LEN = 1024
MAX_URL_LEN = 2048
# Unix seconds an event may carry: from the epoch to 2514 (beyond is an attack or a unit mix-up).
MAX_UNIX_TIME = 1 << 34
_B36 = re.compile(r"^[0-9a-z]{1,40}$")
_MW_TS = re.compile(r"^\d{14}$")
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # a JSON string, matched without backtracking
_BRACKET = re.compile(r"[\[\]{}]")
_BAD_KEY_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_BAD_FREE_CHARS = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str  # canary / not-upload / wiki-not-configured


@dataclass(frozen=True, slots=True)
class Parsed:
    """One event read by :func:`parse`: an upload or why it is skipped, and its time for the lag metric."""

    result: UploadEvent | Skip
    time: float | None


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


def parse(raw: RawEvent, wikis: Collection[str]) -> Parsed:
    """The one way every source's events are read: :class:`MalformedEvent` is the only error it raises.

    Size, encoding, nesting, numbers and text are checked before and while decoding (see
    :func:`decode` and :func:`classify`); a problem the source already found (an event discarded
    unread for its size) comes back as the same error.  A failure the checks did not foresee is
    logged with its traceback and reported as the ``unexpected`` problem, so one event can never
    raise anything else into the pipeline.
    """
    if raw.problem is not None:
        raise _Malformed(raw.problem, "found by the source")
    try:
        obj = decode(raw.data)
        _check_timestamp(obj)
        return Parsed(classify(obj, wikis, raw.position), event_time(obj))
    except MalformedEvent:
        raise
    except Exception as exc:  # a gap in the checks: still one malformed event, never a crash
        log.exception("event parsing failed unexpectedly", extra={"position": raw.label})
        raise _Malformed("unexpected", f"{type(exc).__name__}: {exc}"[:200]) from exc


def decode(data: str | bytes) -> dict[str, Any]:
    """Bytes (or text) of one event to a dict; every problem is a :class:`MalformedEvent`.

    The size is checked first, then the text must be UTF-8 (no lone surrogates), nesting must stay
    within :data:`MAX_DEPTH` (checked by a linear scan before ``json.loads``, which recurses), and
    non-finite numbers (``NaN``, ``Infinity``, ``1e999``) are refused.
    """
    if not isinstance(data, str | bytes):  # e.g. a Kafka tombstone's None
        raise _Malformed("not-an-object", f"no event text ({type(data).__name__})")
    if len(data) > MAX_EVENT_BYTES:
        raise _Malformed("too-large", f"{len(data)} bytes")
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Malformed("bad-text", f"not encodable as UTF-8 at {exc.start}") from None
        if len(data) > MAX_EVENT_BYTES:
            raise _Malformed("too-large", f"{len(data)} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed("bad-utf8", f"invalid UTF-8 at byte {exc.start}") from None
    _check_depth(text)
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise _Malformed("bad-json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise _Malformed("not-an-object", type(obj).__name__)
    return obj


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` in time linear in ``text``, without recursing."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # cannot be deeper: the common case costs two C-speed counts
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Malformed("too-deep", f"nested deeper than {MAX_DEPTH}")
        else:
            depth -= 1
            if depth < 0:
                raise _Malformed("bad-json", "unbalanced brackets")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _key_text(value: str, name: str) -> str:
    """A field used as a key, in a URL or in a header: no lone surrogates, NUL or control characters."""
    if _BAD_KEY_CHARS.search(value):
        raise _Malformed("bad-text", f"{name} holds a control character or a lone surrogate")
    return value


def free_text(value: str) -> str:
    """Free text (user names, comments) made safe to store and email: each lone surrogate and NUL
    becomes U+FFFD, so the text is kept rather than dropped with what it belongs to."""
    return _BAD_FREE_CHARS.sub("\ufffd", value)


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
    unix = _unix_time(obj.get("timestamp"))
    if unix is not None:
        return datetime.fromtimestamp(unix, tz=UTC)
    raise _Malformed("missing-field", "timestamp")


def _unix_time(value: Any) -> float | None:
    """``value`` as Unix seconds when it is a number within the sane range, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < MAX_UNIX_TIME:  # compared exactly: a 400-digit int never becomes a float
        return None
    return float(value)


def _check_timestamp(obj: dict[str, Any]) -> None:
    """A ``timestamp`` that is there must be Unix seconds within range (``10**400`` is an attack)."""
    value = obj.get("timestamp")
    if value is not None and _unix_time(value) is None:
        raise _Malformed("bad-timestamp", f"timestamp {str(value)[:40]!r} is not Unix seconds in range")


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

    _key_text(wiki, "wiki")
    event_id = _key_text(_get(meta, "id", str), "meta.id")
    if not 0 < len(event_id) <= 200:
        raise _Malformed("wrong-type", "meta.id length")
    log_action = _get(obj, "log_action", str)
    if log_action not in LOG_ACTIONS:
        return Skip("not-upload")
    title = _get(obj, "title", str)
    if not 0 < len(title) <= MAX_TITLE_LEN or "\n" in title:
        raise _Malformed("wrong-type", "title")
    _key_text(title, "title")
    server_url = _get(obj, "server_url", str)
    if not server_url.startswith(("https://", "http://")) or len(server_url) > 300:
        raise _Malformed("wrong-type", "server_url")
    _key_text(server_url, "server_url")
    uploader = _get(obj, "user", str, required=False)
    if uploader is not None:
        if len(uploader) > MAX_USER_LEN:
            raise _Malformed("wrong-type", "user length")
        uploader = free_text(uploader)
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
    if (not isinstance(page_url, str) or not page_url.startswith(("https://", "http://"))
            or len(page_url) > MAX_URL_LEN or _BAD_KEY_CHARS.search(page_url)):
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
    """Unix seconds of the event for the source-lag metric (``meta.dt``, else ``timestamp``).

    Never raises: a time that is missing, unparseable or out of range is None.
    """
    meta = obj.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("dt"), str) and len(meta["dt"]) <= 64:
        try:
            parsed = datetime.fromisoformat(meta["dt"].replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
        except (ValueError, OverflowError):
            pass
    return _unix_time(obj.get("timestamp"))
