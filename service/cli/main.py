"""``mediamoderation``'s entry point (the console script and ``python -m service``)."""

from __future__ import annotations

from collections.abc import Sequence

from service.cli.parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
