#!/usr/bin/env python3
"""Start a throw-away local MediaWiki (the test suite's: Debian's mediawiki package under ``php -S``) to try
the service against, and upload files to it.

    python scripts/local_wiki.py [--upload FILE ...]

It prints the wiki's ``api_url`` and ``wikiid``, uploads the given files (as the wiki's administrator) and
serves until Ctrl-C; then the wiki is removed.  Needs the Debian packages that ``scripts/test.sh``
installs (mediawiki, php-cli, php-sqlite3, imagemagick).  For trying the service only: never put real
files on it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra.mediawiki import MediaWikiServer, MediaWikiUnavailable  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload", nargs="*", default=[], metavar="FILE", help="files to upload once it runs")
    args = parser.parse_args(argv)
    wiki = MediaWikiServer(workers=2)
    try:
        wiki.start()
    except MediaWikiUnavailable as exc:
        print(f"cannot start the local wiki: {exc}", file=sys.stderr)
        return 1
    try:
        site = wiki.client.siteinfo
        print(f"api_url: {wiki.api_url}\nwikiid: {site['wikiid']}\nserver: {site['server']}\n"
              f"articlepath: {site['articlepath']}", flush=True)
        for name in args.upload:
            path = Path(name)
            result = wiki.upload(path.name, path.read_bytes())
            print(f"uploaded File:{path.name}: {result.get('result', result)}", flush=True)
        print("serving; Ctrl-C stops and removes the wiki", flush=True)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    finally:
        wiki.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
