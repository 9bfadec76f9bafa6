"""``mediamoderation config schema | show | reference``: the configuration's schema, effective values and docs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from service.config.core import Secret
from service.config.reference import reference_markdown, schema_text
from service.config.root import Config

MASK = "********"


def masked(node: Any) -> Any:
    """The configuration as plain data with no secret in it: a :class:`Secret` shows where it is read from
    (and whether a value is there now), a password in ``store.url`` and reviewers' password hashes are masked."""
    if isinstance(node, Secret):
        if not node.configured:
            return None
        return {**({"env": node.env} if node.env else {}), **({"file": node.file} if node.file else {}),
                "value": MASK if node.get() else "(not available)"}
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        out = {f.name: masked(getattr(node, f.name)) for f in dataclasses.fields(node)
               if not f.metadata.get("internal")}
        if out.get("password_hash"):
            out["password_hash"] = MASK
        if isinstance(out.get("url"), str) and out["url"].startswith(("postgres://", "postgresql://")):
            out["url"] = _without_password(out["url"])
        return out
    if isinstance(node, tuple | list):
        return [masked(v) for v in node]
    return node


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)).geturl()


def show_text(cfg: Config) -> str:
    return yaml.safe_dump(masked(cfg), sort_keys=False, allow_unicode=True, width=1000)


def _write(text: str, output: str | None) -> int:
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        return _write(schema_text(), args.output)
    if args.config_command == "reference":
        return _write(reference_markdown(), args.output)
    from service.cli.options import load  # one way to load and report a config for every command

    return _write(show_text(load(args)), None)


def add_config_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``config`` command and its subcommands, on the CLI's subparsers (``common``: -c and the log options)."""
    config = sub.add_parser("config", help="the configuration: JSON Schema, effective values, reference docs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    schema = config_sub.add_parser("schema", parents=[common],
                                   help="print the JSON Schema of the config file (config.schema.json)")
    schema.add_argument("-o", "--output", help="write to this file instead of standard output")
    config_sub.add_parser("show", parents=[common], help="print the effective configuration (file, environment "
                          "overrides and defaults) with secrets masked")
    reference = config_sub.add_parser("reference", parents=[common],
                                      help="print the Markdown configuration reference "
                                      "(docs/configuration.md)")
    reference.add_argument("-o", "--output", help="write to this file instead of standard output")
    config.set_defaults(func=cmd_config)
