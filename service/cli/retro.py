"""``mediamoderation retro run --bank NAME`` and ``bank quarantine list | release ID``: retroactive matching.

``run`` matches every hash of one configured bank against the stored hashes of every file already scanned
(with a progress bar and a summary); the flood guard applies.  ``quarantine`` shows and releases the bank
deltas the flood guard held.  Notifications and takedowns these commands queue are sent by the running
service (its outbox), or by the next one started.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import sys
import time
from datetime import UTC, datetime
from typing import Any

from service.cli.exits import EXIT_CONFIG, EXIT_MATCH, EXIT_OK, EXIT_UPSTREAM
from service.cli.options import load, start_logging
from service.config import Config
from service.errors import ServiceError
from service.logs import LogOutput
from service.store.base import RETRO_QUARANTINED, RetroDelta

EXIT_NOT_FOUND = 2


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    retro = sub.add_parser("retro", help="retroactive matching of stored file hashes against bank hashes")
    retro_sub = retro.add_subparsers(dest="retro_command", required=True)
    run = retro_sub.add_parser(
        "run", parents=[common],
        help="match every hash of one bank against the stored hashes of every scanned file, act on the hits "
        "(flood guard applies); exit 0 nothing found, 1 matches found (or quarantined)")
    run.add_argument("--bank", required=True, help="a configured bank's name (banks.list[].name)")
    run.add_argument("--max-hits", type=int, default=None,
                     help="flood guard limit for this run (default: banks.flood_guard.max_hits; 0: off)")
    run.set_defaults(func=cmd_run)


def add_quarantine_parser(bank_sub: Any, common: argparse.ArgumentParser) -> None:
    """``bank quarantine list | release ID``, in the ``bank`` group."""
    quarantine = bank_sub.add_parser("quarantine", help="bank deltas the flood guard held (retroactive matching)")
    q_sub = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_sub.add_parser("list", parents=[common], help="list quarantined deltas (--all: every delta)")
    q_list.add_argument("--all", action="store_true", help="every delta, whatever its state")
    q_list.set_defaults(func=cmd_quarantine_list)
    release = q_sub.add_parser("release", parents=[common],
                               help="act on a quarantined delta's hits like any match (notify, takedown policy)")
    release.add_argument("id", type=int, metavar="ID")
    release.set_defaults(func=cmd_quarantine_release)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(d: RetroDelta) -> str:
    files = len({h[0] for h in d.hits})
    return (f"{d.id:>6}  {d.state:<11}  bank {d.bank}  added {_when(d.added_at)}  {len(d.entries)} hashes  "
            f"{files} files hit" + (f"  ({d.note})" if d.note else ""))


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    deltas = asyncio.run(_list(cfg, every=args.all))
    if not deltas:
        print("no quarantined deltas" if not args.all else "no deltas")
    for d in deltas:
        print(describe(d))
    return EXIT_OK


async def _list(cfg: Config, *, every: bool) -> list[RetroDelta]:
    from service.store import make_stores

    stores = make_stores(cfg.store)
    await stores.open()
    try:
        return await stores.retro.list_retro_deltas(() if every else (RETRO_QUARANTINED,))
    finally:
        await stores.close()


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    try:
        delta = asyncio.run(_release(cfg, args.id, f"{getpass.getuser()} (CLI)"))
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    print(describe(delta))
    return EXIT_OK


async def _release(cfg: Config, delta_id: int, by: str) -> RetroDelta:
    from service.metrics import Metrics

    async with _matcher(cfg, Metrics()) as matcher:
        delta = await matcher.release(delta_id, by)
        return await matcher.process(delta)


class _matcher:
    """The store opened and a :class:`RetroMatcher` over it, as the service builds it."""

    def __init__(self, cfg: Config, metrics: Any) -> None:
        from service.actions.plan import build_planners
        from service.negative_bank import NegativeBank
        from service.retro import RetroMatcher
        from service.store import make_stores

        self.stores = make_stores(cfg.store)
        self.matcher = RetroMatcher(cfg.banks, store=self.stores.retro, planners=build_planners(cfg),
                                    metrics=metrics, notify=cfg.actions.notify,
                                    allowlist=NegativeBank(self.stores.review, cfg.review.allowlist_pdq_distance))

    async def __aenter__(self) -> Any:
        await self.stores.open()
        return self.matcher

    async def __aexit__(self, *exc: object) -> None:
        self.matcher.close()
        await self.stores.close()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load(args, bank_files=True)
    if args.bank not in {b.name for b in cfg.banks.list}:
        print(f"no bank {args.bank!r} in banks.list", file=sys.stderr)
        return EXIT_CONFIG
    if args.max_hits is not None:
        banks = dataclasses.replace(cfg.banks, flood_guard=dataclasses.replace(cfg.banks.flood_guard,
                                                                               max_hits=max(args.max_hits, 0)))
        cfg = dataclasses.replace(cfg, banks=banks)
    # A one-off run from a terminal uses a whole core (the service's task keeps to banks.retro.cpu_share).
    cfg = dataclasses.replace(cfg, banks=dataclasses.replace(
        cfg.banks, retro=dataclasses.replace(cfg.banks.retro, cpu_share=1.0)))
    output = start_logging(args, cfg)
    try:
        delta = asyncio.run(retro_run(cfg, args.bank, output))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    return EXIT_MATCH if delta.hits else EXIT_OK


async def retro_run(cfg: Config, bank: str, output: LogOutput | None = None) -> RetroDelta:
    """Match every hash of ``bank`` against every stored file hash, as one delta; returns it when finished."""
    from service.matchers.banks import load_bank
    from service.metrics import Metrics
    from service.progress import Reporter, Sample, metric_sum
    from service.retro import entries_of

    bank_cfg = next(b for b in cfg.banks.list if b.name == bank)
    entries = entries_of(sorted(load_bank(bank_cfg).entries(), key=lambda e: (e.hash, e.id)))
    metrics = Metrics()
    started = time.monotonic()
    async with _matcher(cfg, metrics) as matcher:
        await matcher.load()
        delta_id = await matcher.store.add_retro_delta(bank, time.time(), entries)
        delta = await matcher.store.get_retro_delta(delta_id)
        assert delta is not None
        state = {"delta": delta}

        def sample() -> Sample:
            d: RetroDelta = state["delta"]
            return Sample(completed=d.progress if d.state == "matching" else len(d.entries), total=len(d.entries),
                          fields={"hits": len(d.hits), "files": len({h[0] for h in d.hits})})

        reporter = Reporter(f"retro {bank}", sample, console=output.console if output else None, interval=10.0,
                            unit="hashes", table=bool(output and output.format == "console"))
        stop = asyncio.Event()
        bar = asyncio.create_task(reporter.run(stop))
        try:
            delta = await matcher.process(delta, on_progress=lambda d: state.__setitem__("delta", d))
        finally:
            stop.set()
            await bar
        files = len({h[0] for h in delta.hits})
        recorded = metric_sum(metrics.registry, "mediamoderation_retro_matches_total", bank=bank)
        reporter.summary(
            f"retro {bank}: {delta.state}" + (f" ({delta.note})" if delta.note else ""),
            [("hashes matched", len(entries)), ("stored files indexed (PDQ)", len(matcher.pdqs)),
             ("hits", len(delta.hits)), ("files hit", files), ("matches acted on", int(recorded)),
             ("delta id", delta.id), ("seconds", round(time.monotonic() - started, 1))],
            {"bank": bank, "state": delta.state, "delta": delta.id, "hashes": len(entries), "hits": len(delta.hits),
             "files": files, "acted": int(recorded)})
        return delta
