#!/usr/bin/env python3
"""Crop robustness of the uncrop views, and why crops of 6-10 % stay hard.  Run: ``python bench/bench_crop.py``.

* Catch rates through the service's path (``prepare`` + ``BankSet``, default thresholds) of crops of 2-10 % per
  side of the sample photos, recompressed and served as 330 px thumbnails, for several settings of
  ``thumbnail.views.uncrop`` and ``uncrop_fade``; the same on generated photos (tests/infra/images.py), which
  were not used to choose the defaults.
* With the crop's exact margin known (a bound for any set of uncrop views): how many copies come within 31
  of the original when the margins repeat the edges, mirror the picture, or fade towards its mean.
* Crops from one side or one corner only (not caught: the views extend every side alike).
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
SETTINGS = {
    "2 views 2.5/5 % (previous default)": PdqViewsSection(uncrop=(0.025, 0.05)),
    "5 views, edges repeated": PdqViewsSection(uncrop_fade=1.0),
    "5 views, fade 0.7": PdqViewsSection(uncrop_fade=0.7),
    "5 views, fade 0.8 (default)": PdqViewsSection(),
    "4 views 2.5/5/8/11.5 %": PdqViewsSection(uncrop=(0.025, 0.05, 0.08, 0.115)),
    "4 views 2.5/5/7/10 %": PdqViewsSection(uncrop=(0.025, 0.05, 0.07, 0.1)),
    "3 views 3/6.5/10 %": PdqViewsSection(uncrop=(0.03, 0.065, 0.1)),
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


def one_sided(tmp: Path, known: list[Image.Image]) -> None:
    """Crops from one side or one corner only: the uncrop views extend every side alike."""
    path = evasion.write_bank(tmp / "one-sided.csv", [evasion.reference_hash(k) for k in known], "known")
    banks = BankSet(BanksSection(list=(BankSection(name="b", path=str(path), category="test"),)), Metrics())
    print("\ncrops from one side or corner (sample photos), caught with the default views")
    for label, box in (("left side", lambda w, h, p: (round(w * p), 0, w, h)),
                       ("top and left", lambda w, h, p: (round(w * p), round(h * p), w, h))):
        row = []
        for p in (4, 8):
            uploads = [evasion.as_upload(k.crop(box(k.width, k.height, p / 100))) for k in known]
            signals = [prepare(d, "0" * 40, ThumbnailSection()).pdq_signals for d in uploads]
            row.append(sum(f"known-{i}" in {m.hash_id for m in banks.match_pdq_signals(sig)}
                           for i, sig in enumerate(signals)))
        print(f"  {label:14} 4 %: {row[0]}/{len(known)}  8 %: {row[1]}/{len(known)}")
    print("  with a view extended on the left only, by the exact margin (within 31 of the original):")
    for p in (4, 8):
        counts = []
        for fade in (1.0, 0.8):
            close = 0
            for k in known:
                luma = luma_of(evasion.as_upload(k.crop((round(k.width * p / 100), 0, k.width, k.height))))
                pad = (0, 0, round(luma.shape[1] * p / (100 - p)), 0)
                (hashes, _), = pdq.padded_dihedral_hashes(luma, (pad,), (fade,))
                close += hamming(hashes[0], evasion.reference_hash(k)) <= 31
            counts.append(close)
        print(f"  left side {p} %: edges repeated {counts[0]}/{len(known)}, faded 0.8 {counts[1]}/{len(known)}")


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
    args = parser.parse_args()
    if evasion.data_dir() is None:
        print("scikit-image's sample photos are not installed", file=sys.stderr)
        return 2
    t0 = time.process_time()
    known = [evasion.known_photo(n) for n in evasion.KNOWN]
    with tempfile.TemporaryDirectory() as tmp_name:
        catch_rates(Path(tmp_name), "sample photos", known)
        catch_rates(Path(tmp_name), "generated photos", [images.photo(500 + s) for s in range(args.generated)])
        one_sided(Path(tmp_name), known)
    exact_margin(known)
    confident_bits(known, args.benign)
    print(f"\nCPU {time.process_time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
