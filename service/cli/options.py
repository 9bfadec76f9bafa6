"""Options every command shares (``-c/--config``, ``-v``/``-q``, ``--log-level``, ``--log-format``) and the
steps every command takes with them: load the config, start logging, read a time."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

from service.cli.exits import EXIT_CONFIG
from service.config import Config, load_config, parse_time, problem_lines
from service.errors import ConfigError
from service.logs import FORMATS, LEVELS, LogOutput, normalise_level, setup_logging


def default_config() -> str:
    return os.environ.get("MEDIAMODERATION_CONFIG", "config.yaml")


def _level(value: str) -> str:
    try:
        return normalise_level(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def common_options() -> argparse.ArgumentParser:
    """A parent parser for every subcommand, so that ``-c`` and the log options mean the same everywhere."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=None, metavar="PATH",
                        help="config file (default: $MEDIAMODERATION_CONFIG or config.yaml)")
    logs = common.add_argument_group("logging")
    logs.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (debug)")
    logs.add_argument("-q", "--quiet", action="count", default=0,
                      help="fewer log lines (-q: warnings and errors, -qq: errors only)")
    logs.add_argument("--log-level", type=_level, metavar="LEVEL",
                      help=f"{', '.join(LEVELS)} (any case); overrides -v/-q and service.log_level")
    logs.add_argument("--log-format", choices=FORMATS, default="auto",
                      help="auto (default): console on a terminal, JSON lines otherwise")
    return common


def config_path(args: argparse.Namespace) -> str:
    """``-c PATH``, else a positional PATH (deprecated, with a warning on stderr), else the default."""
    positional = getattr(args, "path", None)
    if positional is not None:
        if args.config is not None and args.config != positional:
            print(f"error: two config files given ({positional} and -c {args.config})", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG)
        print(f"warning: a positional config path is deprecated and will be removed in the next release: "
              f"use -c {positional}", file=sys.stderr)
        return str(positional)
    return str(args.config) if args.config is not None else default_config()


def load(args: argparse.Namespace, *, secrets: bool = False, bank_files: bool = False) -> Config:
    """Load the config or exit with :data:`EXIT_CONFIG`, listing every problem with its key path.

    ``secrets`` / ``bank_files``: also require every secret to be available and every bank file to parse
    (commands that start the service check secrets; ``check-config`` checks both).
    """
    path = args.config_file = config_path(args)
    try:
        return load_config(path, secrets=secrets, bank_files=bank_files)
    except ConfigError as exc:
        print(f"configuration {path} is invalid:", file=sys.stderr)
        for line in problem_lines(exc):
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def log_level(args: argparse.Namespace, configured: str = "info") -> str:
    """``--log-level`` if given, else the config's ``service.log_level`` moved by ``-v`` / ``-q``."""
    if getattr(args, "log_level", None):
        return str(args.log_level)
    base = LEVELS.index(normalise_level(configured))
    shift = int(getattr(args, "quiet", 0)) - int(getattr(args, "verbose", 0))
    return LEVELS[min(max(base + shift, 0), len(LEVELS) - 1)]


def start_logging(args: argparse.Namespace, cfg: Config | None = None, *, tool: bool = False) -> LogOutput:
    """``tool``: a one-shot command whose output is its answer logs warnings and errors unless asked (-v)."""
    configured = "warning" if tool else cfg.service.log_level if cfg is not None else "info"
    return setup_logging(log_level(args, configured), getattr(args, "log_format", "auto"))


def parse_when(option: str, value: str | None) -> datetime | None:
    """An ISO 8601 time from ``option``, or exit with :data:`EXIT_CONFIG` naming the option."""
    if value is None:
        return None
    try:
        when: datetime = parse_time(value)
    except ValueError as exc:
        print(f"{option}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return when
