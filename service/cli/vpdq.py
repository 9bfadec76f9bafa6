"""``mediamoderation vpdq FILE --id ID``: a local video's vPDQ signature as rows of a vPDQ bank file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.cli.exits import EXIT_OK, EXIT_UNSCANNABLE
from service.cli.options import load, start_logging


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "vpdq", parents=[common],
        help="hash a local video as the service does (1 frame/s by default) and print its vPDQ signature as "
        "bank rows `id,category,source,frame_number,quality,pdq,timestamp` (exit 3 when it cannot be decoded); "
        "with -c, the config's media.video settings apply")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--id", required=True, help="the video's id in the bank")
    p.add_argument("--category", default="", help="category (empty: the bank's)")
    p.add_argument("--source", default="", help="where the video's hash comes from")
    p.add_argument("--sample-rate", type=float, default=None,
                   help="frames hashed per second (default: media.video.sample_rate, 1)")
    p.add_argument("--header", action="store_true", help="print the bank file's header line first")
    p.set_defaults(func=cmd_vpdq)


def cmd_vpdq(args: argparse.Namespace) -> int:
    import csv
    import dataclasses

    from service.config import ThumbnailSection
    from service.config.media import VideoSection
    from service.errors import Unscannable
    from service.matchers.vpdq import HEADER
    from service.media.video import prepare_video

    video = load(args).media.video if args.config else VideoSection()
    start_logging(args, None, tool=True)
    if args.sample_rate:
        video = dataclasses.replace(video, sample_rate=args.sample_rate)
    try:
        media = prepare_video(args.file, "", None, video, ThumbnailSection())
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
