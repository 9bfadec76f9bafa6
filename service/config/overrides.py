"""``MEDIAMODERATION__SECTION__KEY`` environment variables override the file's values (via pydantic-settings).

Values are read as YAML scalars (``5``, ``true``, ``[a, b]``), like the file's.  Secrets still come only from
``{env: VAR}`` / ``{file: PATH}``: ``MEDIAMODERATION__PHOTODNA__KEY__ENV=PHOTODNA_KEY`` names the variable, a
plain value for a secret key is refused as in the file.
"""

from __future__ import annotations

from typing import Any, get_origin, get_type_hints

import yaml
from pydantic import create_model
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from service.config.root import Config
from service.config.yamlfile import BoundedLoader

PREFIX = "MEDIAMODERATION__"


class _Environment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", case_sensitive=False,
                                      extra="ignore")


# One optional field per section of Config: pydantic-settings nests ``A__B__C`` under field ``a``.
_Sections = create_model(  # type: ignore[call-overload]
    "_Sections", __base__=_Environment,
    **{name: (list[Any] | None if get_origin(tp) is tuple else dict[str, Any] | None, None)
       for name, tp in get_type_hints(Config).items() if name != "path"},
)


def _scalar(text: str) -> Any:
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError:
        return text  # not YAML: the text itself
    finally:
        loader.dispose()


def _parsed(value: Any, path: str, origins: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _parsed(v, f"{path}.{k}", origins) for k, v in value.items()}
    origins[path] = PREFIX + path.replace(".", "__").upper()
    return _scalar(value) if isinstance(value, str) else value


def environment_overrides() -> tuple[dict[str, Any], dict[str, str]]:
    """``(overrides, origins)``: the nested values set by ``MEDIAMODERATION__…`` variables, and for each key
    path the variable that set it."""
    found = EnvSettingsSource(_Sections)()  # a whole section or list is JSON (kept as text when it is not)
    origins: dict[str, str] = {}
    return {k: _parsed(v, k, origins) for k, v in found.items() if v is not None}, origins


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, mapping by mapping."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
