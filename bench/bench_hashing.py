#!/usr/bin/env python3
"""Hashing and lookup throughput on one core.  Run: ``python bench/bench_hashing.py [--quick]``.

* decode + PDQ (all eight dihedral variants of every view) per second with
  ``service.media.thumbnail.prepare``, on 330 px JPEG thumbnails and on 12-megapixel JPEG originals, beside
  a baseline measured in the same run: Pillow full decode + ``pdqhash.compute_dihedral`` on the same bytes
  (no draft mode, no resize).  Settings of ``thumbnail.views``: plain (no derived views), trimmed (border
  and caption views, hashed when a border or caption is found), all (the default: also the uncrop views,
  five of them, and the one-sided and corner uncrop views), all but the one-sided and corner views, and the
  previous default (two uncrop views, 2.5 and 5 %, no one-sided views) to show what the views for larger
  and one-sided crops cost; the trimmed setting is also timed on bordered and captioned copies, where it
  hashes them, and all views on thumbnails of 20 different heights (as a wiki's are).
  Rates are per second of CPU time of this process (one core; the machine is shared) and per second of
  wall time;
* PDQ bank lookup (eight variants against every hash) in CPU µs per upload at 10k and 100k hashes, of the
  image alone, with the previous default's views, with the default views but the one-sided ones (which keep
  two variants each) and with all the default views;
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import BankSection, BanksSection, ThumbnailSection  # noqa: E402
from service.config.matching import PdqViewsSection  # noqa: E402
from service.matchers.banks import BankSet  # noqa: E402
from service.media.thumbnail import prepare  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.models import PdqSignal  # noqa: E402

_NEW_VIEWS = {"uncrop-7", "uncrop-9.5", "uncrop-12.5"}  # the views added for crops of 6-10 %
_NO_SIDES = {"uncrop_sides": (), "uncrop_corners": ()}  # no one-sided or corner uncrop views
from tests.infra.evasion import add_border, add_caption  # noqa: E402
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


def rate(fn: Callable[[bytes], object], items: list[bytes], min_seconds: float) -> tuple[float, float]:
    """(calls per CPU second, calls per wall second) of ``fn`` cycling over ``items`` for at least
    ``min_seconds`` of CPU time (after one warm-up)."""
    fn(items[0])
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        fn(items[n % len(items)])
        n += 1
        used = time.process_time() - cpu
        if used >= min_seconds and n >= len(items):
            return n / used, n / (time.perf_counter() - start)


def baseline(data: bytes) -> object:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return pdqhash.compute_dihedral(np.asarray(img))


def lookup_us(n_hashes: int, queries: list[list[PdqSignal]], tmp: Path, repeats: int) -> tuple[list[float], float]:
    """(µs per query of the image alone, of the image and the previous default's views, of the image and its
    views but the one-sided ones, of the image and all its views; load seconds) for a bank of ``n_hashes``
    random PDQ hashes, interleaved."""
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
    sets = ([q[:1] for q in queries], [[s for s in q if s.view not in _NEW_VIEWS and not s.variants] for q in queries],
            [[s for s in q if not s.variants] for q in queries], queries)
    used = [0.0] * len(sets)
    for q in queries:
        banks.match_pdq_signals(q)
    for _ in range(repeats):
        for k, signals in enumerate(sets):
            t0 = time.process_time()
            for q in signals:
                banks.match_pdq_signals(q)
            used[k] += time.process_time() - t0
    return [u / (repeats * len(queries)) * 1e6 for u in used], load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (less precise)")
    args = parser.parse_args()
    secs = 1.0 if args.quick else 3.0
    cfg = ThumbnailSection()

    plain = replace(cfg, views=PdqViewsSection(trim_border=False, trim_caption=False, uncrop=(), **_NO_SIDES))
    trimmed = replace(cfg, views=PdqViewsSection(uncrop=(), **_NO_SIDES))
    previous = replace(cfg, views=PdqViewsSection(uncrop=(0.025, 0.05), **_NO_SIDES))
    no_sides = replace(cfg, views=PdqViewsSection(**_NO_SIDES))

    print("generating images ...", file=sys.stderr)
    thumbs = [jpeg_bytes(photo(s, (330, 248)), quality=85) for s in range(20)]
    # a wiki's thumbnails are 330 px wide and of every height: nothing may be cached per image size
    varied = [jpeg_bytes(photo(s, (330, 150 + 23 * s)), quality=85) for s in range(20)]
    edited = [jpeg_bytes(add_border(photo(s, (306, 230)), 0.04, "black"), quality=85) for s in range(10)]
    edited += [jpeg_bytes(add_caption(photo(s, (330, 220)), 0.12), quality=85) for s in range(10, 20)]
    originals = [jpeg_bytes(photo(100 + s, (4000, 3000)), quality=90) for s in range(2)]

    rows: list[tuple[str, float, float, float]] = []
    peaks: list[tuple[str, float]] = []
    can_reset = reset_peak()
    for label, items, min_secs in (("330 px JPEG thumbnail", thumbs, secs), ("12 MP JPEG original", originals,
                                                                             secs * 2)):
        print(f"timing {label} ...", file=sys.stderr)
        reset_peak()
        base_cpu, base_wall = rate(baseline, items, min_secs)
        peaks.append((f"baseline, {label}", peak_rss_mib()))
        rows.append((f"baseline: {label}", base_cpu, base_wall, base_cpu))
        sets = [("plain", plain, items), ("trimmed views", trimmed, items),
                ("all views, 2 uncrop (previous default)", previous, items),
                ("all views but the one-sided uncrop", no_sides, items), ("all views", cfg, items)]
        if items is thumbs:
            sets.insert(2, ("trimmed views, bordered/captioned", trimmed, edited))
            sets.append(("all views, 20 heights (150-587 px)", cfg, varied))
        for name, c, data in sets:
            reset_peak()
            got_cpu, got_wall = rate(lambda d, c=c: prepare(d, "0" * 40, c), data, min_secs)
            peaks.append((f"prepare() {name}, {label}", peak_rss_mib()))
            rows.append((f"{name}: {label}", got_cpu, got_wall, base_cpu))

    queries = [list(prepare(d, "0" * 40, cfg).pdq_signals) for d in thumbs]
    lookups = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10_000, 100_000):
            print(f"timing lookup at {n} hashes ...", file=sys.stderr)
            us, load = lookup_us(n, queries, Path(tmp), repeats=20 if n <= 10_000 else 5)
            lookups.append((n, us, load))

    print(f"\nmediamoderation hashing benchmark (one core, pid {os.getpid()}; decode + PDQ x 8 of every view)")
    print(f"{'measure':52} {'/s CPU':>9} {'/s wall':>9} {'x baseline':>11}")
    for name, cpu_rate, wall_rate, base in rows:
        print(f"{name:52} {cpu_rate:9.1f} {wall_rate:9.1f} {cpu_rate / base:10.2f}x")
    print("  baseline = Pillow full decode + pdqhash.compute_dihedral, no draft mode or resize (same run)")
    print(f"\n{'PDQ lookup, CPU µs per upload':32} {'image':>10} {'+2 uncrop':>10} {'no sides':>10} {'all views':>10} "
          f"{'load s':>8}")
    for n, us, load in lookups:
        print(f"{f'{n:,} hashes':32} {us[0]:10.0f} {us[1]:10.0f} {us[2]:10.0f} {us[3]:10.0f} {load:8.2f}")
    print("  (8 variants per view, 2 per one-sided view, threshold 31; +2 uncrop: the previous default's views; "
          "no sides: the default views but the one-sided ones)")
    print(f"\npeak RSS of the whole run (incl. image generation): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if can_reset:
        for name, mib in peaks:
            print(f"  peak RSS during {name}: {mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
