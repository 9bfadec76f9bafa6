#!/usr/bin/env python3
"""PDQ index at 100k, 1M and 10M hashes, beside python-threatexchange's ``PDQIndex`` on the same data in
the same run.  Run: ``python bench/bench_index.py [--sizes 100000,1000000,10000000] [--quick]
[--before REF]``.

Per size: build time; add / remove of 10,000 hashes; single-hash queries per second on one core (CPU
time, and wall time) for planted matches at distance 0-31 and for misses; one upload's eight-hash query
latency; recall and exact equality against brute force; resident bytes per hash (RSS delta) and
``nbytes``; RSS across repeated deltas; snapshot save and cold start (load + first query).  Then the
same build / queries / recall / RSS for threatexchange's ``PDQIndex`` (faiss ``IndexBinaryMultiHash``)
and for a plain brute-force scan; faiss ``IndexBinaryMultiHash`` built directly from the packed hashes
(``--faiss``: tables x bits, flips); and with ``--before REF`` the index as it was at git revision REF
(loaded from git), its query rates measured interleaved with ours in the same process.  Also the
compiled kernels' import and compile cost (fresh processes, empty and filled numba cache) and bucket
skew of realistic hashes (PDQ of generated photos and their transforms) against random ones.  The
machine is shared: read CPU-time rates, not wall time.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.matchers import pdq_mih  # noqa: E402
from service.matchers.pdq_index import PdqIndex  # noqa: E402

DELTA = 10_000


def rss() -> int:
    """Current resident set size in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def flip(h: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    out = h.copy()
    for b in rng.choice(256, size=bits, replace=False):
        out[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    return out


def brute(hashes: np.ndarray, ids: np.ndarray, q: np.ndarray, radius: int) -> set[int]:
    """Ids within ``radius`` of any row of ``q``: the reference answer (a full scan)."""
    found: set[int] = set()
    for row in q:
        d = np.zeros(hashes.shape[0], np.int32)
        for w in range(4):
            d += np.bitwise_count(hashes[:, w] ^ row[w])
        found.update(ids[np.flatnonzero(d <= radius)].tolist())
    return found


def load_before(ref: str) -> type[Any]:
    """``PdqIndex`` as it was at git revision ``ref`` (its ``pdq_index`` and ``pdq_mih`` modules)."""
    def source(name: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:service/matchers/{name}.py"],
                              check=True, capture_output=True, text=True).stdout

    def module(name: str, text: str) -> ModuleType:
        spec = importlib.util.spec_from_loader(name, loader=None)
        assert spec is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        exec(compile(text, f"{ref}:{name}", "exec"), mod.__dict__)  # our own code, from git
        return mod

    mih = module("before_pdq_mih", source("pdq_mih"))
    text = source("pdq_index").replace("from service.matchers import pdq_mih\n", "import before_pdq_mih as pdq_mih\n")
    text = text.replace("from service.matchers.pdq_mih import Tables", "from before_pdq_mih import Tables")
    assert mih is sys.modules["before_pdq_mih"]
    return module("before_pdq_index", text).PdqIndex  # type: ignore[no-any-return]


def interleaved(fns: dict[str, Callable[[np.ndarray], object]], queries: list[np.ndarray],
                rounds: int = 4) -> dict[str, float]:
    """CPU-time queries/s of each function, the queries split into ``rounds`` blocks run in turn."""
    cpu = dict.fromkeys(fns, 0.0)
    step = max(1, len(queries) // rounds)
    for start in range(0, len(queries), step):
        for name, fn in fns.items():
            c = time.process_time()
            for q in queries[start : start + step]:
                fn(q)
            cpu[name] += time.process_time() - c
    return {name: len(queries) / max(c, 1e-9) for name, c in cpu.items()}


def rates(query: Callable[[np.ndarray], object], queries: list[np.ndarray]) -> tuple[float, float, float]:
    """(queries/s on CPU time, queries/s on wall time, p99 wall ms)."""
    lat = []
    c = time.process_time()
    w = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        query(q)
        lat.append(time.perf_counter() - t)
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    return len(queries) / cpu, len(queries) / wall, float(np.percentile(lat, 99) * 1000)


Data = tuple[np.random.Generator, np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]


def data(n: int, n_queries: int) -> Data:
    """(rng, hashes, ids, planted, misses, uploads): the same for a size in every process."""
    rng = np.random.default_rng(n)
    hashes = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    ids = rng.permutation(n).astype(np.int64) * 3 + 1
    planted = [flip(hashes[int(rng.integers(n))], i % 32, rng)[None] for i in range(n_queries)]
    misses = [rng.integers(0, 2**64, size=(1, 4), dtype=np.uint64) for _ in range(n_queries)]
    uploads = [np.concatenate([planted[i], rng.integers(0, 2**64, size=(7, 4), dtype=np.uint64)])
               for i in range(min(n_queries, 200))]
    return rng, hashes, ids, planted, misses, uploads


def checks_of(hashes: np.ndarray, ids: np.ndarray, planted: list[np.ndarray],
              misses: list[np.ndarray]) -> tuple[list[np.ndarray], list[set[int]]]:
    checks = planted[:: max(1, len(planted) // 32)] + misses[:8]
    return checks, [brute(hashes, ids, q, 31) for q in checks]


def bench_size(n: int, n_queries: int, deltas: int, with_te: bool, te_queries: int, before_cls: type[Any] | None,
               faiss_cfgs: list[str]) -> list[str]:
    rng, hashes, ids, planted, misses, uploads = data(n, n_queries)
    out = [f"### {n:,} hashes"]

    index = PdqIndex()  # loads the compiled kernels: not part of the footprint per hash
    gc.collect()
    before = rss()
    _, wall, cpu = timed(lambda: index.add(ids, hashes))
    resident = (rss() - before) / n
    out.append(f"- ours: build {wall:.1f} s wall / {cpu:.1f} s CPU; {resident:.0f} B/hash resident (RSS delta), "
               f"{index.nbytes() / n:.0f} B/hash nbytes; tables: "
               + (f"width {index._state.tables.width}" if index._state.tables else "none (scan)"))

    def ours(q: np.ndarray) -> object:
        return index.query(q, 31)

    for name, qs in (("planted 0-31", planted), ("misses", misses)):
        cps, wps, p99 = rates(ours, qs)
        out.append(f"- ours single-hash {name}: {cps:,.0f} q/s per core (CPU), {wps:,.0f} q/s wall, p99 {p99:.2f} ms")
    cps, wps, p99 = rates(ours, uploads)
    out.append(f"- ours 8-hash upload: {1000 / cps:.2f} ms CPU, {1000 / wps:.2f} ms wall mean, p99 {p99:.2f} ms")
    if before_cls is not None:
        out += bench_before(before_cls, ids, hashes, ours, planted, misses)

    checks, want = checks_of(hashes, ids, planted, misses)
    got = [{i for i, _, _ in index.query(q, 31)} for q in checks]
    expected = sum(len(w) for w in want)
    recall = sum(len(w & g) for w, g in zip(want, got, strict=True)) / max(expected, 1)
    exact = sum(w == g for w, g in zip(want, got, strict=True))
    out.append(f"- ours recall vs brute force: {recall:.2%} ({exact}/{len(checks)} answers identical)")

    small = 1000  # below the segment bound: appended, merged later
    small_ids = np.arange(3 * 10**12, 3 * 10**12 + small, dtype=np.int64)
    _, sw, sc = timed(lambda: index.add(small_ids, rng.integers(0, 2**64, size=(small, 4), dtype=np.uint64)))
    seg_q = interleaved({"ours": ours}, misses[:200])["ours"]
    _, srw, src = timed(lambda: index.remove(small_ids))
    out.append(f"- ours delta of {small:,} (to the segment): add {sw * 1000:.0f} ms wall / {sc * 1000:.0f} ms CPU, "
               f"remove {srw * 1000:.0f} ms wall / {src * 1000:.0f} ms CPU; misses with it pending: "
               f"{seg_q:,.0f} q/s per core")
    new_ids = np.arange(10**12, 10**12 + DELTA, dtype=np.int64)
    new = rng.integers(0, 2**64, size=(DELTA, 4), dtype=np.uint64)
    _, aw, ac = timed(lambda: index.add(new_ids, new))
    hit = index.query(new[:1], 0)
    _, rw, rc = timed(lambda: index.remove(new_ids))
    _, mw, mc = timed(index.merge)
    out.append(f"- ours delta of {DELTA:,} (past the segment bound: merged in the call): add {aw:.2f} s wall / "
               f"{ac:.2f} s CPU (matchable at once: {bool(hit)}); remove {rw:.2f} s wall / {rc:.2f} s CPU "
               f"(marked; its merge {mw:.2f} s wall / {mc:.2f} s CPU)")

    gc.collect()
    start_rss = rss()
    marks = []
    for k in range(deltas):
        gone = ids[rng.choice(n, size=DELTA, replace=False)] if k == 0 else new_ids
        index.remove(gone)
        new_ids = np.arange(2 * 10**12 + k * DELTA, 2 * 10**12 + (k + 1) * DELTA, dtype=np.int64)
        index.add(new_ids, rng.integers(0, 2**64, size=(DELTA, 4), dtype=np.uint64))
        if k in (0, deltas // 2, deltas - 1):
            gc.collect()
            marks.append((rss() - start_rss) / 2**20)
    out.append(f"- ours RSS across {deltas} deltas (remove {DELTA:,} + add {DELTA:,}): "
               + " -> ".join(f"{m:+.0f} MiB" for m in marks))

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "pdq.npz"
        _, sw, _ = timed(lambda: index.save(path))
        size_mb = path.stat().st_size / 2**20
        loaded, lw, lc = timed(lambda: PdqIndex.load(path))
        assert isinstance(loaded, PdqIndex)
        first = timed(lambda: loaded.query(planted[0], 31))[1]
        out.append(f"- ours snapshot: save {sw:.1f} s ({size_mb:,.0f} MiB); cold start load {lw:.1f} s wall / "
                   f"{lc:.1f} s CPU + first query {first * 1000:.1f} ms")

    scan_q = planted[: max(2, min(20, 2_000_000_000 // (n * 100)))]
    cps, _, _ = rates(lambda q: brute(hashes, ids, q, 31), scan_q)
    out.append(f"- baseline brute-force scan (numpy): {cps:,.1f} q/s per core")

    if with_te:
        out += bench_threatexchange(hashes, ids, planted[:te_queries], misses[:te_queries], checks, want)
    for cfg in faiss_cfgs:  # each in its own process: a clean RSS delta
        res = subprocess.run([sys.executable, __file__, "--faiss-child", str(n), "--faiss", cfg, "--queries",
                              str(n_queries), "--te-queries", str(te_queries)], capture_output=True, text=True)
        out += res.stdout.splitlines() or [f"- faiss {cfg}: failed: {res.stderr.strip()[-300:]}"]
    return out


def faiss_child(n: int, cfg: str, n_queries: int, te_queries: int) -> None:
    _, hashes, ids, planted, misses, _ = data(n, n_queries)
    checks, want = checks_of(hashes, ids, planted, misses)
    nhash, b, nflip = (int(x) for x in cfg.split("x"))
    print("\n".join(bench_faiss(hashes, ids, (nhash, b, nflip), planted[:te_queries], misses[:te_queries],
                                checks, want)), flush=True)


def bench_before(before_cls: type[Any], ids: np.ndarray, hashes: np.ndarray, ours: Callable[[np.ndarray], object],
                 planted: list[np.ndarray], misses: list[np.ndarray]) -> list[str]:
    """The index at the ``--before`` revision: build, RSS, and query rates interleaved with ours."""
    gc.collect()
    start = rss()
    old = before_cls()
    _, wall, cpu = timed(lambda: old.add(ids, hashes))
    resident = (rss() - start) / ids.size
    out = [f"- before: build {wall:.1f} s wall / {cpu:.1f} s CPU; {resident:.0f} B/hash resident (RSS delta), "
           f"{old.nbytes() / ids.size:.0f} B/hash nbytes"]
    for name, qs in (("planted 0-31", planted), ("misses", misses)):
        r = interleaved({"ours": ours, "before": lambda q: old.query(q, 31)}, qs)
        out.append(f"- interleaved single-hash {name}: ours {r['ours']:,.0f} q/s per core, before "
                   f"{r['before']:,.0f} (x{r['ours'] / r['before']:.2f})")
    new_ids = np.arange(10**12, 10**12 + DELTA, dtype=np.int64)
    new = np.random.default_rng(7).integers(0, 2**64, size=(DELTA, 4), dtype=np.uint64)
    _, aw, ac = timed(lambda: old.add(new_ids, new))
    out.append(f"- before delta of {DELTA:,}: add {aw:.2f} s wall / {ac:.2f} s CPU")
    return out


def bench_faiss(hashes: np.ndarray, ids: np.ndarray, cfg: tuple[int, int, int], planted: list[np.ndarray],
                misses: list[np.ndarray], checks: list[np.ndarray], want: list[set[int]]) -> list[str]:
    """faiss ``IndexBinaryMultiHash`` (``nhash`` tables of ``b`` bits, ``nflip`` flips) on the packed
    hashes: exact up to radius ``nhash * (nflip + 1) - 1``; range search at 31."""
    try:
        import faiss
    except ImportError:
        return ["- faiss: not installed"]
    nhash, b, nflip = cfg
    n = ids.size
    codes = np.ascontiguousarray(hashes).view(np.uint8).reshape(n, 32)
    gc.collect()
    start = rss()
    index = faiss.IndexBinaryMultiHash(256, nhash, b)
    index.nflip = nflip
    _, wall, cpu = timed(lambda: index.add(codes))
    resident = (rss() - start) / n
    out = [f"- faiss IndexBinaryMultiHash {nhash}x{b} bits, {nflip} flip(s) (exact to radius "
           f"{nhash * (nflip + 1) - 1}): build {wall:.1f} s wall / {cpu:.1f} s CPU; {resident:.0f} B/hash resident"]

    def query(q: np.ndarray) -> object:
        return index.range_search(np.ascontiguousarray(q).view(np.uint8).reshape(-1, 32), 32)  # < 32

    for name, qs in (("planted 0-31", planted), ("misses", misses)):
        cps, _, _ = rates(query, qs)
        out.append(f"- faiss single-hash {name}: {cps:,.0f} q/s per core (CPU)")
    got = []
    for q in checks:
        lims, _, labels = query(q)  # type: ignore[misc]
        got.append({int(ids[i]) for i in labels[lims[0] : lims[1]]})
    expected = sum(len(w) for w in want)
    recall = sum(len(w & g) for w, g in zip(want, got, strict=True)) / max(expected, 1)
    out.append(f"- faiss recall vs brute force: {recall:.2%}")
    return out


def jit_costs() -> list[str]:
    """Import and compile cost of the compiled kernels in fresh processes: empty numba cache, then filled."""
    code = ("import time; c = time.process_time(); w = time.perf_counter()\n"
            "from service.matchers import pdq_mih\n"
            "ic, iw = time.process_time() - c, time.perf_counter() - w\n"
            "c = time.process_time(); w = time.perf_counter(); pdq_mih.warm_up()\n"
            "print(ic, iw, time.process_time() - c, time.perf_counter() - w)")
    out = ["### compiled kernels (fresh process each)"]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        for label in ("empty cache (first start)", "filled cache (every later start)"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            ic, iw, wc, ww = (float(x) for x in res.stdout.split())
            out.append(f"- {label}: import (numpy, numba, kernels) {ic:.2f} s CPU / {iw:.2f} s wall; "
                       f"compile or load {wc:.2f} s CPU / {ww:.2f} s wall")
    return out


def bench_threatexchange(hashes: np.ndarray, ids: np.ndarray, planted: list[np.ndarray], misses: list[np.ndarray],
                         checks: list[np.ndarray], want: list[set[int]]) -> list[str]:
    try:
        from threatexchange.signal_type.pdq.pdq_index import PDQIndex
    except ImportError:
        return ["- threatexchange: not installed (pip install threatexchange faiss-cpu)"]
    n = hashes.shape[0]
    gc.collect()
    before = rss()
    hexes = [hashes[i].tobytes().hex() for i in range(n)]

    def build() -> PDQIndex[int]:
        return PDQIndex(zip(hexes, range(n), strict=True))

    te, wall, cpu = timed(build)
    assert isinstance(te, PDQIndex)
    resident = (rss() - before) / n
    out = [f"- threatexchange PDQIndex: build {wall:.1f} s wall / {cpu:.1f} s CPU (from hex strings); "
           f"{resident:.0f} B/hash resident (RSS delta, with its id list)"]
    for name, qs in (("planted 0-31", planted), ("misses", misses)):
        hq = [q[0].tobytes().hex() for q in qs]
        cps, wps, _ = rates(lambda h: te.query(h), hq)  # type: ignore[arg-type]
        out.append(f"- threatexchange single-hash {name}: {cps:,.0f} q/s per core (CPU), {wps:,.0f} q/s wall")
    # threatexchange's entries are row numbers: map them to our ids to compare with brute force
    got = [{int(ids[m.metadata]) for m in te.query(q[0].tobytes().hex())} for q in checks]
    expected = sum(len(w) for w in want)
    recall = sum(len(w & g) for w, g in zip(want, got, strict=True)) / max(expected, 1)
    out.append(f"- threatexchange recall vs brute force: {recall:.2%}")
    return out


def skew(n_photos: int) -> list[str]:
    """Bucket occupancy of realistic PDQ hashes vs random ones at 16 and 22 bits per chunk."""
    from PIL import Image

    from service.media.thumbnail import pdq_signal
    from tests.infra.images import photo, variants

    rows = []
    for seed in range(n_photos):
        img = photo(10_000 + seed, (200, 150))
        rows += [np.frombuffer(h, np.uint64) for h in pdq_signal(img).hashes]
        for data in variants(img).values():
            sig = pdq_signal(Image.open(io.BytesIO(data)).convert("RGB"))
            rows += [np.frombuffer(h, np.uint64) for h in sig.hashes]
    real = np.stack(rows)
    rand = np.random.default_rng(0).integers(0, 2**64, size=real.shape, dtype=np.uint64)
    out = [f"### bucket skew ({real.shape[0]:,} hashes of {n_photos} photos x 5 versions x 8 dihedral)"]
    for width in (16, 22):
        for name, h in (("realistic", real), ("random", rand)):
            keys = pdq_mih.chunk_keys(h, width)
            peak = max(int(np.unique(keys[:, t], return_counts=True)[1].max()) for t in range(pdq_mih.CHUNKS))
            same = sum(float((np.unique(keys[:, t], return_counts=True)[1] ** 2).sum()) for t in range(pdq_mih.CHUNKS))
            out.append(f"- width {width}, {name}: largest bucket {peak}, "
                       f"mean rows sharing a query's bucket {same / h.shape[0] / pdq_mih.CHUNKS:.2f}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--queries", type=int, default=1000, help="single-hash queries per kind")
    p.add_argument("--deltas", default="1000,100,10", help="repeated deltas per size (RSS growth check)")
    p.add_argument("--te-queries", type=int, default=300)
    p.add_argument("--no-threatexchange", action="store_true")
    p.add_argument("--te-max-size", type=int, default=1_000_000,
                   help="largest size to build threatexchange's index at (it holds ~1 kB per hash)")
    p.add_argument("--photos", type=int, default=60, help="photos for the bucket-skew check (0: skip)")
    p.add_argument("--quick", action="store_true", help="100k only, fewer queries")
    p.add_argument("--before", metavar="REF", help="also the index as of this git revision, interleaved with ours")
    p.add_argument("--faiss", default="16x16x1,11x23x2",
                   help="IndexBinaryMultiHash configs tables x bits x flips, comma separated ('' for none)")
    p.add_argument("--faiss-max-size", type=int, default=1_000_000)
    p.add_argument("--faiss-child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.faiss_child:
        faiss_child(a.faiss_child, a.faiss, a.queries, a.te_queries)
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    deltas = [int(s) for s in a.deltas.split(",")]
    if a.quick:
        sizes, a.queries, deltas, a.te_queries, a.photos = [100_000], 200, [20], 100, 10
    print(f"# PDQ index bench: {os.cpu_count()} cores (shared machine: CPU-time rates are the figures), load "
          f"average {os.getloadavg()[0]:.1f}\n")
    print("\n".join(jit_costs()) + "\n", flush=True)
    before_cls = load_before(a.before) if a.before else None
    faiss_cfgs = [c for c in a.faiss.split(",") if c]
    for k, n in enumerate(sizes):
        d = deltas[min(k, len(deltas) - 1)]
        lines = bench_size(n, a.queries, d, not a.no_threatexchange and n <= a.te_max_size, a.te_queries, before_cls,
                           faiss_cfgs if n <= a.faiss_max_size else [])
        print("\n".join(lines) + f"\n(load average {os.getloadavg()[0]:.1f})\n", flush=True)
        gc.collect()
    if a.photos:
        print("\n".join(skew(a.photos)), flush=True)


if __name__ == "__main__":
    main()
