#!/usr/bin/env python3
"""Crop robustness of the uncrop views, and why crops of 6-10 % stay hard.  Run: ``python bench/bench_crop.py``.

* Catch rates through the service's path (``prepare`` + ``BankSet``, default thresholds) of crops of 2-10 % per
  side of the sample photos, recompressed and served as 330 px thumbnails, for several settings of
  ``thumbnail.views.uncrop`` and ``uncrop_fade``; the same on generated photos (tests/infra/images.py), which
  were not used to choose the defaults.
* With the crop's exact margin known (a bound for any set of uncrop views): how many copies come within 31
  of the original when the margins repeat the edges, mirror the picture, or fade towards its mean.
* Crops from one side or one corner only, caught by the views extended on one side (``uncrop_sides``) or at
  one corner (``uncrop_corners``), for several settings; mirrored copies too (which variants they keep).
* "Confident bits", an idea measured and not used: the distance over the 128 bits whose DCT coefficients are
  furthest from the median, for the cropped copies and for the benign set (the closest benign query).

Needs scikit-image's sample photos (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import BankSection, BanksSection, ThumbnailSection  # noqa: E402
from service.config.matching import PdqViewsSection  # noqa: E402
from service.matchers.banks import BankSet  # noqa: E402
from service.media import pdq  # noqa: E402
from service.media.thumbnail import prepare  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from tests.infra import evasion, images  # noqa: E402

CROPS = (2, 3, 4, 6, 8, 10)
_NO_SIDES = {"uncrop_sides": (), "uncrop_corners": ()}  # the symmetric uncrop views alone
SETTINGS = {
    "2 views 2.5/5 % (previous default)": PdqViewsSection(uncrop=(0.025, 0.05), **_NO_SIDES),
    "5 views, edges repeated": PdqViewsSection(uncrop_fade=1.0, **_NO_SIDES),
    "5 views, fade 0.7": PdqViewsSection(uncrop_fade=0.7, **_NO_SIDES),
    "5 views, fade 0.8": PdqViewsSection(**_NO_SIDES),
    "4 views 2.5/5/8/11.5 %": PdqViewsSection(uncrop=(0.025, 0.05, 0.08, 0.115), **_NO_SIDES),
    "4 views 2.5/5/7/10 %": PdqViewsSection(uncrop=(0.025, 0.05, 0.07, 0.1), **_NO_SIDES),
    "3 views 3/6.5/10 %": PdqViewsSection(uncrop=(0.03, 0.065, 0.1), **_NO_SIDES),
    "default (5 views, fade 0.8, one-sided views)": PdqViewsSection(),
}
K_CONFIDENT = 128


def luma_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)


def bits_of(h: bytes) -> np.ndarray:
    """Bit k = 16 i + j (DCT coefficient (i, j)) of a hash in the standard hex order."""
    return np.unpackbits(np.frombuffer(h, np.uint8))[::-1].astype(bool)


def hamming(a: bytes, b: bytes) -> int:
    return int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def catch_rates(tmp: Path, name: str, known: list[Image.Image]) -> None:
    path = evasion.write_bank(tmp / f"{name}.csv", [evasion.reference_hash(k) for k in known], "known")
    banks = BankSet(BanksSection(list=(BankSection(name="b", path=str(path), category="test"),)), Metrics())
    uploads = {p: [evasion.as_upload(evasion.crop(k, p / 100)) for k in known] for p in CROPS}
    print(f"\n{name} ({len(known)} photos): caught per crop % per side " + " ".join(f"{p:>4}%" for p in CROPS))
    for label, views in SETTINGS.items():
        cfg = dataclasses.replace(ThumbnailSection(), views=views)
        row = [sum(f"known-{i}" in {m.hash_id for m in banks.match_pdq_signals(prepare(d, "0" * 40, cfg).pdq_signals)}
                   for i, d in enumerate(uploads[p])) for p in CROPS]
        print(f"  {label:48} " + " ".join(f"{c:>5}" for c in row))


ONE_SIDED_CROPS = (3, 4, 6, 8, 10)
ALL_VARIANTS = ("original", "rotate90", "rotate180", "rotate270", "flip-x", "flip-y", "flip-plus1", "flip-minus1")
ONE_SIDED_SETTINGS = {
    "no one-sided views (previous default)": PdqViewsSection(uncrop_sides=(), uncrop_corners=()),
    "sides 5/10 %": PdqViewsSection(uncrop_sides=(0.05, 0.1), uncrop_corners=()),
    "sides 4/7 %": PdqViewsSection(uncrop_sides=(0.04, 0.07), uncrop_corners=()),
    "sides 4/7/11 % (default)": PdqViewsSection(),
    "sides 4/7/11 %, corners 4 %": PdqViewsSection(uncrop_corners=(0.04,)),
    "sides 4/7/11 %, corners 4/7 %": PdqViewsSection(uncrop_corners=(0.04, 0.07)),
    "sides 4/6/9/11 %, corners 4/7/9 %": PdqViewsSection(uncrop_sides=(0.04, 0.06, 0.09, 0.11),
                                                        uncrop_corners=(0.04, 0.07, 0.09)),
}


def one_sided(tmp: Path, name: str, known: list[Image.Image], settings: dict[str, PdqViewsSection],
              mirrored: bool = False) -> None:
    """Crops from one side (each of the four) or one corner (each of the four) of 3 to 10 %: caught through
    the service's path, default thresholds, for several settings of ``uncrop_sides`` / ``uncrop_corners``;
    ``mirrored``: the cropped copies mirrored left-right too."""
    path = evasion.write_bank(tmp / f"one-sided-{name}.csv", [evasion.reference_hash(k) for k in known], "known")
    banks = BankSet(BanksSection(list=(BankSection(name="b", path=str(path), category="test"),)), Metrics())
    uploads: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
    for i, k in enumerate(known):
        for where in evasion.ONE_SIDED:
            for p in ONE_SIDED_CROPS:
                img = evasion.crop_side(k, p / 100, where)
                if mirrored:
                    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                group = "corner" if "-" in where else "side"
                uploads.setdefault((group, p), []).append((i, evasion.as_upload(img)))
    n = len(known) * 4
    print(f"\n{name}: one-sided crops caught (of {n} per amount: each photo cropped on each side / at each corner)")
    print(f"  {'setting':44} {'views':>5} {'looked up':>9}  one side " + " ".join(f"{p:>3}%" for p in ONE_SIDED_CROPS)
          + "   one corner " + " ".join(f"{p:>3}%" for p in ONE_SIDED_CROPS))
    for label, views in settings.items():
        cfg = dataclasses.replace(ThumbnailSection(), views=views)
        row = {}
        sizes = []
        for key, items in uploads.items():
            caught = 0
            for i, data in items:
                signals = prepare(data, "0" * 40, cfg).pdq_signals
                sizes.append((sum(1 for s in signals if s.variants), sum(len(s.hashes) for s in signals)))
                caught += f"known-{i}" in {m.hash_id for m in banks.match_pdq_signals(signals)}
            row[key] = caught
        one_views, hashes = (float(np.mean([s[k] for s in sizes])) for k in (0, 1))
        print(f"  {label:44} {one_views:5.0f} {hashes:9.0f}            "
              + " ".join(f"{row['side', p]:>4}" for p in ONE_SIDED_CROPS) + "              "
              + " ".join(f"{row['corner', p]:>4}" for p in ONE_SIDED_CROPS))


def exact_margin(known: list[Image.Image]) -> None:
    print("\nexact margin known: copies within 31 of the original (of 10), mean distance")
    fills = ("edges repeated", "mirrored", "fade 0.9", "fade 0.8", "fade 0.6")
    print(f"  {'crop':6}" + "".join(f"{f:>18}" for f in fills))
    for p in CROPS[2:]:
        share = p / 100 / (1 - 2 * p / 100)
        dists: dict[str, list[int]] = {f: [] for f in fills}
        for img in known:
            luma = luma_of(evasion.as_upload(evasion.crop(img, p / 100)))
            ref = evasion.reference_hash(img)
            h, w = luma.shape
            pad = (round(h * share),) * 2 + (round(w * share),) * 2
            fades = (1.0, 0.9, 0.8, 0.6)
            got = pdq.padded_dihedral_hashes(luma, (pad,) * len(fades), fades)
            mirrored = np.pad(luma, ((pad[0], pad[1]), (pad[2], pad[3])), mode="symmetric")
            for f, (hashes, _) in zip(fills, [got[0], pdq.dihedral_hashes(mirrored), *got[1:]], strict=True):
                dists[f].append(hamming(hashes[0], ref))
        print(f"  {p:>3} % " + "".join(f"{sum(d <= 31 for d in v):>10}, {np.mean(v):5.1f}" for v in dists.values()))


def view_coefficients(luma: np.ndarray, views: PdqViewsSection, shares: list[float]) -> np.ndarray:
    """DCT coefficients (V * 8, 256) of the eight variants of the uncrop views of ``shares``, as the service
    hashes them."""
    h, w = luma.shape
    out = []
    for share in shares:
        pad = (round(h * share),) * 2 + (round(w * share),) * 2
        buf = pdq._downsample(luma, pad)
        if share > 0.05 and views.uncrop_fade < 1:
            top, bottom = pdq._margin_samples(h, pad[0], pad[1])
            left, right = pdq._margin_samples(w, pad[2], pad[3])
            dr, ur = pdq._faded_dct(top, bottom, views.uncrop_fade)
            dc, uc = pdq._faded_dct(left, right, views.uncrop_fade)
            b = dr @ buf @ dc.T - buf[top:64 - bottom, left:64 - right].mean() * np.outer(ur, uc)
        else:
            b = pdq._DCT @ buf @ pdq._DCT.T
        s_rows, s_cols, t = pdq._SIGN[:, None], pdq._SIGN[None, :], b.T
        out.append(np.stack((b, t * s_rows, b * s_rows * s_cols, t * s_cols, b * s_rows, b * s_cols, t,
                             t * s_rows * s_cols)).reshape(8, 256))
    return np.concatenate(out)


def confident_distance(data: bytes, bank: np.ndarray) -> tuple[int, int] | None:
    """(smallest full distance, smallest distance over the K most confident bits) of any uncrop view and
    variant of the upload ``data`` to any row of ``bank`` (N, 256 bits); only the views the service would
    match (PDQ quality >= 50); None if there is none."""
    views = PdqViewsSection()
    kept = {s.view for s in prepare(data, "0" * 40, ThumbnailSection()).pdq_views if s.quality >= 50}
    shares = [share for share in views.uncrop if f"uncrop-{share * 100:g}" in kept]
    if not shares:
        return None
    coeffs = view_coefficients(luma_of(data), views, shares)
    median = np.partition(coeffs, 127, axis=1)[:, 127:128]
    bits = coeffs > median
    mask = np.zeros_like(bits)
    np.put_along_axis(mask, np.argsort(-np.abs(coeffs - median), axis=1)[:, :K_CONFIDENT], True, axis=1)
    diff = bits[:, None, :] ^ bank[None]
    return int(diff.sum(axis=2).min()), int((diff & mask[:, None, :]).sum(axis=2).min())


def confident_bits(known: list[Image.Image], n_benign: int) -> None:
    print(f"\nconfident bits ({K_CONFIDENT} of 256, default uncrop views): distance to the original, sorted")
    for p in CROPS[2:]:
        got = [g for k in known if (g := confident_distance(evasion.as_upload(evasion.crop(k, p / 100)),
                                                             bits_of(evasion.reference_hash(k))[None]))]
        print(f"  crop {p:>2} %: full {sorted(g[0] for g in got)}  confident {sorted(g[1] for g in got)}")
    bank = np.array([bits_of(evasion.reference_hash(t)) for t in evasion.benign_set(n_benign, half="bank")])
    got = [g for t in evasion.benign_set(n_benign, half="query")
           if (g := confident_distance(images.jpeg_bytes(t, quality=85), bank))]
    print(f"  benign ({len(got)} queries with uncrop views x {n_benign} bank tiles), closest per query, smallest 10: "
          f"full {sorted(g[0] for g in got)[:10]}  confident {sorted(g[1] for g in got)[:10]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=int, default=40, help="generated photos (held out)")
    parser.add_argument("--benign", type=int, default=1000, help="benign tiles for the confident-bits figures")
    parser.add_argument("--one-sided", action="store_true", help="the one-sided crops only")
    parser.add_argument("--amounts", action="store_true",
                        help="one-sided crops only, with one amount of one-sided and corner views at a time")
    args = parser.parse_args()
    if evasion.data_dir() is None:
        print("scikit-image's sample photos are not installed", file=sys.stderr)
        return 2
    t0 = time.process_time()
    known = [evasion.known_photo(n) for n in evasion.KNOWN]
    with tempfile.TemporaryDirectory() as tmp_name:
        if not (args.one_sided or args.amounts):
            catch_rates(Path(tmp_name), "sample photos", known)
            catch_rates(Path(tmp_name), "generated photos", [images.photo(500 + s) for s in range(args.generated)])
        settings = ONE_SIDED_SETTINGS
        if args.amounts:  # the amounts tried, one at a time (sides and corners)
            settings = {f"sides {a:g} %, corners {a:g} %": PdqViewsSection(uncrop_sides=(a / 100,),
                                                                           uncrop_corners=(a / 100,))
                        for a in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12)}
        one_sided(Path(tmp_name), "sample photos", known, settings)
        one_sided(Path(tmp_name), "generated photos", [images.photo(500 + s) for s in range(args.generated)], settings)
        if args.amounts:
            print(f"\nCPU {time.process_time() - t0:.1f} s")
            return 0
        one_sided(Path(tmp_name), "sample photos mirrored", known, {
            "default, variant original only": PdqViewsSection(uncrop_sides_variants=("original",)),
            "default (original and flip-y)": PdqViewsSection(),
            "default, all eight variants": PdqViewsSection(uncrop_sides_variants=ALL_VARIANTS),
        }, mirrored=True)
    if not args.one_sided:
        exact_margin(known)
        confident_bits(known, args.benign)
    print(f"\nCPU {time.process_time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
