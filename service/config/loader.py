"""Generic typed loading: YAML into frozen dataclasses, every problem collected with its key path."""

from __future__ import annotations

import dataclasses
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from service.config.problems import _Problems
from service.config.root import Config
from service.config.validate import _validate
from service.config.values import resolve_path
from service.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str, problems: _Problems) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.add(path, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            problems.add(path, f"must be a list, got {type(value).__name__}")
            return ()
        item_tp = get_args(tp)[0]
        return tuple(_convert(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"must be a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(path, f"must be a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover - programming error


def _build(cls: Any, data: Any, path: str, problems: _Problems) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"must be a mapping, got {type(data).__name__}")
        return cls()
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            problems.add(sub, f"unknown key (known: {', '.join(sorted(fields))})")
            continue
        kwargs[key] = _convert(value, hints[key], sub, problems)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - only on wrong types already reported
        problems.add(path, str(exc))
        return cls()


def _yaml_off_is_a_mode(data: Any) -> Any:
    """YAML 1.1 reads ``mode: off`` as the boolean False; ``actions.takedown.mode`` means the string."""
    try:
        if data["actions"]["takedown"]["mode"] is False:
            data = {**data, "actions": {**data["actions"],
                                        "takedown": {**data["actions"]["takedown"], "mode": "off"}}}
    except (KeyError, TypeError):
        pass
    return data


def _find_inline_secrets(data: Any, path: str, problems: _Problems) -> None:
    """Secrets never live in the YAML: a ``password:`` with a plain string value is refused."""
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in ("password", "key", "token", "secret") and isinstance(value, str):
                problems.add(sub, "secrets are not allowed in the YAML: use {env: VAR} or {file: PATH}")
            else:
                _find_inline_secrets(value, sub, problems)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _find_inline_secrets(v, f"{path}[{i}]", problems)


def config_from_dict(data: Any, *, base: Path | None = None, source: str = "") -> Config:
    problems = _Problems()
    data = _yaml_off_is_a_mode(data)
    _find_inline_secrets(data, "", problems)
    cfg = _build(Config, data, "", problems)
    base = base or Path.cwd()
    try:
        _validate(cfg, base, problems)
    except (TypeError, AttributeError, ValueError):
        if not problems.items:  # only tolerated when a wrong type was already reported
            raise
    if problems.items:
        raise ConfigError(problems.items)
    # Resolve relative paths against the config file's directory, once.
    banks = tuple(
        dataclasses.replace(b, path=str(resolve_path(base, b.path))) for b in cfg.banks.list
    )
    notify = cfg.actions.notify
    # Remote matchers need JPEG bytes from the thumbnail stage: derived, never a second flag to set.
    thumbnail = dataclasses.replace(cfg.thumbnail, make_jpeg=True) if cfg.photodna.enabled else cfg.thumbnail
    return dataclasses.replace(
        cfg,
        thumbnail=thumbnail,
        banks=dataclasses.replace(cfg.banks, list=banks),
        store=dataclasses.replace(cfg.store, path=str(resolve_path(base, cfg.store.path))),
        actions=dataclasses.replace(
            cfg.actions,
            notify=dataclasses.replace(notify, outbox_dir=str(resolve_path(base, notify.outbox_dir))),
        ),
        path=source,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read {p}: {exc.strerror or exc}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("<file>", f"invalid YAML in {p}: {exc}")]) from exc
    return config_from_dict(data, base=p.resolve().parent, source=str(p))
