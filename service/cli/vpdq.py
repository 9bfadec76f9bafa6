"""``mediamoderation vpdq FILE --id ID``: a local video's vPDQ signature as rows of a vPDQ bank file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.cli.exits import EXIT_OK, EXIT_UNSCANNABLE


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "vpdq",
        help="hash a local video as the service does (1 frame/s by default) and print its vPDQ signature as "
        "bank rows `id,category,source,frame_number,quality,pdq,timestamp` (exit 3 when it cannot be decoded)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--id", required=True, help="the video's id in the bank")
    p.add_argument("--category", default="", help="category (empty: the bank's)")
    p.add_argument("--source", default="", help="where the video's hash comes from")
    p.add_argument("--sample-rate", type=float, default=1.0, help="frames hashed per second (default 1)")
    p.add_argument("--header", action="store_true", help="print the bank file's header line first")
    p.set_defaults(func=cmd_vpdq)


def cmd_vpdq(args: argparse.Namespace) -> int:
    import csv

    from service.config import ThumbnailSection
    from service.config.media import VideoSection
    from service.errors import Unscannable
    from service.matchers.vpdq import HEADER
    from service.media.video import prepare_video

    try:
        media = prepare_video(args.file, "", None, VideoSection(sample_rate=args.sample_rate), ThumbnailSection())
    except (Unscannable, OSError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_UNSCANNABLE
    out = csv.writer(sys.stdout, lineterminator="\n")
    if args.header:
        out.writerow(HEADER)
    for f in media.frames:
        out.writerow([args.id, args.category, args.source, f.frame_number, f.quality, f.pdq.hex(),
                      f"{f.timestamp:.3f}"])
    return EXIT_OK
