#!/usr/bin/env python3
"""Sync throughput of a large exchange list.  Run: ``python bench/bench_exchange_sync.py [--hashes N] [--quick]``.

A StopNCII stand-in (tests/infra/exchanges.py, in its own process so its CPU is not counted here) serves N
generated PDQ hashes in pages of 800 (the client's page size).  Measured in this process, wall and CPU time:

* baseline: python-threatexchange alone, ``fetch_iter`` + its in-memory ``naive_fetch_merge`` (fetch + parse);
* a full sync by the service (``BankSyncer.sync``): fetch, convert, write every hash to SQLite, load the BankSet;
* a cold start: ``BankSyncer.load`` of the stored bank into a fresh BankSet (no request);
* an incremental sync of 1,000 new hashes after the full one.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import BankSection, BanksSection, ExchangeSection, Secret  # noqa: E402
from service.exchanges.sync import BankSyncer  # noqa: E402
from service.matchers.banks import BankSet  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.store import sqlite_stores  # noqa: E402
from tests.infra.exchanges import (  # noqa: E402
    STOPNCII_FETCH_KEY,
    STOPNCII_SUBSCRIPTION_KEY,
    ExchangeStandIn,
    Record,
    random_hash,
)


def serve(n: int, port_out: Any, more: Any) -> None:
    server = ExchangeStandIn(page_size=800)
    t0 = int(time.time()) - n - 100
    for i in range(n):
        server.feeds["stopncii"].records.append(Record(str(i), t0 + i, {"pdq": random_hash("pdq")}))
    server.feeds["stopncii"].reindex()
    server.start()
    port_out.put(server.port)
    more.get()  # then add 1,000 new records for the incremental sync
    feed = server.feeds["stopncii"]
    with server._lock:
        feed.records.extend(Record(f"n{i}", int(time.time()), {"pdq": random_hash("pdq")}) for i in range(1000))
        feed.reindex()
    port_out.put("added")
    more.get()
    server.stop()


async def measure(what: str, fn: Callable[[], Awaitable[Any]], count: int) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    out = await fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{what:52} {count:>9} hashes  {wall:7.2f} s wall  {cpu:7.2f} s CPU  "
          f"{count / wall:9.0f}/s wall  {count / max(cpu, 1e-9):9.0f}/s per core")
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hashes", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="20,000 hashes")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.hashes
    ctx = mp.get_context("spawn")
    port_q, more_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=serve, args=(n, port_q, more_q), daemon=True)
    proc.start()
    port = port_q.get(timeout=600)
    base_url = f"http://127.0.0.1:{port}/stopncii"
    os.environ["BENCH_STOPNCII"] = f"{STOPNCII_FETCH_KEY},{STOPNCII_SUBSCRIPTION_KEY}"
    bank = BankSection(name="stopncii", category="ncii", exchange=ExchangeSection(
        type="stopncii", credentials=Secret(env="BENCH_STOPNCII"), base_url=base_url))
    cfg = BanksSection(list=(bank,), allowed_hosts=(f"127.0.0.1:{port}",))
    print(f"shared 2-core machine (other jobs running); {os.cpu_count()} CPUs visible; {n} PDQ hashes, "
          f"pages of 800")

    from service.exchanges.clients import ExchangeClient

    async def baseline() -> int:
        client = ExchangeClient("stopncii", bank.exchange, os.environ["BENCH_STOPNCII"])  # type: ignore[arg-type]

        def run() -> int:
            merged: dict[Any, Any] = {}
            for delta in client.api.fetch_iter([], None):
                client.api.naive_fetch_merge(merged, delta.updates)
            return len(merged)

        return await asyncio.to_thread(run)

    got = await measure("baseline: python-threatexchange fetch_iter + merge", baseline, n)
    assert got == n, got
    with tempfile.TemporaryDirectory() as tmp:
        stores = sqlite_stores(str(Path(tmp) / "bench.sqlite3"))
        await stores.open()
        try:
            banks = BankSet(cfg, Metrics())
            syncer = BankSyncer(cfg, banks, stores.banksync, Metrics())
            result = await measure("full sync (fetch, convert, SQLite, BankSet)", lambda: syncer.sync("stopncii"), n)
            assert result.ok and result.hashes == n, result
            fresh = BankSet(cfg, Metrics())
            loader = BankSyncer(cfg, fresh, stores.banksync, Metrics())
            await measure("cold start: load the stored bank (no request)", loader.load, n)
            assert fresh.pdq_count == n
            more_q.put("go")
            assert port_q.get(timeout=600) == "added"
            result = await measure("incremental sync of 1,000 new hashes", lambda: loader.sync("stopncii"), 1000)
            assert result.ok and not result.full and result.added == 1000, result
        finally:
            await stores.close()
    more_q.put("stop")
    proc.join(30)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
