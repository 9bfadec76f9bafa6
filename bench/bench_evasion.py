#!/usr/bin/env python3
"""Evasion catch rates and false positives of the derived PDQ views.  Run: ``python bench/bench_evasion.py``.

* For each edit in ``tests.infra.evasion.EDITS`` (borders, caption strips, crops) of each known sample
  photo, uploaded as a recompressed JPEG and served as a 330 px thumbnail: is it matched against a bank
  holding the photos' reference PDQ hashes?  With the derived views off (before) and on (after).
* False positives: ``--benign`` query tiles (and bordered / captioned copies of some) against a bank of
  ``--benign`` other tiles, before and after; every match counts as a false positive.

Needs scikit-image's sample photos (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import BankSection, BanksSection, ThumbnailSection  # noqa: E402
from service.config.matching import PdqViewsSection  # noqa: E402
from service.matchers.banks import BankSet  # noqa: E402
from service.media.thumbnail import prepare  # noqa: E402
from service.media.views import UNCROP, UNCROP_CORNERS, UNCROP_SIDES  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from tests.infra import evasion  # noqa: E402
from tests.infra.images import jpeg_bytes  # noqa: E402

OFF = dataclasses.replace(ThumbnailSection(), views=PdqViewsSection(trim_border=False, trim_caption=False, uncrop=(),
                                                                   uncrop_sides=(), uncrop_corners=()))
ON = ThumbnailSection()
# For the false positives: every view, the corner views (off by default) too.
EVERY = dataclasses.replace(ON, views=PdqViewsSection(uncrop_corners=(0.04, 0.07)))


def bankset(path: Path) -> BankSet:
    return BankSet(BanksSection(list=(BankSection(name="b", path=str(path), category="test"),)), Metrics())


def catch_rates(tmp: Path) -> dict[str, tuple[int, int, int]]:
    """edit -> (caught before, caught after, images)."""
    known = [evasion.known_photo(n) for n in evasion.KNOWN]
    banks = bankset(evasion.write_bank(tmp / "known.csv", [evasion.reference_hash(p) for p in known], "known"))
    out = {}
    for name, edit in evasion.EDITS.items():
        before = after = 0
        for i, img in enumerate(known):
            data = evasion.as_upload(edit(img))
            want = f"known-{i}"
            before += any(m.hash_id == want for m in banks.match_pdq_signals(prepare(data, "0" * 40, OFF).pdq_signals))
            after += any(m.hash_id == want for m in banks.match_pdq_signals(prepare(data, "0" * 40, ON).pdq_signals))
        out[name] = (before, after, len(known))
    return out


def _group(view: str) -> str:
    """The one-sided views by amount (``uncrop-left-4`` -> ``uncrop-side-4``, ``uncrop-top-left-4`` ->
    ``uncrop-corner-4``), other views by name."""
    where, _, amount = view.removeprefix(UNCROP + "-").rpartition("-")
    if where in UNCROP_SIDES:
        return f"{UNCROP}-side-{amount}"
    if where in UNCROP_CORNERS:
        return f"{UNCROP}-corner-{amount}"
    return view


def false_positives(tmp: Path, n: int) -> tuple[int, int, int, list[str], dict[str, int]]:
    """(matches before, matches after, queries, what matched after, closest distance of each view (the
    one-sided ones grouped by amount, over the variants they keep) to any bank tile over all queries: the
    margin left under the threshold)."""
    bank_imgs = evasion.benign_set(n, half="bank")
    bank_hashes = [evasion.reference_hash(t) for t in bank_imgs]
    words = np.frombuffer(b"".join(bank_hashes), dtype=np.uint64).reshape(-1, 4)
    banks = bankset(evasion.write_bank(tmp / "benign.csv", bank_hashes, "bank"))
    queries = [jpeg_bytes(t, quality=85) for t in evasion.benign_set(n, half="query")]
    edits = [evasion.EDITS["border white 4%"], evasion.EDITS["border black 10%"], evasion.EDITS["caption top 12%"]]
    queries += [evasion.as_upload(edits[i % 3](t), width=t.width)
                for i, t in enumerate(evasion.benign_set(n // 4, half="query", seed=7))]
    before = after = 0
    hits = []
    closest: dict[str, int] = {}
    for k, data in enumerate(queries):
        before += len(banks.match_pdq_signals(prepare(data, "0" * 40, OFF).pdq_signals))
        signals = prepare(data, "0" * 40, EVERY).pdq_signals
        found = banks.match_pdq_signals(signals)
        after += len(found)
        hits += [f"query {k} ~ {m.hash_id} d={m.distance} {dict(m.details)}" for m in found]
        for sig in signals:
            q = np.frombuffer(b"".join(sig.hashes), dtype=np.uint64).reshape(-1, 1, 4)
            d = int(np.bitwise_count(q ^ words[None]).sum(axis=2).min())
            group = _group(sig.view)
            closest[group] = min(closest.get(group, 256), d)
    return before, after, len(queries), hits, closest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benign", type=int, default=1000, help="benign tiles in the bank and in the queries")
    parser.add_argument("--skip-fp", action="store_true", help="catch rates only")
    args = parser.parse_args()
    if evasion.data_dir() is None:
        print("scikit-image's sample photos are not installed", file=sys.stderr)
        return 2
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rates = catch_rates(tmp)
        print(f"{'edit (330 px JPEG thumbnail of it)':34} {'before':>8} {'after':>8}")
        for name, (b, a, n) in rates.items():
            print(f"{name:34} {b:>4}/{n:<3} {a:>4}/{n:<3}")
        if not args.skip_fp:
            before, after, n, hits, closest = false_positives(tmp, args.benign)
            print(f"\nbenign: {n} queries against {args.benign} bank tiles: "
                  f"{before} matches before, {after} after with every view, corner views too (every one a false "
                  "positive)")
            print("closest distance of any benign query to any bank tile (threshold 31), per view: "
                  + ", ".join(f"{view} {d}" for view, d in closest.items()))
            for h in hits[:20]:
                print("  ", h)
    print(f"\nCPU {time.process_time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
