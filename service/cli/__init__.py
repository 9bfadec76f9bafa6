"""Command line: ``mediamoderation run | check-config | scan | photodna check | replay | backfill | reviewer``.

One module per command group; :mod:`service.cli.parser` puts them together and :mod:`service.cli.main`
runs them.  Exit codes (:mod:`service.cli.exits`): 0 ok, 1 match found, 2 usage error or invalid
config, 3 unscannable, 4 upstream error; a match takes precedence over an unscannable file.
"""

from service.cli.exits import EXIT_CONFIG, EXIT_MATCH, EXIT_OK, EXIT_UNSCANNABLE, EXIT_UPSTREAM, EXIT_USAGE
from service.cli.main import main
from service.cli.parser import build_parser

__all__ = ["EXIT_CONFIG", "EXIT_MATCH", "EXIT_OK", "EXIT_UNSCANNABLE", "EXIT_UPSTREAM", "EXIT_USAGE", "build_parser",
           "main"]
