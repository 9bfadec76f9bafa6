"""Generic typed loading: YAML into frozen dataclasses, every problem collected with its key path."""

from __future__ import annotations

import dataclasses
import math
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from service.config.environment import bank_file_problems, secret_problems
from service.config.problems import _Problems
from service.config.root import Config
from service.config.validate import _validate
from service.config.values import resolve_path
from service.config.yamlfile import read_yaml
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
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):  # .nan / .inf: every comparison with them is False, so refuse here
            problems.add(path, f"must be a finite number, got {_short(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover - programming error


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


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


def config_from_dict(data: Any, *, base: Path | None = None, source: str = "", secrets: bool = False,
                     bank_files: bool = False) -> Config:
    """Build and validate a :class:`Config` from parsed YAML; raise :class:`ConfigError` listing every problem.

    ``secrets``: every ``{env: VAR}`` / ``{file: PATH}`` must yield a value now; ``bank_files``: every bank
    file must parse (both are for ``check-config`` and for starting the service, see ``environment``).
    """
    return _from_dict(data, base=base or Path.cwd(), source=source, problems=_Problems(), secrets=secrets,
                      bank_files=bank_files)


def _from_dict(data: Any, *, base: Path, source: str, problems: _Problems, secrets: bool,
               bank_files: bool) -> Config:
    data = _yaml_off_is_a_mode(data)
    _find_inline_secrets(data, "", problems)
    cfg = _build(Config, data, "", problems)
    try:
        _validate(cfg, base, problems)
    except (TypeError, AttributeError, ValueError):
        if not problems.items:  # only tolerated when a wrong type was already reported
            raise
    if secrets:
        secret_problems(cfg, problems)
    if bank_files:
        bank_file_problems(cfg.banks, base, problems)
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


def load_config(path: str | os.PathLike[str], *, secrets: bool = False, bank_files: bool = False) -> Config:
    """Read, parse (see ``yamlfile``) and validate the config file at ``path``; see :func:`config_from_dict`."""
    p = Path(path)
    data, file_problems = read_yaml(p)
    problems = _Problems()
    for key, message in file_problems:
        problems.add(key, message)
    return _from_dict(data, base=p.resolve().parent, source=str(p), problems=problems, secrets=secrets,
                      bank_files=bank_files)
