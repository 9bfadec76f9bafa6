"""Typed validation with pydantic: the YAML's data into the :class:`Config` dataclasses, every error at once.

The section dataclasses stay plain frozen dataclasses (callers construct and ``dataclasses.replace`` them);
pydantic validates parsed YAML into them in strict mode (no ``"8080"`` for a port, no ``yes`` for a
boolean), with unknown keys refused and non-finite numbers refused.  Range limits live on the fields as
``Annotated[..., Field(ge=...)]`` (see ``values``), so the JSON Schema carries them too.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import types
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from pydantic import TypeAdapter, ValidationError

from service.config.problems import _Problems
from service.config.root import Config

# Why a limit exists, added to the message when a value is out of range (the key's last part).
CONSEQUENCES = {
    "pdq_threshold": "a larger PDQ distance matches nearly any image (31 is the usual threshold)",
    "blur_radius": "the preview must stay unrecognisable",
    "port": "a TCP port",
}


@cache
def adapter() -> TypeAdapter[Config]:
    return TypeAdapter(Config)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.date | datetime.time):  # an unquoted YAML timestamp is meant as text
        return value.isoformat()
    return repr(value)


def validate(data: dict[str, Any], problems: _Problems) -> Config:
    """``data`` as a :class:`Config`; each error is added to ``problems`` and its key left at its default,
    so that what is valid still comes back for the semantic checks (all problems are reported at once)."""
    data = dict(data)
    if "path" in data:  # Config.path is set by the loader, never by the file
        problems.add("path", f"unknown key (known: {', '.join(known_keys(Config))})")
        del data["path"]
    data = _without_bad_text(data, "", problems)
    for _ in range(8):  # each pass removes every failing key; nesting bounds the number of passes
        try:
            return adapter().validate_json(json.dumps(data, default=_jsonable), strict=True)
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                problems.add(key_path(loc), message(error))
                data = _without(data, loc)
    return Config()  # pragma: no cover - every pass removes at least one key


def _without_bad_text(value: Any, path: str, problems: _Problems) -> Any:
    """Strings that are not valid Unicode (an unpaired surrogate) are problems, and are left out."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if _bad_text(k) or _bad_text(v):
                problems.add(sub, "is not valid text (unpaired surrogate)")
            else:
                out[k] = _without_bad_text(v, sub, problems)
        return out
    if isinstance(value, list):
        return [_without_bad_text(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _bad_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _without(data: Any, loc: tuple[Any, ...]) -> Any:
    """A copy of ``data`` without the value at ``loc`` (a list item takes its whole list with it)."""
    if not loc or not isinstance(data, dict) or loc[0] not in data:
        return data
    head, rest = loc[0], loc[1:]
    copy = dict(data)
    child = copy[head]
    if rest and isinstance(child, dict):
        copy[head] = _without(child, rest)
    elif rest and isinstance(child, list) and isinstance(rest[0], int) and len(rest) > 1 \
            and 0 <= rest[0] < len(child) and isinstance(child[rest[0]], dict):
        items = list(child)
        items[rest[0]] = _without(child[rest[0]], rest[1:])
        copy[head] = items
    else:
        del copy[head]
    return copy


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def message(error: Any) -> str:
    """One pydantic error in the words the service has always used."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f", got {_short(value)}"
    simple = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
              "string_type": "a string", "bool_type": "a boolean", "tuple_type": "a list", "list_type": "a list",
              "dataclass_type": "a mapping", "dict_type": "a mapping", "dataclass_exact_type": "a mapping"}
    if kind in simple:
        shown = f", got {type(value).__name__}" if isinstance(value, dict | list) else got
        return f"must be {simple[kind]}{shown}"
    if kind == "finite_number":
        return f"must be a finite number{got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}".replace(" or ", ", ")
    if kind == "unexpected_keyword_argument":
        return f"unknown key (known: {', '.join(known_keys(_owner(error['loc'])))})"
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
              "less_than": ("<", "lt")}
    if kind in bounds:
        op, name = bounds[kind]
        text = f"must be {op} {ctx[name]}{got}"
        last = str(error["loc"][-1])
        return f"{text}: {CONSEQUENCES[last]}" if last in CONSEQUENCES else text
    if kind == "value_error":  # a field's own check (values.Email, values.Time) says what is wrong
        return str(ctx.get("error", error["msg"]))
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} item(s) required"
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


def _unwrap(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    if origin is tuple:
        return _unwrap(get_args(tp)[0])
    return tp


def _owner(loc: tuple[Any, ...]) -> Any:
    """The dataclass holding the key at ``loc``."""
    cls: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        cls = _unwrap(hints.get(str(part), object))
    return cls


def known_keys(cls: Any) -> list[str]:
    if not dataclasses.is_dataclass(cls):
        return []
    return sorted(f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal"))
