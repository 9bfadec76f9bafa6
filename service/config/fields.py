"""Checks of single values that validation and the environment checks share: URLs, paths and secrets.

Each check adds a problem with its key path and never raises, whatever the YAML held (wrong types are
reported by the typed loader and skipped here).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from service.config.core import Secret, WikiSection
from service.config.problems import _Problems
from service.config.values import resolve_path

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _split(url: Any) -> SplitResult | None:
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


def check_url(problems: _Problems, path: str, url: str, *, schemes: tuple[str, ...] = ("http", "https")) -> None:
    parts = _split(url or "")
    if parts is None or parts.scheme not in schemes or not parts.hostname:
        problems.add(path, f"must be an absolute {'/'.join(schemes)} URL, got {url!r}")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: a connection that never leaves the machine."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_https_url(problems: _Problems, path: str, url: str) -> None:
    """An absolute https:// URL; http:// only to a loopback host (tests, a local proxy)."""
    check_url(problems, path, url)
    parts = _split(url)
    if parts is not None and parts.scheme == "http" and parts.hostname and not is_loopback(parts.hostname):
        problems.add(path, f"must be an https:// URL (http:// only for localhost, 127.0.0.0/8 or ::1), got {url!r}")


def check_wiki_urls(problems: _Problems, path: str, wiki: WikiSection) -> None:
    """Every URL of a wiki (``api_url`` and any other ``*_url`` setting) is checked the same way."""
    for f in dataclasses.fields(wiki):
        value = getattr(wiki, f.name)
        if f.name.endswith("_url") and (f.name == "api_url" or value):
            check_https_url(problems, f"{path}.{f.name}", value)


def check_path(problems: _Problems, key: str, base: Path, value: Any, *, must_exist: bool = False) -> None:
    """A path the service can resolve (``~user`` expanded, relative to ``base``); with ``must_exist``, a file."""
    if not isinstance(value, str) or not value:
        return
    shown = value if len(value) <= 80 else value[:80] + "..."
    try:
        path = resolve_path(base, value)
        if must_exist and not path.is_file():
            problems.add(key, f"file does not exist: {path}")
    except RuntimeError:  # Path.expanduser: no such user
        problems.add(key, f"cannot expand {shown!r}: no such user")
    except (OSError, ValueError) as exc:
        problems.add(key, f"not a usable path {shown!r}: {getattr(exc, 'strerror', None) or exc}")


def secrets_in(node: Any, path: str = "", *, enabled_only: bool = False) -> list[tuple[str, Secret]]:
    """Every :class:`Secret` in a configuration tree, with its key path.

    ``enabled_only`` leaves out sections switched off with ``enabled: false`` (their secrets are not needed).
    """
    if isinstance(node, Secret):
        return [(path, node)]
    if isinstance(node, tuple):
        return [found for i, item in enumerate(node)
                for found in secrets_in(item, f"{path}[{i}]", enabled_only=enabled_only)]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        if enabled_only and getattr(node, "enabled", True) is False:
            return []
        return [found for f in dataclasses.fields(node) if not f.metadata.get("internal")
                for found in secrets_in(getattr(node, f.name), f"{path}.{f.name}" if path else f.name,
                                        enabled_only=enabled_only)]
    return []


def secret_shape_problem(secret: Secret) -> str | None:
    """What is wrong with a secret's ``env`` / ``file`` as written (not whether they hold a value)."""
    if secret.env is not None and not (isinstance(secret.env, str) and _ENV_NAME_RE.match(secret.env)):
        return f"env must be an environment variable name (letters, digits, _), got {secret.env!r}"
    if secret.file is not None:
        if not isinstance(secret.file, str) or not secret.file:
            return f"file must be a path, got {secret.file!r}"
        try:
            secret.file.encode("utf-8")
        except UnicodeEncodeError:
            return "file is not a valid path (unpaired surrogate)"
        if "\0" in secret.file:
            return "file is not a valid path (NUL character)"
    return None


def check_secret_shapes(cfg: Any, problems: _Problems) -> None:
    for path, secret in secrets_in(cfg):
        why = secret_shape_problem(secret)
        if why is not None:
            problems.add(path, why)
