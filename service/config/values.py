"""Value helpers shared by validation, loading and callers: config-relative paths and times."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
