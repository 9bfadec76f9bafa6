"""``mediamoderation scan FILE...``: hash local files and match them against the banks."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli.exits import EXIT_CONFIG, combine, outcome_code
from service.cli.options import load, start_logging


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    scan = sub.add_parser(
        "scan", parents=[common],
        help="hash local files (images, animations, videos, audio, documents) and match them against the banks as "
        "the service would; one JSON line per file (exit 1 when a file matched, even if another could not be "
        "scanned; 3 when a file could not be scanned and none matched, which includes PDF, DjVu and SVG without "
        "an exact match: they are matched perceptually only through a wiki's rendering)")
    scan.add_argument("files", nargs="+", metavar="FILE")
    scan.set_defaults(func=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    from service.errors import BankError
    from service.matchers.banks import BankSet
    from service.matchers.vpdq import VpdqMatcher
    from service.metrics import Metrics
    from service.scan import scan_paths

    try:
        banks = BankSet(cfg.banks, Metrics(), views=cfg.thumbnail.views)
    except BankError as exc:
        print(f"error: banks.list: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        vpdq = VpdqMatcher(cfg.media.video, Metrics()) if cfg.media.video.vpdq_banks else None
    except BankError as exc:
        print(f"error: media.video.vpdq_banks: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    codes: list[int] = []
    for result in scan_paths(args.files, cfg, banks=banks, vpdq=vpdq):
        print(json.dumps(result, sort_keys=True))
        codes.append(outcome_code(str(result.get("outcome", ""))))
    return combine(codes)
