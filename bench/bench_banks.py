#!/usr/bin/env python3
"""Banks of 1,000,000 PDQ and 1,000,000 SHA-1 hashes: this branch's :class:`BankSet` beside the baseline
(``service/matchers/banks.py`` as on ``main`` before banks were kept compactly), in the same run.

Run: ``python bench/bench_banks.py [--size 1000000] [--baseline-ref 20e3ac1]``.

Per variant and kind, in a fresh child process (so that resident memory is its own): load time of a
CSV bank file (parse + build), resident bytes per hash (RSS delta after the load, the file's bytes freed
and ``malloc_trim``), one upload's match latency (eight PDQ variants, or one SHA-1), and the time to apply
a delta of 10,000 hashes (5,000 added, 5,000 removed) to the loaded bank: ``apply_delta`` here, the
whole-list ``set_entries`` in the baseline (it rebuilds the bank).  CPU time (``time.process_time``) and
wall time; the machine is shared, read CPU time.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DELTA = 10_000
BASELINE_REF = "20e3ac1"  # main just before this branch: one BankEntry object per hash


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def write_bank(path: Path, kind: str, n: int, seed: int) -> None:
    size = 32 if kind == "pdq" else 20
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    with open(path, "w", encoding="utf-8") as f:
        f.write("hash,category,source,id\n")
        for i in range(n):
            f.write(f"{raw[i].tobytes().hex()},,{('ncmec', 'tcap', 'stopncii')[i % 3]},entry-{i}\n")


def banks_module(variant: str, ref: str) -> ModuleType:
    if variant == "new":
        from service.matchers import banks

        return banks
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:service/matchers/banks.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_banks.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_banks", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["baseline_banks"] = mod
    spec.loader.exec_module(mod)
    return mod


def timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def child(variant: str, kind: str, path: Path, n: int, ref: str) -> dict[str, Any]:
    from service.config import BankSection, BanksSection
    from service.metrics import Metrics
    from service.models import PdqSignal

    mod = banks_module(variant, ref)
    trim()
    before = rss()
    cfg = BanksSection(list=[BankSection(name="b", path=str(path), category="child-protection")])
    banks, load_wall, load_cpu = timed(lambda: mod.BankSet(cfg, Metrics()))
    trim()
    out: dict[str, Any] = {"variant": variant, "kind": kind, "n": n, "load_wall": load_wall, "load_cpu": load_cpu,
                           "rss_per_hash": (rss() - before) / n}
    if hasattr(banks, "nbytes"):
        out["nbytes_per_hash"] = banks.nbytes() / n
    rng = np.random.default_rng(7)
    sample = [line.split(",")[0] for line in _lines(path, rng, 200)]
    if kind == "pdq":
        def pad() -> list[bytes]:
            return [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(7)]

        uploads = [PdqSignal(hashes=(_flip(h, i % 32, rng), *pad()), quality=100) for i, h in enumerate(sample)]
        misses = [PdqSignal(hashes=(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), *pad()), quality=100)
                  for _ in range(200)]
        found = sum(bool(banks.match_pdq(u)) for u in uploads[:20])
        for name, qs in (("planted", uploads), ("miss", misses)):
            _, w, c = timed(lambda qs=qs: [banks.match_pdq(q) for q in qs])
            out[f"match_{name}_ms_cpu"], out[f"match_{name}_ms_wall"] = 1000 * c / len(qs), 1000 * w / len(qs)
    else:
        found = sum(bool(banks.match_sha1(h)) for h in sample[:20])
        misses_hex = [rng.integers(0, 256, 20, dtype=np.uint8).tobytes().hex() for _ in range(2000)]
        for name, hs in (("planted", sample * 10), ("miss", misses_hex)):
            _, w, c = timed(lambda hs=hs: [banks.match_sha1(h) for h in hs])
            out[f"match_{name}_ms_cpu"], out[f"match_{name}_ms_wall"] = 1000 * c / len(hs), 1000 * w / len(hs)
    out["found_planted"] = f"{found}/20"

    # a delta: 5,000 new entries, 5,000 removed
    size = 32 if kind == "pdq" else 20
    added = [mod.BankEntry(hash=rng.integers(0, 256, size, dtype=np.uint8).tobytes().hex(), category="c",
                           source="delta", id=f"new-{i}") for i in range(DELTA // 2)]
    gone_lines = _lines(path, rng, DELTA // 2)
    removed = [mod.BankEntry(hash=h, category="child-protection", source=s, id=i)
               for h, _, s, i in (line.split(",") for line in gone_lines)]
    if variant == "new":
        # the bank is a file bank here; a delta goes through the same path as an exchange's
        delta, w, c = timed(lambda: banks.apply_delta("b", added, removed, digest="d"))
    else:
        bank = banks.bank("b")
        gone = set(removed)
        everything = [e for e in bank.entries() if e not in gone] + added  # what a sync hands over
        delta, w, c = timed(lambda: banks.set_entries("b", everything, digest="d"))
    out["delta_wall"], out["delta_cpu"] = w, c
    out["delta_sizes"] = f"+{len(delta.added)} -{len(delta.removed)}"
    if kind == "pdq":
        out["delta_matchable"] = bool(banks.match_pdq(PdqSignal(hashes=(bytes.fromhex(added[0].hash),) * 8,
                                                                quality=100)))
    return out


def _lines(path: Path, rng: np.random.Generator, k: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [lines[i] for i in rng.choice(len(lines), size=k, replace=False)]


def _flip(hex_hash: str, bits: int, rng: np.random.Generator) -> bytes:
    value = int(hex_hash, 16)
    for b in rng.choice(256, size=bits, replace=False):
        value ^= 1 << int(b)
    return value.to_bytes(32, "big")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--kinds", default="pdq,sha1")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "KIND", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant, kind, file = args.child
        print(json.dumps(child(variant, kind, Path(file), args.size, args.baseline_ref)))
        return
    print(f"# bench_banks: {args.size:,} hashes per bank; baseline = main at {args.baseline_ref}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for kind in args.kinds.split(","):
            path = Path(tmp) / f"{kind}.csv"
            write_bank(path, kind, args.size, seed=1 if kind == "pdq" else 2)
            for variant in ("main", "new"):
                res = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--baseline-ref",
                                      args.baseline_ref, "--child", variant, kind, str(path)],
                                     check=True, capture_output=True, text=True, cwd=ROOT)
                print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
