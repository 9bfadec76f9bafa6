"""The ``mediamoderation`` argument parser: global options, then one subparser per command group."""

from __future__ import annotations

import argparse
from importlib import metadata

from service import __version__
from service.cli import bank, check, photodna, report, reprocess, retro, reviewer, run, scan, vpdq
from service.cli.options import common_options
from service.config.cli import add_config_command

EPILOG = ("exit codes: 0 ok, 1 match found (wins over 3), 2 usage error or invalid config, 3 a file could not be "
          "scanned, 4 upstream error")


def version() -> str:
    """The installed distribution's version (the package's own when it runs from a source tree)."""
    try:
        return metadata.version("mediamoderation")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediamoderation", description="Scan a wiki's uploads against known-abuse hash banks.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"mediamoderation {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    run.add_parser(sub, common)
    check.add_parser(sub, common)
    scan.add_parser(sub, common)
    photodna.add_parser(sub, common)
    reprocess.add_parsers(sub, common)
    reviewer.add_parser(sub, common)
    vpdq.add_parser(sub, common)
    bank_commands = bank.add_parser(sub, common)
    retro.add_parser(sub, common)  # retro run --bank NAME
    retro.add_quarantine_parser(bank_commands, common)  # bank quarantine list | release ID
    report.add_parser(sub, common)
    add_config_command(sub, common)  # config schema | show | reference
    return parser
