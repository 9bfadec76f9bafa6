"""Command line: ``mediamoderation run | check-config | scan``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime

from service import __version__
from service.config import Config, load_config, parse_time, warnings_for
from service.errors import ConfigError, ServiceError

EXIT_CONFIG = 2
DEFAULT_CONFIG = os.environ.get("MEDIAMODERATION_CONFIG", "config.yaml")
log = logging.getLogger("service.cli")


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"configuration {path} is invalid:", file=sys.stderr)
        for key, problem in exc.problems:
            print(f"  {key}: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.path)
    for warning in warnings_for(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.path}: OK ({len(cfg.wikis)} wiki(s), {len(cfg.banks.list)} bank(s))")
    return 0


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    since = _since(args.since)
    from service.logs import setup_logging

    setup_logging(cfg.service.log_level)
    from service.app import Service

    async def main() -> None:
        service = Service(cfg, since=since)
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen > 1:
                log.warning("second signal: exiting at once", extra={"signal": signum})
                os._exit(128 + signum)
            service.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await service.run()

    try:
        asyncio.run(main())
    except ServiceError as exc:
        log.error("service stopped on an error", extra={"error": str(exc), "type": type(exc).__name__})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from service.scan import scan_paths

    worst = 0
    for result in scan_paths(args.files, cfg):
        print(json.dumps(result, sort_keys=True))
        outcome = str(result.get("outcome", ""))
        if outcome == "match":
            worst = max(worst, 1)
        elif outcome.startswith(("error:", "unscannable:")):
            worst = max(worst, 3)
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediamoderation", description="Scan a wiki's uploads against known-abuse hash banks."
    )
    parser.add_argument("--version", action="version", version=f"mediamoderation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the service")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    run.add_argument("--since", help="start reading at this time (ISO 8601), overriding the stored checkpoint")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 2 when invalid")
    check.add_argument("path", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check_config)

    scan = sub.add_parser(
        "scan", help="hash local files and match them against the banks; one JSON line per file "
        "(exit 1 when a file matched, 3 when one could not be scanned)"
    )
    scan.add_argument("files", nargs="+")
    scan.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    scan.set_defaults(func=cmd_scan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
