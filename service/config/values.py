"""Value helpers shared by validation, loading and callers: config-relative paths and times."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field


def resolve_path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_time(value: str) -> Any:
    """Parse an ISO 8601 time (``Z`` allowed) or Unix milliseconds into an aware datetime."""
    from datetime import UTC, datetime

    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or Unix milliseconds: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# Range limits on fields: pydantic checks them (see ``schema``) and the JSON Schema carries them.
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


def _email(value: str) -> str:
    if not EMAIL_RE.match(value):
        raise ValueError(f"not an email address: {value!r}")
    return value


def _time(value: str) -> str:
    parse_time(value)  # raises ValueError naming the value
    return value


EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
Email = Annotated[str, AfterValidator(_email)]
Time = Annotated[str, AfterValidator(_time)]  # ISO 8601 (``Z`` allowed) or Unix milliseconds


def lower(value: Any) -> Any:
    """Names such as log levels are accepted in any case (``INFO`` is ``info``)."""
    return value.lower() if isinstance(value, str) else value
