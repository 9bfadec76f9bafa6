#!/usr/bin/env python3
"""Write banks/example.csv: SHA-1, MD5 and PDQ hashes of a few generated images (seeds 9001-9003).

The images are drawn by tests/infra/images.py (random shapes, no real material), so the shipped bank
holds no real hash list.  ``--images DIR`` also writes the JPEGs, to try ``mediamoderation scan`` on.

    python scripts/make_example_bank.py [--out banks/example.csv] [--images DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import ThumbnailSection  # noqa: E402
from service.matchers.banks import HEADER  # noqa: E402
from service.media.thumbnail import prepare  # noqa: E402
from tests.infra.images import jpeg_bytes, photo  # noqa: E402

SEEDS = (9001, 9002, 9003)


def example_rows(seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, str, str, str]]:
    rows = []
    for seed in seeds:
        data = jpeg_bytes(photo(seed))
        sha1 = hashlib.sha1(data).hexdigest()
        media = prepare(data, sha1, ThumbnailSection())
        assert media.pdq is not None
        entry_id = f"example-{seed}"
        rows += [
            (sha1, "", "generated", entry_id),
            (hashlib.md5(data).hexdigest(), "", "generated", entry_id),
            (media.pdq.hex, "", "generated", entry_id),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "banks" / "example.csv"))
    parser.add_argument("--images", help="also write the generated JPEGs into this directory")
    args = parser.parse_args(argv)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(example_rows())
    if args.images:
        out = Path(args.images)
        out.mkdir(parents=True, exist_ok=True)
        for seed in SEEDS:
            (out / f"example-{seed}.jpg").write_bytes(jpeg_bytes(photo(seed)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
