"""Retroactive matching at scale: stored file hashes against a bank delta, and live scanning while it runs.

    python bench/bench_retro.py [--stored 10000000] [--delta 10000] [--pdq-sample 500]
                                [--exact-rows 200000] [--live-events 1500] [--rounds 2] [--live-stored 2000000]
                                [--cpu-share S] [--modes idle,loaded,retro] [--variant-files N] [--skip-...]

(1) **Time to finish a delta.**  ``--stored`` synthetic file PDQ hashes (random 256-bit, held in numpy
arrays inside the service's :class:`~service.retro.StoredPdqs` / ``PdqIndex``, exactly as the service holds
them after loading ``file_hashes``) and ``--exact-rows`` file rows in a real SQLite store (``file_hashes``,
indexed SHA-1 and MD5 columns).  A delta of ``--delta`` new hashes (half PDQ, a quarter SHA-1, a quarter
MD5; 100 PDQ hashes planted within distance 0-31 of stored ones and 100 SHA-1 / MD5 of stored rows, to
check recall) goes through :meth:`RetroMatcher.match_entries` at ``cpu_share`` 1.  The PDQ part costs the
same for every hash (the reference ``PdqIndex`` is a brute-force scan), so ``--pdq-sample`` of the PDQ hashes
are timed and the whole delta's time is projected from them (linear); the exact part runs in full.

(2) **Live scanning slowdown.**  The whole service (``bench_pipeline.py``'s stand-in wiki, backlog source,
decode + PDQ + match + SQLite) scans ``--live-events`` uploads with the retroactive task idle, then again
while it works through a delta of 10,000 PDQ hashes (stored before the run) against ``--live-stored``
synthetic stored hashes (loaded into the service's search process before the timed part) at
``--cpu-share`` (default: the config's ``banks.retro.cpu_share``); rounds alternate so the load of other
users of this shared machine hits both alike.  Wall time and CPU time per upload (the service process and
its decode pool; the search process apart), the search process's CPU time and share of a core, and how
many of the delta's hashes were matched during the run are printed.

(3) **Rotated and mirrored variants** (``--variant-files N``): N synthetic stored files with 7 variant hashes
each, packed as the search process keeps them, against a delta of ``--variant-delta`` PDQ hashes (100 planted
within 0-31 of stored variants) through the search's own query (``service.matchers.pdq_join``), at one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import DISTINCT, BacklogSource, descendants, free_port, proc_cpu
from bench_pipeline import make_config as pipeline_config

from service.app import Service
from service.config import Config, ThumbnailSection
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import UploadEvent
from service.retro import RetroMatcher, StoredPdqs
from service.retro_search import Batch, LocalSearch, SearchProcess
from service.store import sqlite_stores
from service.store.base import FileHashes
from tests.infra.images import jpeg_bytes, photo

SYNTHETIC_ID0 = 10**12  # ids of synthetic stored hashes: far above any row the pipeline writes
PLANTED = 100


def random_words(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)


def hex_of(row: np.ndarray) -> str:
    return row.astype(np.uint64).tobytes().hex()


def flip(row: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    out = row.copy()
    for b in rng.choice(256, size=bits, replace=False):
        out[b // 64] ^= np.uint64(1 << int(b % 64))
    return out


def stored_index(n: int, rng: np.random.Generator) -> tuple[StoredPdqs, np.ndarray]:
    words = random_words(rng, n)
    search = LocalSearch()
    search.index.add(np.arange(SYNTHETIC_ID0, SYNTHETIC_ID0 + n, dtype=np.int64), words)
    return StoredPdqs(search), words


def upload(i: int) -> UploadEvent:
    from datetime import UTC, datetime

    return UploadEvent(event_id=f"e{i}", wiki="benchwiki", title=f"File:B{i}.jpg", server_url="https://b.example",
                       page_url=f"https://b.example/wiki/File:B{i}.jpg", uploader=None,
                       upload_time=datetime(2024, 1, 1, tzinfo=UTC), log_action="upload", sha1=f"{i:040x}")


async def fill_store(path: str, rows: int) -> None:
    stores = sqlite_stores(path)
    await stores.open()
    batch = 50_000
    for start in range(0, rows, batch):
        await stores.retro.put_file_hashes([
            FileHashes(event=upload(i), sha1=f"{i:040x}", md5=f"{i:032x}", scanned_at=1.0)
            for i in range(start, min(rows, start + batch))])
    await stores.close()


async def delta_time(args: argparse.Namespace, cfg: Config, tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(12)
    t0, c0 = time.perf_counter(), time.process_time()
    pdqs, words = stored_index(args.stored, rng)
    local = pdqs.search
    assert isinstance(local, LocalSearch)
    build = (time.perf_counter() - t0, time.process_time() - c0)
    path = str(tmp / "retro.sqlite3")
    t0 = time.perf_counter()
    await fill_store(path, args.exact_rows)
    fill = time.perf_counter() - t0
    n_pdq, n_exact = args.delta // 2, args.delta - args.delta // 2
    planted_at = rng.choice(args.stored, size=PLANTED, replace=False)
    pdq_rows = [hex_of(flip(words[i], int(d), rng)) for i, d in zip(planted_at, rng.integers(0, 32, PLANTED),
                                                                    strict=True)]
    pdq_rows += [hex_of(r) for r in random_words(rng, n_pdq - PLANTED)]
    exact = [f"{i:040x}" for i in range(PLANTED // 2)] + [f"{i:032x}" for i in range(PLANTED // 2)]
    exact += [os.urandom(20).hex() if k % 2 else os.urandom(16).hex() for k in range(n_exact - PLANTED)]
    stores = sqlite_stores(path)
    await stores.open()
    full_speed = dataclasses.replace(cfg.banks, retro=dataclasses.replace(cfg.banks.retro, cpu_share=1.0))
    matcher = RetroMatcher(full_speed, store=stores.retro, planners=[], metrics=Metrics(), index=pdqs)
    try:
        entries = [(h, "test", "bench", "") for h in exact]
        t0, c0 = time.perf_counter(), time.process_time()
        hits_exact = await matcher.match_entries(entries, 0, 31)
        exact_t = (time.perf_counter() - t0, time.process_time() - c0)
        sample = pdq_rows[:max(args.pdq_sample, PLANTED)]
        t0, c0 = time.perf_counter(), time.process_time()
        hits_pdq = await matcher.match_entries([(h, "test", "bench", "") for h in sample], 0, 31)
        pdq_t = (time.perf_counter() - t0, time.process_time() - c0)
    finally:
        await stores.close()
    per_hash_wall, per_hash_cpu = pdq_t[0] / len(sample), pdq_t[1] / len(sample)
    return {
        "stored_pdq_hashes": args.stored, "stored_rows_sqlite": args.exact_rows,
        "index_build_s": round(build[0], 1),
        "index_bytes_per_hash": round(local.index.nbytes() / args.stored, 1),
        "sqlite_fill_s": round(fill, 1),
        "exact_hashes": n_exact, "exact_wall_s": round(exact_t[0], 2), "exact_cpu_s": round(exact_t[1], 2),
        "exact_recall": f"{len(hits_exact)}/{PLANTED}",
        "pdq_timed": len(sample), "pdq_wall_ms_per_hash": round(per_hash_wall * 1000, 1),
        "pdq_cpu_ms_per_hash": round(per_hash_cpu * 1000, 1),
        "pdq_recall": f"{len({h[1] for h in hits_pdq if h[1] < PLANTED})}/{PLANTED}",
        "projected_delta_wall_s": round(exact_t[0] + per_hash_wall * n_pdq, 0),
        "projected_delta_cpu_s": round(exact_t[1] + per_hash_cpu * n_pdq, 0),
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


async def live_run(cfg: Config, n: int, mode: str, stored: np.ndarray, exclude: set[int],
                   variants: np.ndarray | None = None) -> dict[str, float]:
    """One timed run of the whole service over ``n`` uploads.  ``mode`` ``retro``: a stored delta of 10,000 PDQ
    hashes is matched meanwhile against ``stored`` (synthetic file hashes) in the service's search process;
    ``loaded``: the search process is started and loaded the same way, but there is no delta (a control)."""
    busy: dict[str, float] = {}
    retro = mode == "retro"
    service = Service(cfg, source=BacklogSource(n))
    assert service.retro is not None
    search = service.retro.pdqs.search
    if mode in ("retro", "loaded"):  # loaded before the timed part (at cpu_share, so this takes a while)
        assert isinstance(search, SearchProcess)
        ids = np.arange(SYNTHETIC_ID0, SYNTHETIC_ID0 + stored.shape[0], dtype=np.int64)
        if variants is None:
            await search.add(Batch(ids, stored))
        else:  # every stored file has its 7 rotated / mirrored variants too
            await search.add(Batch(ids, stored, ids, variants))
        service.retro.loaded = True
    if retro:
        side = sqlite_stores(cfg.store.path)
        await side.open()
        rng = np.random.default_rng(5)
        await side.retro.add_retro_delta("bench", time.time(), [(hex_of(r), "test", "bench", f"d{k}")
                                                                for k, r in enumerate(random_words(rng, 10_000))])
        await side.close()
        service.retro.loaded = True
    pid = os.getpid()
    base = {c: proc_cpu(c) for c in descendants(pid)}  # processes already running (and their CPU so far)
    pool_cpu: dict[int, float] = {}
    search_pid = getattr(search, "pid", None)

    async def watch() -> None:
        while True:
            for c in descendants(pid):
                if c not in exclude and c != search_pid:
                    pool_cpu[c] = max(pool_cpu.get(c, 0.0), proc_cpu(c) - base.get(c, 0.0))
            if search_pid is not None:
                used = proc_cpu(search_pid) - base.get(search_pid, 0.0)
                busy["search_cpu_s"] = max(busy.get("search_cpu_s", 0.0), used)
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    c0, t0 = time.process_time(), time.perf_counter()
    await service.run()
    wall = time.perf_counter() - t0
    watcher.cancel()
    cpu = time.process_time() - c0 + sum(pool_cpu.values())
    if retro:
        busy["retro_hashes_matched"] = service.metrics.registry.get_sample_value(
            "mediamoderation_retro_hashes_matched_total", {"bank": "bench"}) or 0
        busy["search_share_of_core"] = round(busy.get("search_cpu_s", 0.0) / wall, 3)
    return {"uploads_per_s": n / wall, "wall_s": wall, "cpu_ms_per_upload": cpu * 1000 / n, **busy}


def live_slowdown(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    thumbs = tmp / "thumbs"
    thumbs.mkdir()
    for k in range(DISTINCT):
        (thumbs / f"{k}.jpg").write_bytes(jpeg_bytes(photo(50_000 + k, size=(330, 248)), quality=85))
    media = prepare((thumbs / "0.jpg").read_bytes(), "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    bank = tmp / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{media.pdq.hex},test,bench,img-0\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("standin_wiki.py")),
                               "--port", str(port), "--thumbs", str(thumbs)])
    stored = random_words(np.random.default_rng(3), args.live_stored)
    variants = random_words(np.random.default_rng(4), args.live_stored * 7) if args.live_variants else None
    modes = args.modes.split(",")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        for _ in range(100):
            with contextlib.suppress(requests.RequestException):
                requests.get(f"http://127.0.0.1:{port}/api.php", timeout=1)
                break
            time.sleep(0.1)
        for r in range(args.rounds):
            for mode in modes:
                cfg = pipeline_config(tmp, port, bank)
                store = tmp / f"live-{r}-{mode}.sqlite3"
                cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, path=str(store)))
                if args.cpu_share is not None:
                    retro = dataclasses.replace(cfg.banks.retro, cpu_share=args.cpu_share)
                    cfg = dataclasses.replace(cfg, banks=dataclasses.replace(cfg.banks, retro=retro))
                res = asyncio.run(live_run(cfg, args.live_events, mode, stored, {server.pid}, variants))
                results[mode].append(res)
                print(f"  round {r + 1} {mode:5}: {res}", flush=True)
    finally:
        server.terminate()
        server.wait()
    out: dict[str, Any] = {}
    for mode, runs in results.items():
        out[mode] = {"uploads_per_s_median": round(statistics.median(x["uploads_per_s"] for x in runs), 1),
                     "uploads_per_s_mean": round(statistics.mean(x["uploads_per_s"] for x in runs), 1),
                     "cpu_ms_per_upload_median": round(statistics.median(x["cpu_ms_per_upload"] for x in runs), 2)}
        if mode == "retro":
            out[mode]["delta_hashes_matched_per_run"] = [x.get("retro_hashes_matched", 0) for x in runs]
            out[mode]["search_share_of_core_per_run"] = [x.get("search_share_of_core", 0) for x in runs]
    if "idle" in out:
        for mode in out:
            if mode != "idle":
                out[mode]["slowdown_pct_median"] = round(
                    (1 - out[mode]["uploads_per_s_median"] / out["idle"]["uploads_per_s_median"]) * 100, 1)
    return out


def variants_time(args: argparse.Namespace) -> dict[str, Any]:
    """(3) A delta of ``--variant-delta`` PDQ hashes against the rotated / mirrored variants (7 each) of
    ``--variant-files`` stored files, as the search holds them (packed rows beside the index), at one core."""
    rng = np.random.default_rng(21)
    files = args.variant_files
    search = LocalSearch()
    index = search._index  # the search's own structures, filled directly (the store is not what is timed)
    index._add_variants(np.arange(files, dtype=np.int64), random_words(rng, files * 7))
    delta = random_words(rng, args.variant_delta)
    for k in range(PLANTED):  # planted within 0-31 of stored variants
        delta[k] = flip(index.var_words[k * 7 + k % 7], int(rng.integers(0, 32)), rng)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0, t0 = time.process_time(), time.perf_counter()
    found = index.query(delta, 31)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"stored_files": files, "variant_hashes": files * 7, "variants_mb": round(files * (7 * 32 + 8) / 2**20),
            "delta": args.variant_delta, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "cpu_s_per_million_variants": round(cpu / (files * 7 / 1e6), 2),
            "recall": f"{len({r for _, r, _ in found if r < PLANTED})}/{PLANTED}",
            "peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=10_000_000)
    parser.add_argument("--delta", type=int, default=10_000)
    parser.add_argument("--pdq-sample", type=int, default=500)
    parser.add_argument("--exact-rows", type=int, default=200_000)
    parser.add_argument("--live-events", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--live-stored", type=int, default=2_000_000)
    parser.add_argument("--cpu-share", type=float, default=None)
    parser.add_argument("--live-variants", action="store_true", help="(2): stored files have 7 variants each")
    parser.add_argument("--modes", default="idle,retro", help="interleaved in each round: idle, retro, loaded")
    parser.add_argument("--variant-files", type=int, default=0, help="(3): stored files with variants; 0: skip")
    parser.add_argument("--variant-delta", type=int, default=10_000)
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--skip-delta", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_delta:
            (tmp / "none.csv").write_text("hash,category,source,id\n")
            cfg = pipeline_config(tmp, 1, tmp / "none.csv")
            print("delta:", asyncio.run(delta_time(args, cfg, tmp)), flush=True)
        if args.variant_files:
            print("variants:", variants_time(args), flush=True)
        if not args.skip_live:
            print("live:", live_slowdown(args, tmp), flush=True)


if __name__ == "__main__":
    main()
