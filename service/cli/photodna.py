"""``mediamoderation photodna check FILE|URL``: send one image to PhotoDNA the way the service does."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from service.cli.exits import EXIT_CONFIG, EXIT_UPSTREAM
from service.cli.options import load, start_logging
from service.config import Config
from service.errors import ServiceError

if TYPE_CHECKING:
    from service.metrics import Metrics


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    photodna = sub.add_parser("photodna", help="PhotoDNA tools")
    pdna_sub = photodna.add_subparsers(dest="photodna_command", required=True)
    check = pdna_sub.add_parser(
        "check", parents=[common],
        help="send one image (a file, or a URL on a configured wiki) to PhotoDNA and print the result; "
        "exit 0 no match, 1 match, 3 unscannable, 4 PhotoDNA error (e.g. the key is refused)")
    check.add_argument("target", metavar="FILE|URL")
    check.add_argument("--raw", action="store_true", help="print PhotoDNA's JSON answer as received")
    check.set_defaults(func=cmd_photodna_check)


def cmd_photodna_check(args: argparse.Namespace) -> int:
    cfg = load(args)
    if not (cfg.photodna.key.env or cfg.photodna.key.file):
        print("photodna.key is not configured: set {env: VAR} or {file: PATH}", file=sys.stderr)
        return EXIT_CONFIG
    start_logging(args, cfg, tool=True)
    try:
        code, out = asyncio.run(photodna_check(cfg, args.target, raw=args.raw))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    print(out)
    return code


async def photodna_check(cfg: Config, target: str, *, raw: bool = False) -> tuple[int, str]:
    """Send one image (a local file, or a URL on a configured wiki's hosts) the way the service does: the
    thumbnail stage's JPEG.  Returns (exit code: 0 no match, 1 match, 3 unscannable; text to print).
    PhotoDNA failures raise (:class:`ServiceError`), the request counts against the monthly budget."""
    import dataclasses
    import hashlib

    from service.errors import Unscannable
    from service.matchers.photodna import build_matcher, to_matches
    from service.media.thumbnail import prepare
    from service.metrics import Metrics
    from service.net import Proxies
    from service.store import make_stores

    metrics = Metrics()
    data = await _read_target(cfg, target, metrics)
    sha1 = hashlib.sha1(data).hexdigest()
    thumb_cfg = dataclasses.replace(cfg.thumbnail, make_jpeg=True)
    try:
        media = await asyncio.to_thread(prepare, data, sha1, thumb_cfg, source="original")
    except Unscannable as exc:
        return 3, json.dumps({"target": target, "sha1": sha1, "outcome": f"unscannable:{exc.reason}",
                              "detail": exc.detail}, indent=2)
    if media.jpeg is None:
        return 3, json.dumps({"target": target, "sha1": sha1, "outcome": "unscannable:photodna-no-jpeg",
                              "detail": f"no JPEG >= 160 px under 4 MB from {media.width}x{media.height}"}, indent=2)
    given = {"bytes": len(data), "width": media.width, "height": media.height}  # the input, as decoded
    stores = make_stores(cfg.store)  # the configured store: the request counts against the shared budget
    await stores.open()
    matcher = build_matcher(cfg.photodna, user_agent=cfg.service.user_agent, store=stores.budget, metrics=metrics,
                            proxies=Proxies.for_config(cfg.network))
    sent: list[tuple[bytes, str]] = []  # every body the client sent; the last one is what PhotoDNA judged
    try:
        await matcher.client.start()
        try:
            result = await matcher.client.check(media.jpeg, "image/jpeg",
                                                on_send=lambda body, ctype: sent.append((body, ctype)))
        except Unscannable as exc:
            return 3, json.dumps({"target": target, "sha1": sha1, "outcome": f"unscannable:{exc.reason}",
                                  "detail": exc.detail, "input": given,
                                  **({"sent": _image_facts(*sent[-1])} if sent else {})}, indent=2)
    finally:
        await matcher.aclose()
        await stores.close()
    if raw:
        return (1 if result.is_match else 0), result.raw
    report = {
        "target": target, "sha1": sha1,
        "input": given,
        "sent": _image_facts(*sent[-1]),
        **result.to_dict(),
        "matches": [m.to_dict() for m in to_matches(result, cfg.photodna)],
    }
    return (1 if result.is_match else 0), json.dumps(report, indent=2)


def _image_facts(body: bytes, content_type: str) -> dict[str, Any]:
    """What one request carried: its Content-Type, size in bytes and the image's pixel dimensions."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(body)) as img:
        width, height = img.size
    return {"content_type": content_type, "bytes": len(body), "width": width, "height": height}


async def _read_target(cfg: Config, target: str, metrics: Metrics) -> bytes:
    """A local file, or a URL fetched only from a configured wiki's hosts (checked on every redirect)."""
    from pathlib import Path

    from yarl import URL

    from service.errors import HostNotAllowed
    from service.fetch import WikiClient, origin_allowed
    from service.net import Proxies

    if not target.startswith(("http://", "https://")):
        try:
            data = await asyncio.to_thread(Path(target).read_bytes)
        except OSError as exc:
            raise ServiceError(f"cannot read {target}: {exc.strerror or exc}") from exc
        if len(data) > cfg.fetch.max_bytes:
            raise ServiceError(f"{target} is larger than fetch.max_bytes ({cfg.fetch.max_bytes})")
        return data
    try:
        url = URL(target, encoded=True)
    except ValueError as exc:
        raise HostNotAllowed(target) from exc
    wiki = next((w for w in cfg.wikis if origin_allowed(w, url)), None)
    if wiki is None:
        raise HostNotAllowed(target)
    async with WikiClient(cfg.fetch, cfg.wikis, cfg.service.user_agent, metrics,
                          proxies=Proxies.for_config(cfg.network)) as client:
        return await client.download(wiki, target, kind="original", limit=cfg.fetch.max_bytes)
