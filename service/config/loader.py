"""Loading: YAML (and ``MEDIAMODERATION__…`` overrides) into frozen dataclasses, every problem with its key path."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from service.config.environment import bank_file_problems, secret_problems
from service.config.overrides import environment_overrides, merge
from service.config.problems import ConfigFileError, _Problems
from service.config.root import Config
from service.config.schema import validate
from service.config.validate import _validate
from service.config.values import resolve_path
from service.config.yamlfile import Marks, read_yaml
from service.errors import ConfigError


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
               bank_files: bool, marks: Marks | None = None,
               origins: dict[str, str] | None = None) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add("", f"must be a mapping, got {type(data).__name__}")
        data = {}
    data = _yaml_off_is_a_mode(data)
    _find_inline_secrets(data, "", problems)
    cfg = validate(data, problems)
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
        raise ConfigFileError(problems.items, source=source, marks=marks or {}, origins=origins)
    # Resolve relative paths against the config file's directory, once.
    banks = tuple(
        dataclasses.replace(b, path=str(resolve_path(base, b.path))) if b.path else b for b in cfg.banks.list
    )
    video = cfg.media.video
    vpdq_banks = tuple(dataclasses.replace(b, path=str(resolve_path(base, b.path))) for b in video.vpdq_banks)
    notify = cfg.actions.notify
    # Remote matchers need JPEG bytes from the thumbnail stage: derived, never a second flag to set.
    thumbnail = dataclasses.replace(cfg.thumbnail, make_jpeg=True) if cfg.photodna.enabled else cfg.thumbnail
    return dataclasses.replace(
        cfg,
        thumbnail=thumbnail,
        banks=dataclasses.replace(cfg.banks, list=banks),
        media=dataclasses.replace(cfg.media, video=dataclasses.replace(video, vpdq_banks=vpdq_banks)),
        store=dataclasses.replace(cfg.store, path=str(resolve_path(base, cfg.store.path))),
        actions=dataclasses.replace(
            cfg.actions,
            notify=dataclasses.replace(notify, outbox_dir=str(resolve_path(base, notify.outbox_dir))),
        ),
        path=source,
    )


def load_config(path: str | os.PathLike[str], *, secrets: bool = False, bank_files: bool = False,
                environment: bool = True) -> Config:
    """Read, parse (see ``yamlfile``) and validate the config file at ``path``; see :func:`config_from_dict`.

    ``environment``: ``MEDIAMODERATION__SECTION__KEY`` variables override the file's values (see ``overrides``).
    """
    p = Path(path)
    try:
        data, file_problems, marks = read_yaml(p)
    except ConfigError as exc:
        raise ConfigFileError(exc.problems, source=str(p), marks={}) from None
    problems = _Problems()
    for key, message in file_problems:
        problems.add(key, message)
    overrides, origins = environment_overrides() if environment else ({}, {})
    if overrides:
        data = merge(data if isinstance(data, dict) else {}, overrides)
    return _from_dict(data, base=p.resolve().parent, source=str(p), problems=problems, secrets=secrets,
                      bank_files=bank_files, marks=marks, origins=origins)
