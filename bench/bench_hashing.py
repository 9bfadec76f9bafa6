#!/usr/bin/env python3
"""Hashing and lookup throughput on one core.  Run: ``python bench/bench_hashing.py [--quick]``.

* decode + PDQ (all eight dihedral variants) per second with ``service.media.thumbnail.prepare``, on
  330 px JPEG thumbnails and on 12-megapixel JPEG originals, beside a baseline measured in the same
  run: Pillow full decode + ``pdqhash.compute_dihedral`` on the same bytes (no draft mode, no resize);
* PDQ bank lookup (eight variants against every hash) in µs per query at 10k and 100k hashes;
* peak RSS of the process.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import BankSection, BanksSection, ThumbnailSection  # noqa: E402
from service.matchers.banks import BankSet  # noqa: E402
from service.media.thumbnail import prepare  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from tests.infra.images import jpeg_bytes, photo  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident set size since start or the last :func:`reset_peak` (Linux VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def rate(fn: Callable[[bytes], object], items: list[bytes], min_seconds: float) -> float:
    """Calls per second of ``fn`` cycling over ``items`` for at least ``min_seconds`` (after one warm-up)."""
    fn(items[0])
    n, start = 0, time.perf_counter()
    while True:
        fn(items[n % len(items)])
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and n >= len(items):
            return n / elapsed


def baseline(data: bytes) -> object:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return pdqhash.compute_dihedral(np.asarray(img))


def lookup_us(n_hashes: int, queries: list, tmp: Path, repeats: int) -> tuple[float, float]:
    """(µs per query, load seconds) for a bank of ``n_hashes`` random PDQ hashes."""
    rng = np.random.default_rng(n_hashes)
    path = tmp / f"bank-{n_hashes}.csv"
    with open(path, "w") as f:
        f.write("hash,category,source,id\n")
        for i, row in enumerate(rng.integers(0, 256, size=(n_hashes, 32), dtype=np.uint8)):
            f.write(f"{row.tobytes().hex()},,bench,{i}\n")
    cfg = BanksSection(list=(BankSection(name="bench", path=str(path), category="test"),))
    t0 = time.perf_counter()
    banks = BankSet(cfg, Metrics())
    load = time.perf_counter() - t0
    for q in queries:
        banks.match_pdq(q)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for q in queries:
            banks.match_pdq(q)
    return (time.perf_counter() - t0) / (repeats * len(queries)) * 1e6, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (less precise)")
    args = parser.parse_args()
    secs = 1.0 if args.quick else 3.0
    cfg = ThumbnailSection()

    print("generating images ...", file=sys.stderr)
    thumbs = [jpeg_bytes(photo(s, (330, 248)), quality=85) for s in range(20)]
    originals = [jpeg_bytes(photo(100 + s, (4000, 3000)), quality=90) for s in range(2)]

    rows: list[tuple[str, str, str]] = []
    peaks: list[tuple[str, float]] = []
    can_reset = reset_peak()
    for label, items, min_secs in (("330 px JPEG thumbnail", thumbs, secs), ("12 MP JPEG original", originals,
                                                                             secs * 2)):
        print(f"timing {label} ...", file=sys.stderr)
        reset_peak()
        ours = rate(lambda d: prepare(d, "0" * 40, cfg), items, min_secs)
        peaks.append((f"prepare(), {label}", peak_rss_mib()))
        reset_peak()
        base = rate(baseline, items, min_secs)
        peaks.append((f"baseline, {label}", peak_rss_mib()))
        rows.append((f"decode+PDQx8: {label}", f"{ours:8.1f} /s", f"{base:8.1f} /s"))

    queries = [prepare(d, "0" * 40, cfg).pdq for d in thumbs]
    lookups = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10_000, 100_000):
            print(f"timing lookup at {n} hashes ...", file=sys.stderr)
            us, load = lookup_us(n, queries, Path(tmp), repeats=20 if n <= 10_000 else 5)
            lookups.append((n, us, load))

    print(f"\nmediamoderation hashing benchmark (one core, pid {os.getpid()})")
    print(f"{'measure':44} {'prepare()':>12} {'baseline':>12}")
    for name, a, b in rows:
        print(f"{name:44} {a:>12} {b:>12}")
    print("  baseline = Pillow full decode + pdqhash.compute_dihedral, no draft mode or resize")
    print(f"\n{'PDQ lookup (8 variants, threshold 31)':44} {'µs/query':>12} {'load s':>12}")
    for n, us, load in lookups:
        print(f"{f'{n:,} hashes':44} {us:12.0f} {load:12.2f}")
    print(f"\npeak RSS of the whole run (incl. image generation): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if can_reset:
        for name, mib in peaks:
            print(f"  peak RSS during {name}: {mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
