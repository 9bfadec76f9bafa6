"""Commands for scale-out and re-processing: ``run --role``, ``replay`` and ``backfill``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from service.config import Config, parse_time
from service.errors import BankError, ConfigError, ServiceError
from service.metrics import Metrics
from service.sources.base import Source
from service.store import Stores

log = logging.getLogger("service.cli")
EXIT_CONFIG = 2
ROLES = ("all", "ingest", "worker")


class _Runnable(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


def serve(make: Callable[[], _Runnable], on_started: Callable[[_Runnable], None] | None = None) -> int:
    """Run one service until it ends or SIGTERM/SIGINT stop it (a second signal exits at once)."""

    async def main() -> None:
        service = make()
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
        if on_started is not None:
            on_started(service)
        await service.run()

    try:
        asyncio.run(main())
    except ConfigError as exc:  # found while starting, e.g. http.port in use
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BankError as exc:  # banks are parsed only as the service starts (check-config parses them too)
        print(f"error: banks.list: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ServiceError as exc:
        log.error("service stopped on an error", extra={"error": str(exc), "type": type(exc).__name__})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _time(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when: datetime = parse_time(value)
        return when
    except ValueError as exc:
        print(f"{option}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def run_role(cfg: Config, role: str, since: datetime | None) -> int:
    """``run --role worker|ingest`` (``all`` stays in :func:`service.cli.cmd_run`)."""
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


def cmd_replay(args: argparse.Namespace, cfg: Config) -> int:
    from service.sources.replay import ReplayRequest, RescanAdmission, replay_source
    from service.store import make_stores

    offsets = None
    if args.offsets:
        from service.sources.kafka import parse_offsets

        try:
            offsets = parse_offsets(args.offsets)
        except ValueError as exc:
            print(f"--offsets: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    req = ReplayRequest(since=_time("--since", args.since), until=_time("--until", args.until), offsets=offsets,
                        rescan=args.rescan, name=args.name)
    if req.since is None and not req.offsets:
        print("replay needs --since TIME (or --offsets topic:partition:offset,... for Kafka)", file=sys.stderr)
        return EXIT_CONFIG
    from service.app import Service

    def make() -> Service:
        stores = make_stores(cfg.store)
        if req.rescan:
            stores = dataclasses.replace(stores, pipeline=RescanAdmission(stores.pipeline))
        return Service(cfg, stores=stores, make_source=lambda c, s, m: replay_source(c, s.checkpoints, m, req))

    return serve(make)


def cmd_backfill(args: argparse.Namespace, cfg: Config) -> int:
    from service.matchers.banks import BankSet
    from service.sources.backfill import BackfillSource, Progress

    start, end = _time("--start", args.start), _time("--end", args.end)
    if cfg.wiki(args.wiki) is None:
        print(f"--wiki {args.wiki!r} is not configured (wikis: {', '.join(w.id for w in cfg.wikis)})",
              file=sys.stderr)
        return EXIT_CONFIG
    holder: dict[str, BackfillSource] = {}

    def progress(service: Any) -> None:
        source = holder.get("source")
        if source is not None:  # owned by the service's supervisor, stopped with the service's other tasks
            report = Progress(source, service.metrics, interval=cfg.backfill.progress_interval)
            service.supervisor.start("backfill-progress", lambda: report.run(service.stop_event))

    if args.role == "ingest":
        from service.work import IngestService

        def ingest_source(c: Config, stores: Stores, m: Metrics) -> Source:
            banks = BankSet(c.banks, m)
            suffix = "+photodna" if c.photodna.enabled else ""  # as Pipeline.scan_version names remote matchers
            source = BackfillSource(c, args.wiki, checkpoints=stores.checkpoints, scans=stores.scans, metrics=m,
                                    start=start, end=end,
                                    scan_version=lambda: banks.version + suffix)
            holder["source"] = source
            return source

        return serve(lambda: IngestService(cfg, make_source=ingest_source), on_started=progress)

    from service.app import Service

    def make() -> Service:
        service: Service | None = None

        def version() -> str | None:
            return service.pipeline.scan_version if service is not None and service.pipeline else None

        def source(c: Config, stores: Stores, m: Metrics) -> Source:
            holder["source"] = BackfillSource(c, args.wiki, checkpoints=stores.checkpoints, scans=stores.scans,
                                              metrics=m, start=start, end=end, scan_version=version)
            return holder["source"]

        service = Service(cfg, make_source=source)
        return service

    return serve(make, on_started=progress)


def add_commands(sub: Any, default_config: str) -> None:
    replay = sub.add_parser(
        "replay", help="re-process a past window under its own consumer group / checkpoint (the live position "
        "never moves); uploads already handled or scanned against the current banks are not fetched again and "
        "never notified twice")
    replay.add_argument("-c", "--config", default=default_config)
    replay.add_argument("--since", help="start of the window (ISO 8601)")
    replay.add_argument("--until", help="end of the window (ISO 8601; default: now / the log end)")
    replay.add_argument("--offsets", help="Kafka only: start at topic:partition:offset,... instead of --since")
    replay.add_argument("--rescan", action="store_true",
                        help="fetch and match every upload again (actions already performed stay performed)")
    replay.add_argument("--name", default="replay",
                        help="consumer group suffix / checkpoint name of this replay (default: %(default)s)")
    replay.set_defaults(func=_with_config(cmd_replay))

    backfill = sub.add_parser(
        "backfill", help="scan files uploaded before the service existed (list=allimages by upload time), "
        "checkpointed after every batch; run again to resume")
    backfill.add_argument("-c", "--config", default=default_config)
    backfill.add_argument("--wiki", required=True, help="the wiki id (wikis[].id)")
    backfill.add_argument("--start", help="only files uploaded at or after this time (ISO 8601)")
    backfill.add_argument("--end", help="only files uploaded at or before this time (ISO 8601)")
    backfill.add_argument("--role", choices=("all", "ingest"), default="all",
                          help="all: scan here; ingest: publish to the work topic for --role worker replicas")
    backfill.set_defaults(func=_with_config(cmd_backfill))


def _with_config(fn: Callable[[argparse.Namespace, Config], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from service.cli import _load
        from service.logs import setup_logging

        cfg = _load(args.config, secrets=True)
        setup_logging(cfg.service.log_level)
        return fn(args, cfg)

    return run
