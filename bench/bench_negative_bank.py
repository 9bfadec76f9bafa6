"""Cost of the negative bank check per matched upload: SHA-1 allowlist alone (baseline) vs SHA-1 + near-PDQ.

    python bench/bench_negative_bank.py [--sizes 100,10000,100000] [--queries 2000]

A SQLite store holds N allowlisted contents with random PDQs.  Each query is one matched upload's check
(:meth:`service.negative_bank.NegativeBank.suppressed_banks`): half are near copies (distance 0-31) of an
allowlisted PDQ, half are misses.  Reported: wall and CPU (``time.process_time``) per check, the index
reload time after the allowlist changed, and that every near copy was found.  Taken on a shared machine:
compare the two rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from service.negative_bank import NegativeBank
from service.store import sqlite_stores
from service.store.base import AllowlistEntry


def flip(pdq: str, bits: int, rng: random.Random) -> str:
    value = int(pdq, 16)
    for b in rng.sample(range(256), bits):
        value ^= 1 << b
    return f"{value:064x}"


async def run(size: int, queries: int) -> None:
    rng = random.Random(size)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "db.sqlite3")
        stores = sqlite_stores(path)
        await stores.open()
        entries = [(f"{i:040x}", f"{rng.getrandbits(256):064x}") for i in range(size)]
        await stores.close()
        conn = sqlite3.connect(path)  # bulk load: one transaction
        conn.executemany("INSERT INTO allowlist (bank, sha1, added_by, added_at, note, pdq) VALUES (?,?,?,?,?,?)",
                         [("bank", s, "bench", 1.0, "", p) for s, p in entries])
        conn.commit()
        conn.close()
        stores = sqlite_stores(path)
        await stores.open()
        bank = NegativeBank(stores.review, 31)
        t0, c0 = time.perf_counter(), time.process_time()
        await bank.suppressed_banks("f" * 40, entries[0][1])  # first check loads the index
        load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - c0
        near = [(f"{i + size:040x}", flip(entries[rng.randrange(size)][1], rng.randint(0, 31), rng))
                for i in range(queries // 2)]
        miss = [(f"{i + 2 * size:040x}", f"{rng.getrandbits(256):064x}") for i in range(queries // 2)]

        async def timed(items: list[tuple[str, str]], with_pdq: bool) -> tuple[float, float, int]:
            hits = 0
            t0, c0 = time.perf_counter(), time.process_time()
            for sha1, pdq in items:
                hits += bool(await bank.suppressed_banks(sha1, pdq if with_pdq else None)) if with_pdq else \
                    bool(await stores.review.allowlisted_banks(sha1))
            return (time.perf_counter() - t0) / len(items), (time.process_time() - c0) / len(items), hits

        base = await timed(near + miss, with_pdq=False)
        found = await timed(near, with_pdq=True)
        missed = await timed(miss, with_pdq=True)
        await stores.review.add_allowlist(AllowlistEntry(sha1="e" * 40, bank="bank", added_by="b", added_at=2.0,
                                                         pdq="00" * 32))
        t0 = time.perf_counter()
        await bank.suppressed_banks("d" * 40, "00" * 32)
        reload_wall = time.perf_counter() - t0
        await stores.close()
    print(f"N={size:>7}  index load {load_wall * 1e3:7.1f} ms wall / {load_cpu * 1e3:7.1f} ms CPU; "
          f"reload after a change {reload_wall * 1e3:7.1f} ms")
    print(f"           SHA-1 only (baseline) {base[0] * 1e3:6.2f} ms wall {base[1] * 1e3:6.2f} ms CPU per check")
    print(f"           + PDQ, near copy      {found[0] * 1e3:6.2f} ms wall {found[1] * 1e3:6.2f} ms CPU "
          f"per check, found {found[2]}/{len(near)}")
    print(f"           + PDQ, miss           {missed[0] * 1e3:6.2f} ms wall {missed[1] * 1e3:6.2f} ms CPU "
          f"per check, false hits {missed[2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        asyncio.run(run(size, args.queries))


if __name__ == "__main__":
    main()
