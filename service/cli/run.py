"""``mediamoderation run [--role all|ingest|worker] [--since TIME]``: the service itself."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from service.cli.exits import EXIT_CONFIG
from service.cli.options import load, parse_when, start_logging
from service.cli.serve import serve
from service.config import Config

ROLES = ("all", "ingest", "worker")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[common], help="run the service")
    run.add_argument("--since", help="start reading at this time (ISO 8601), overriding the stored checkpoint")
    run.add_argument("--role", choices=ROLES, default="all",
                     help="all: one process does everything (default); ingest: read the source and publish scan "
                     "requests to the work topic; worker: consume the work topic and scan")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load(args, secrets=True)  # the banks are parsed as the service starts
    since = parse_when("--since", args.since)
    start_logging(args, cfg)
    if args.role != "all":  # horizontal scale: see service.work
        return run_role(cfg, args.role, since)
    from service.app import Service

    return serve(lambda: Service(cfg, since=since))


def run_role(cfg: Config, role: str, since: datetime | None) -> int:
    """``run --role worker|ingest``."""
    from service.metrics import Metrics
    from service.sources.factory import live_source, worker_source

    if role == "worker":
        if since is not None:
            print("--since applies to the ingest side, not to workers", file=sys.stderr)
            return EXIT_CONFIG
        from service.app import Service
        from service.work import ensure_work_topic

        ensure_work_topic(cfg)
        return serve(lambda: Service(cfg, make_source=lambda c, stores, m: worker_source(c, m)))
    from service.work import IngestService

    try:
        live_source(cfg, None, Metrics(), since)  # reject bad combinations before starting anything
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    return serve(lambda: IngestService(cfg, make_source=lambda c, stores, m: live_source(c, stores.checkpoints, m,
                                                                                         since)))
