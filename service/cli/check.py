"""``mediamoderation check-config -c PATH``: the config, the secrets it names and its bank files."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.actions.policy import TakedownPolicy
from service.cli.options import load
from service.config import warnings_for
from service.config.advice import produced_categories


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    check = sub.add_parser("check-config", parents=[common],
                           help="validate a config file, the secrets it names (environment variables, files) and its "
                           "bank files; exit 2 when invalid")
    check.add_argument("path", nargs="?", default=None, metavar="PATH",
                       help="deprecated: use -c PATH (still accepted in this release, with a warning)")
    check.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load(args, secrets=True, bank_files=True)
    for warning in warnings_for(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    # The effective takedown rule per category (takedown confidence).
    for line in TakedownPolicy(cfg.actions.takedown).explain(produced_categories(cfg)):
        print(line)
    print(f"{args.config_file}: OK ({len(cfg.wikis)} wiki(s), {len(cfg.banks.list)} bank(s))")
    return 0
