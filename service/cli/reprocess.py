"""``mediamoderation replay`` and ``mediamoderation backfill``: finite jobs that run beside the service.

They share the service's config but serve HTTP (metrics, probes) only when asked with ``--metrics-port``,
so they never fight ``run`` for ``http.port``; the review UI is ``run``'s alone.  Each shows a progress
bar on a terminal (log lines otherwise) and ends with a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from service.cli.exits import EXIT_CONFIG
from service.cli.options import load, parse_when, start_logging
from service.cli.serve import serve
from service.config import Config
from service.logs import LogOutput
from service.metrics import Metrics
from service.progress import Reporter
from service.sources.base import Source
from service.store import Stores


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    replay = sub.add_parser(
        "replay", parents=[common],
        help="re-process a past window under its own consumer group / checkpoint (the live position never moves); "
        "uploads already handled or scanned against the current banks are not fetched again and never notified "
        "twice")
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--since", metavar="TIME", help="start of the window (ISO 8601); required unless --offsets")
    start.add_argument("--offsets", metavar="T:P:O,...",
                       help="Kafka only: start at topic:partition:offset,... instead of --since")
    replay.add_argument("--until", metavar="TIME", help="end of the window (ISO 8601; default: now / the log end)")
    replay.add_argument("--rescan", action="store_true",
                        help="fetch and match every upload again (actions already performed stay performed)")
    replay.add_argument("--name", default="replay",
                        help="consumer group suffix / checkpoint name of this replay (default: %(default)s)")
    _metrics_port(replay)
    replay.set_defaults(func=cmd_replay)

    backfill = sub.add_parser(
        "backfill", parents=[common],
        help="scan files uploaded before the service existed (list=allimages by upload time), checkpointed after "
        "every batch; run again to resume")
    backfill.add_argument("--wiki", required=True, help="the wiki id (wikis[].id)")
    backfill.add_argument("--start", metavar="TIME", help="only files uploaded at or after this time (ISO 8601)")
    backfill.add_argument("--end", metavar="TIME", help="only files uploaded at or before this time (ISO 8601)")
    backfill.add_argument("--role", choices=("all", "ingest"), default="all",
                          help="all: scan here; ingest: publish to the work topic for --role worker replicas")
    _metrics_port(backfill)
    backfill.set_defaults(func=cmd_backfill)


def _metrics_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve /metrics and the probes on this port (on http.host; 0: any free port); "
                        "default: no HTTP server, so this runs beside `run` with the same config")


def side_job_config(cfg: Config, metrics_port: int | None) -> Config:
    """The config of a job beside the service: HTTP only on ``--metrics-port``, no review UI."""
    http = dataclasses.replace(cfg.http, enabled=metrics_port is not None,
                               port=metrics_port if metrics_port is not None else cfg.http.port)
    review = dataclasses.replace(cfg.review, enabled=False)
    return dataclasses.replace(cfg, http=http, review=review)


def _start(args: argparse.Namespace) -> tuple[Config, LogOutput]:
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        print(f"--metrics-port: {args.metrics_port} is not a port (0-65535)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    cfg = load(args, secrets=True)
    return side_job_config(cfg, args.metrics_port), start_logging(args, cfg)


def cmd_replay(args: argparse.Namespace) -> int:
    from service.app import Service
    from service.sources.replay import ReplayProgress, ReplayRequest, RescanAdmission, replay_source
    from service.store import make_stores

    offsets = None
    if args.offsets:
        from service.sources.kafka import parse_offsets

        try:
            offsets = parse_offsets(args.offsets)
        except ValueError as exc:
            print(f"--offsets: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    req = ReplayRequest(since=parse_when("--since", args.since), until=parse_when("--until", args.until),
                        offsets=offsets, rescan=args.rescan, name=args.name)
    if req.since is not None and req.until is not None and req.until <= req.since:
        print("--until must be after --since", file=sys.stderr)
        return EXIT_CONFIG
    cfg, output = _start(args)
    reporters: list[tuple[Reporter, ReplayProgress]] = []

    def make() -> Service:
        stores = make_stores(cfg.store)
        if req.rescan:
            stores = dataclasses.replace(stores, pipeline=RescanAdmission(stores.pipeline))
        return Service(cfg, stores=stores, make_source=lambda c, s, m: replay_source(c, s.checkpoints, m, req),
                       retro_matching=False)

    def started(service: Any) -> None:  # the reporter is owned by the service's supervisor
        progress = ReplayProgress(req, service.metrics)
        reporter = Reporter("replay", progress.sample, console=output.console,
                            interval=cfg.backfill.progress_interval, unit="events",
                            table=output.format == "console")
        reporters.append((reporter, progress))
        service.supervisor.start("replay-progress", lambda: reporter.run(service.stop_event))

    code = serve(make, on_started=started)
    for reporter, progress in reporters:
        elapsed = reporter.elapsed()
        reporter.summary("replay summary", progress.rows(elapsed), progress.summary_fields(elapsed))
    return code


def cmd_backfill(args: argparse.Namespace) -> int:
    from service.matchers.banks import BankSet
    from service.matchers.vpdq import VpdqMatcher
    from service.sources.backfill import BackfillProgress, BackfillSource
    from service.stages import scan_version

    start, end = parse_when("--start", args.start), parse_when("--end", args.end)
    if start is not None and end is not None and end < start:
        print(f"--end ({args.end}) is before --start ({args.start}): the range is empty", file=sys.stderr)
        return EXIT_CONFIG
    cfg, output = _start(args)
    if cfg.wiki(args.wiki) is None:
        print(f"--wiki {args.wiki!r} is not configured (wikis: {', '.join(w.id for w in cfg.wikis)})",
              file=sys.stderr)
        return EXIT_CONFIG
    holder: dict[str, BackfillSource] = {}
    reporters: list[tuple[Reporter, BackfillProgress]] = []

    def started(service: Any) -> None:  # the reporter is owned by the service's supervisor
        source = holder.get("source")
        if source is None:
            return
        progress = BackfillProgress(source, service.metrics, role=args.role)
        reporter = Reporter(f"backfill {args.wiki}", progress.sample, console=output.console,
                            interval=cfg.backfill.progress_interval, table=output.format == "console")
        reporters.append((reporter, progress))
        service.supervisor.start("backfill-progress", lambda: reporter.run(service.stop_event))

    if args.role == "ingest":
        from service.work import IngestService

        def ingest_source(c: Config, stores: Stores, m: Metrics) -> Source:
            banks = BankSet(c.banks, m, views=c.thumbnail.views)
            vpdq = [VpdqMatcher(c.media.video, m)] if c.media.video.vpdq_banks else []
            remote = ["photodna"] if c.photodna.enabled else []  # as Pipeline.scan_version names remote matchers
            source = BackfillSource(c, args.wiki, checkpoints=stores.checkpoints, scans=stores.scans, metrics=m,
                                    start=start, end=end,
                                    scan_version=lambda: scan_version(banks.version, vpdq, remote))
            holder["source"] = source
            return source

        code = serve(lambda: IngestService(cfg, make_source=ingest_source), on_started=started)
    else:
        from service.app import Service

        def make() -> Service:
            service: Service | None = None

            def version() -> str | None:
                return service.pipeline.scan_version if service is not None and service.pipeline else None

            def source(c: Config, stores: Stores, m: Metrics) -> Source:
                holder["source"] = BackfillSource(c, args.wiki, checkpoints=stores.checkpoints, scans=stores.scans,
                                                  metrics=m, start=start, end=end, scan_version=version)
                return holder["source"]

            service = Service(cfg, make_source=source, retro_matching=False)
            return service

        code = serve(make, on_started=started)
    for reporter, progress in reporters:
        elapsed = reporter.elapsed()
        complete = "complete" if progress.source.finished else "stopped before the end of the range"
        reporter.summary(f"backfill {args.wiki} summary ({complete})", progress.rows(elapsed),
                         progress.summary_fields(elapsed))
    return code
