"""A stand-in wiki for benchmarks: answers imageinfo at once and serves pre-rendered thumbnails.

Titles look like ``File:Bench <k> <n>.jpg`` (SHA-1 ``n`` as 40 hex digits); the thumbnail served
is image ``k`` of the set given on the command line (a directory of JPEG files named 0.jpg, 1.jpg,
...).  It measures the service's own cost, not MediaWiki's.

    python bench/standin_wiki.py --port 8766 --thumbs DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web

THUMBS = web.AppKey("thumbs", list)
BASE = web.AppKey("base", str)


async def api(request: web.Request) -> web.Response:
    titles = request.query.get("titles", "")
    width = int(request.query.get("iiurlwidth", "330"))
    thumbs: list[bytes] = request.app[THUMBS]
    pages = []
    for title in titles.split("|"):
        parts = title.rsplit(".", 1)[0].split(" ")
        try:
            k = int(parts[1]) % len(thumbs)
            n = int(parts[2])
        except (IndexError, ValueError):
            pages.append({"title": title, "missing": True})
            continue
        pages.append(
            {
                "title": title,
                "imageinfo": [
                    {
                        "url": f"{request.app[BASE]}/orig/{k}.jpg",
                        "descriptionurl": f"{request.app[BASE]}/wiki/{title}",
                        "thumburl": f"{request.app[BASE]}/thumb/{k}.jpg",
                        "thumbwidth": width,
                        "thumbheight": width * 3 // 4,
                        "sha1": f"{n:040x}",  # what the benchmark's events announce
                        "size": 4_000_000,
                        "width": 4000,
                        "height": 3000,
                        "mime": "image/jpeg",
                        "mediatype": "BITMAP",
                    }
                ],
            }
        )
    return web.Response(text=json.dumps({"batchcomplete": True, "query": {"pages": pages}}),
                        content_type="application/json")


async def thumb(request: web.Request) -> web.Response:
    k = int(request.match_info["k"])
    return web.Response(body=request.app[THUMBS][k], content_type="image/jpeg")


def make_app(thumbs: list[bytes], base: str) -> web.Application:
    app = web.Application()
    app[THUMBS] = thumbs
    app[BASE] = base
    app.router.add_get("/api.php", api)
    app.router.add_get("/thumb/{k:\\d+}.jpg", thumb)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--thumbs", required=True)
    args = parser.parse_args()
    files = sorted(Path(args.thumbs).glob("*.jpg"), key=lambda p: int(p.stem))
    thumbs = [f.read_bytes() for f in files]
    web.run_app(make_app(thumbs, f"http://127.0.0.1:{args.port}"), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
