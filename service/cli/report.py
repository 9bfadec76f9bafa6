"""``mediamoderation report draft CASE_ID --format xml|json``: a CyberTipline report draft for staff to complete.

The draft is printed (or written with ``-o FILE``); nothing is submitted.  CASE_ID is the case's SHA-1 as
shown in the review queue.  Exit 2 when the case is unknown or not reportable (not a confirmed
child-protection case).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

from service.cli.exits import EXIT_OK, EXIT_USAGE
from service.cli.options import load
from service.config import Config

_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser("report", help="NCMEC CyberTipline report drafts (never submitted by the service)")
    report_sub = report.add_subparsers(dest="report_command", required=True)
    draft = report_sub.add_parser(
        "draft", parents=[common],
        help="print the report draft of a confirmed child-protection case, for staff to complete and submit")
    draft.add_argument("case_id", metavar="CASE_ID", help="the case's SHA-1 (40 hex digits), as in the review queue")
    draft.add_argument("--format", choices=("xml", "json"), default="xml", help="output format (default: xml)")
    draft.add_argument("-o", "--output", metavar="FILE", default=None, help="write to FILE instead of stdout")
    draft.set_defaults(func=cmd_report_draft)


def cmd_report_draft(args: argparse.Namespace) -> int:
    case_id = str(args.case_id).strip().lower()
    if not _SHA1_RE.match(case_id):
        print(f"error: CASE_ID must be a SHA-1 (40 hex digits), got {args.case_id!r}", file=sys.stderr)
        return EXIT_USAGE
    cfg = load(args, secrets=False)
    from service.reporting import DraftError

    try:
        text = asyncio.run(report_draft(cfg, case_id, args.format))
    except DraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"report draft written to {args.output} (not submitted: complete and submit it yourself)",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


async def report_draft(cfg: Config, sha1: str, fmt: str) -> str:
    from service.reporting import draft_for_case, to_json, to_xml
    from service.store import make_stores

    stores = make_stores(cfg.store)
    await stores.open()
    try:
        draft = await draft_for_case(sha1, review=stores.review, scans=stores.scans, workflow=stores.workflow,
                                     cfg=cfg, now=time.time())
    finally:
        await stores.close()
    return to_json(draft) if fmt == "json" else to_xml(draft)
