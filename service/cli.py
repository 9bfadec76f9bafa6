"""Command line: ``mediamoderation run | check-config | scan | photodna check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from service import __version__
from service.config import Config, load_config, parse_time, problem_lines, warnings_for
from service.errors import ConfigError, ServiceError

if TYPE_CHECKING:
    from service.metrics import Metrics

EXIT_CONFIG = 2
DEFAULT_CONFIG = os.environ.get("MEDIAMODERATION_CONFIG", "config.yaml")


def _load(path: str, *, secrets: bool = False, bank_files: bool = False) -> Config:
    """Load the config or exit with :data:`EXIT_CONFIG`, listing every problem with its key path.

    ``secrets`` / ``bank_files``: also require every secret to be available and every bank file to parse
    (commands that start the service check secrets; ``check-config`` checks both).
    """
    try:
        return load_config(path, secrets=secrets, bank_files=bank_files)
    except ConfigError as exc:
        print(f"configuration {path} is invalid:", file=sys.stderr)
        for line in problem_lines(exc):
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.path, secrets=True, bank_files=True)
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
    cfg = _load(args.config, secrets=True)  # the banks are parsed as the service starts
    since = _since(args.since)
    from service.logs import setup_logging

    setup_logging(cfg.service.log_level)
    from service.commands import run_role, serve

    if args.role != "all":  # horizontal scale: see service.commands and service.work
        return run_role(cfg, args.role, since)
    from service.app import Service

    return serve(lambda: Service(cfg, since=since))


def cmd_scan(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from service.errors import BankError
    from service.matchers.banks import BankSet
    from service.metrics import Metrics
    from service.scan import scan_paths

    try:
        banks = BankSet(cfg.banks, Metrics())
    except BankError as exc:
        print(f"error: banks.list: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    worst = 0
    for result in scan_paths(args.files, cfg, banks=banks):
        print(json.dumps(result, sort_keys=True))
        outcome = str(result.get("outcome", ""))
        if outcome == "match":
            worst = max(worst, 1)
        elif outcome.startswith(("error:", "unscannable:")):
            worst = max(worst, 3)
    return worst


def cmd_photodna_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if not (cfg.photodna.key.env or cfg.photodna.key.file):
        print("photodna.key is not configured: set {env: VAR} or {file: PATH}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code, out = asyncio.run(photodna_check(cfg, args.target, raw=args.raw))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    print(out)
    return code


async def photodna_check(cfg: Config, target: str, *, raw: bool = False) -> tuple[int, str]:
    """Send one image (a local file, or a URL on a configured wiki's hosts) the way the service does: the
    thumbnail stage's JPEG.  Returns (exit code: 0 no match, 1 match, 3 unscannable; text to print).
    PhotoDNA failures raise (:class:`ServiceError`), the request counts against the monthly budget."""
    import dataclasses
    import hashlib

    from service.errors import Unscannable
    from service.matchers.photodna import build_matcher, to_matches
    from service.media.thumbnail import prepare
    from service.metrics import Metrics
    from service.store import make_stores

    metrics = Metrics()
    data = await _read_target(cfg, target, metrics)
    sha1 = hashlib.sha1(data).hexdigest()
    thumb_cfg = dataclasses.replace(cfg.thumbnail, make_jpeg=True)
    try:
        media = await asyncio.to_thread(prepare, data, sha1, thumb_cfg, source="original")
    except Unscannable as exc:
        return 3, json.dumps({"target": target, "sha1": sha1, "outcome": f"unscannable:{exc.reason}",
                              "detail": exc.detail}, indent=2)
    if media.jpeg is None:
        return 3, json.dumps({"target": target, "sha1": sha1, "outcome": "unscannable:photodna-no-jpeg",
                              "detail": f"no JPEG >= 160 px under 4 MB from {media.width}x{media.height}"}, indent=2)
    stores = make_stores(cfg.store)  # the configured store: the request counts against the shared budget
    await stores.open()
    matcher = build_matcher(cfg.photodna, user_agent=cfg.service.user_agent, store=stores.budget, metrics=metrics)
    try:
        await matcher.client.start()
        try:
            result = await matcher.client.check(media.jpeg, "image/jpeg")
        except Unscannable as exc:
            return 3, json.dumps({"target": target, "sha1": sha1, "outcome": f"unscannable:{exc.reason}",
                                  "detail": exc.detail}, indent=2)
    finally:
        await matcher.aclose()
        await stores.close()
    if raw:
        return (1 if result.is_match else 0), result.raw
    report = {
        "target": target, "sha1": sha1,
        "sent": {"content_type": "image/jpeg", "bytes": len(media.jpeg), "width": media.width, "height": media.height},
        **result.to_dict(),
        "matches": [m.to_dict() for m in to_matches(result, cfg.photodna)],
    }
    return (1 if result.is_match else 0), json.dumps(report, indent=2)


async def _read_target(cfg: Config, target: str, metrics: Metrics) -> bytes:
    """A local file, or a URL fetched only from a configured wiki's hosts (checked on every redirect)."""
    from pathlib import Path

    from yarl import URL

    from service.errors import HostNotAllowed
    from service.fetch import WikiClient, origin_allowed

    if not target.startswith(("http://", "https://")):
        try:
            data = await asyncio.to_thread(Path(target).read_bytes)
        except OSError as exc:
            raise ServiceError(f"cannot read {target}: {exc.strerror or exc}") from exc
        if len(data) > cfg.fetch.max_bytes:
            raise ServiceError(f"{target} is larger than fetch.max_bytes ({cfg.fetch.max_bytes})")
        return data
    try:
        url = URL(target, encoded=True)
    except ValueError as exc:
        raise HostNotAllowed(target) from exc
    wiki = next((w for w in cfg.wikis if origin_allowed(w, url)), None)
    if wiki is None:
        raise HostNotAllowed(target)
    async with WikiClient(cfg.fetch, cfg.wikis, cfg.service.user_agent, metrics) as client:
        return await client.download(wiki, target, kind="original", limit=cfg.fetch.max_bytes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediamoderation", description="Scan a wiki's uploads against known-abuse hash banks."
    )
    parser.add_argument("--version", action="version", version=f"mediamoderation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the service")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    run.add_argument("--since", help="start reading at this time (ISO 8601), overriding the stored checkpoint")
    run.add_argument("--role", choices=("all", "ingest", "worker"), default="all",
                     help="all: one process does everything (default); ingest: read the source and publish scan "
                     "requests to the work topic; worker: consume the work topic and scan")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file, the secrets it names (environment "
                           "variables, files) and its bank files; exit 2 when invalid")
    check.add_argument("path", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check_config)

    scan = sub.add_parser(
        "scan", help="hash local files and match them against the banks; one JSON line per file "
        "(exit 1 when a file matched, 3 when one could not be scanned)"
    )
    scan.add_argument("files", nargs="+")
    scan.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    scan.set_defaults(func=cmd_scan)

    photodna = sub.add_parser("photodna", help="PhotoDNA tools")
    pdna_sub = photodna.add_subparsers(dest="photodna_command", required=True)
    check = pdna_sub.add_parser(
        "check", help="send one image (a file, or a URL on a configured wiki) to PhotoDNA and print the result; "
        "exit 0 no match, 1 match, 3 unscannable, 4 PhotoDNA error (e.g. the key is refused)"
    )
    check.add_argument("target", metavar="FILE|URL")
    check.add_argument("--raw", action="store_true", help="print PhotoDNA's JSON answer as received")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_photodna_check)

    from service.commands import add_commands

    add_commands(sub, DEFAULT_CONFIG)  # replay, backfill
    from service.config.cli import add_config_command

    add_config_command(sub, DEFAULT_CONFIG)  # config schema | show | reference
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
