"""``mediamoderation reviewer hash-password``: the argon2 hash for ``review.reviewers[].password_hash``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    reviewer = sub.add_parser("reviewer", help="review queue tools")
    reviewer_sub = reviewer.add_subparsers(dest="reviewer_command", required=True)
    hash_password = reviewer_sub.add_parser(
        "hash-password", parents=[common],
        help="read a password (twice on a terminal, or one line from stdin) and print its argon2 hash for "
        "review.reviewers[].password_hash (the config is not read)")
    hash_password.set_defaults(func=cmd_hash_password)


def cmd_hash_password(args: argparse.Namespace) -> int:
    from service.web.review.auth import read_new_password_hash

    code, text = read_new_password_hash()
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code
