"""``mediamoderation reviewer add | list | disable | enable | passwd | role | hash-password``: review queue reviewers.

Reviewers live in the configured store, so every replica sees a change at its next request (no restart).
Passwords are read from the terminal (twice) or one line from stdin, and stored as argon2 hashes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from service.cli.exits import EXIT_OK, EXIT_USAGE
from service.cli.options import load
from service.store.base import ROLES, ReviewerStore

EXIT_NO_REVIEWER = 1  # no such reviewer (or, for add, the name exists)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    reviewer = sub.add_parser("reviewer", help="review queue reviewers (in the store) and tools")
    rs = reviewer.add_subparsers(dest="reviewer_command", required=True)
    hash_password = rs.add_parser(
        "hash-password", parents=[common],
        help="read a password (twice on a terminal, or one line from stdin) and print its argon2 hash for "
        "review.reviewers[].password_hash (deprecated config-file reviewers; the config is not read)")
    hash_password.set_defaults(func=cmd_hash_password)
    add = rs.add_parser("add", parents=[common], help="add a reviewer; reads the password (terminal twice, or stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="reviewer", help="reviewer (default) or admin")
    add.set_defaults(func=cmd_add)
    ls = rs.add_parser("list", parents=[common], help="list reviewers: name, role, state")
    ls.set_defaults(func=cmd_list)
    disable = rs.add_parser("disable", parents=[common], help="stop a reviewer signing in (their sessions end)")
    disable.add_argument("name")
    disable.set_defaults(func=cmd_disable)
    enable = rs.add_parser("enable", parents=[common], help="let a disabled reviewer sign in again")
    enable.add_argument("name")
    enable.set_defaults(func=cmd_enable)
    passwd = rs.add_parser("passwd", parents=[common], help="set a reviewer's password (terminal twice, or stdin)")
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_passwd)
    role = rs.add_parser("role", parents=[common], help="set a reviewer's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.set_defaults(func=cmd_role)


def cmd_hash_password(args: argparse.Namespace) -> int:
    from service.web.review.auth import read_new_password_hash

    code, text = read_new_password_hash()
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _with_store(args: argparse.Namespace, work: Callable[[ReviewerStore], Awaitable[int]]) -> int:
    from service.store import make_stores

    cfg = load(args)

    async def run() -> int:
        stores = make_stores(cfg.store)
        await stores.open()
        try:
            return await work(stores.reviewers)
        finally:
            await stores.close()

    return asyncio.run(run())


def _valid_name(name: str) -> bool:
    return bool(name.strip()) and name == name.strip() and len(name) <= 200 and name.isprintable()


def _new_hash() -> str | None:
    from service.web.review.auth import read_new_password_hash

    code, text = read_new_password_hash()
    if code != 0:
        print(f"error: {text}", file=sys.stderr)
        return None
    return text


def cmd_add(args: argparse.Namespace) -> int:
    if not _valid_name(args.name):
        print("error: a reviewer name is 1-200 printable characters without leading or trailing spaces",
              file=sys.stderr)
        return EXIT_USAGE
    hashed = _new_hash()
    if hashed is None:
        return EXIT_USAGE

    async def work(store: ReviewerStore) -> int:
        if not await store.add_reviewer(args.name, hashed, args.role):
            print(f"error: reviewer {args.name!r} exists (use passwd, role or enable)", file=sys.stderr)
            return EXIT_NO_REVIEWER
        print(f"added reviewer {args.name} ({args.role})")
        return EXIT_OK

    return _with_store(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(store: ReviewerStore) -> int:
        rows = await store.list_reviewers()
        width = max((len(r.name) for r in rows), default=4)
        print(f"{'name':<{width}}  {'role':<8}  {'state':<8}  changed")
        for r in rows:
            changed = datetime.fromtimestamp(r.updated_at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
            print(f"{r.name:<{width}}  {r.role:<8}  {'active' if r.active else 'disabled':<8}  {changed}")
        return EXIT_OK

    return _with_store(args, work)


def _update(args: argparse.Namespace, done: str, **changes: Any) -> int:
    async def work(store: ReviewerStore) -> int:
        if not await store.update_reviewer(args.name, **changes):
            print(f"error: no reviewer {args.name!r} in the store (mediamoderation reviewer list)", file=sys.stderr)
            return EXIT_NO_REVIEWER
        print(done)
        return EXIT_OK

    return _with_store(args, work)


def cmd_disable(args: argparse.Namespace) -> int:
    return _update(args, f"disabled reviewer {args.name}", disabled=True)


def cmd_enable(args: argparse.Namespace) -> int:
    return _update(args, f"enabled reviewer {args.name}", disabled=False)


def cmd_passwd(args: argparse.Namespace) -> int:
    hashed = _new_hash()
    if hashed is None:
        return EXIT_USAGE
    return _update(args, f"password of {args.name} changed", password_hash=hashed)


def cmd_role(args: argparse.Namespace) -> int:
    return _update(args, f"{args.name} is now {args.role}", role=args.role)
