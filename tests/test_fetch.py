"""WikiClient against a stand-in wiki (aiohttp on 127.0.0.1) speaking the imageinfo formatversion=2 layout."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest
from aiohttp import web
from PIL import Image, ImageDraw

from service.config import STANDARD_THUMB_WIDTHS, FetchSection, WikiSection
from service.errors import FetchError, FileGone, HostNotAllowed, Unscannable
from service.fetch import WikiClient, choose_width, parse_retry_after, png_frame_count, thumb_size
from service.metrics import Metrics
from service.models import FileInfo

UA = "mediamoderation-test/0.1 (https://example.org/mm; ts@example.org)"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def png(width: int, height: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    img = Image.new("RGB", (width, height), (rnd.randrange(256), 90, 160))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rnd.randrange(width), rnd.randrange(height)
        draw.ellipse((x, y, x + width // 4 + 1, y + height // 4 + 1), fill=(rnd.randrange(256), 30, 60))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@dataclass
class FakeFile:
    data: bytes
    width: int
    height: int
    mime: str = "image/png"
    mediatype: str = "BITMAP"
    renders: bool = True  # False: the wiki gives no thumburl (audio, or a failed render)
    frame_count: int = 0  # PNGHandler's metadata: > 0 for an APNG


@dataclass
class Seen:
    host: str
    path: str
    query: dict[str, str]
    user_agent: str


@dataclass
class FakeWiki:
    """A wiki stand-in: /w/api.php (imageinfo), /images/NAME (originals), /thumb/W/NAME (rendered thumbnails).

    ``script[path]`` holds handlers used (and consumed) before the normal behaviour, to inject failures.
    """

    port: int = 0
    files: dict[str, FakeFile] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    script: dict[str, list[Handler]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    batches: list[list[str]] = field(default_factory=list)
    metadata_asked: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wiki(self, *media_hosts: str) -> WikiSection:
        return WikiSection(id="testwiki", api_url=f"{self.base}/w/api.php", media_hosts=media_hosts)

    def add(self, name: str, f: FakeFile) -> FakeFile:
        self.files[name] = f
        return f

    def on(self, path: str, *handlers: Handler) -> None:
        self.script.setdefault(path, []).extend(handlers)

    def requests_to(self, path_prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(path_prefix)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/w/api.php" and request.query.get("iiprop") == "metadata":
            return self.api(request)  # a PNG's metadata: counted in metadata_asked, not in seen
        self.seen.append(Seen(request.host, request.path, dict(request.query),
                              request.headers.get("User-Agent", "")))
        queued = self.script.get(request.path)
        if queued:
            return await queued.pop(0)(request)
        if request.path == "/w/api.php":
            return self.api(request)
        if request.path.startswith("/images/"):
            f = self.files.get(request.path.removeprefix("/images/"))
            if f is None:
                raise web.HTTPNotFound()
            return web.Response(body=f.data, content_type=f.mime)
        if request.path.startswith("/thumb/"):
            _, _, w, name = request.path.split("/", 3)
            f = self.files.get(name)
            if f is None:
                raise web.HTTPNotFound()
            tw, th = thumb_size(f.width, f.height, int(w))
            img = Image.open(io.BytesIO(f.data)).convert("RGB").resize((tw, th))
            out = io.BytesIO()
            img.save(out, "PNG")
            return web.Response(body=out.getvalue(), content_type="image/png")
        raise web.HTTPNotFound()

    def api(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["action"] == "query" and q["prop"] == "imageinfo" and q["formatversion"] == "2"
        assert q["format"] == "json" and "maxlag" in q
        if q["iiprop"] == "metadata":  # PNGHandler's metadata, as MediaWiki 1.39 lists it
            self.metadata_asked.append(q["titles"])
            f = self.files.get(q["titles"].removeprefix("File:"))
            meta = [{"name": "frameCount", "value": f.frame_count if f else 0}, {"name": "loopCount", "value": 1}]
            return web.json_response({"batchcomplete": True, "query": {"pages": [
                {"ns": 6, "title": q["titles"], "imagerepository": "local", "imageinfo": [{"metadata": meta}]}]}})
        assert set(q["iiprop"].split("|")) >= {"url", "sha1", "size", "mime", "mediatype"}
        width = int(q["iiurlwidth"])
        if width not in STANDARD_THUMB_WIDTHS:  # what Wikimedia's CDN does with odd widths
            return web.Response(status=429, text="Use thumbnail steps")
        titles = q["titles"].split("|")
        self.batches.append(titles)
        # Like MediaWiki: underscores become spaces, reported under "normalized".
        normalized = [{"fromencoded": False, "from": t, "to": t.replace("_", " ")} for t in titles if "_" in t]
        pages = [self.page(title.replace("_", " "), width) for title in titles]
        query: dict = {"pages": pages}
        if normalized:
            query["normalized"] = normalized
        return web.json_response({"batchcomplete": True, "query": query})

    def page(self, title: str, width: int) -> dict:
        name = title.removeprefix("File:")
        f = self.files.get(name)
        if f is None:
            page = {"ns": 6, "title": title, "missing": True, "known": False, "imagerepository": ""}
        else:
            ii = {
                "size": len(f.data), "width": f.width, "height": f.height,
                "sha1": hashlib.sha1(f.data).hexdigest(), "mime": f.mime, "mediatype": f.mediatype,
                "url": f"{self.base}/images/{name}", "descriptionurl": f"{self.base}/wiki/{title}",
                "descriptionshorturl": f"{self.base}/index.php?curid=7",
            }
            if f.renders:
                if width >= f.width:  # never upscales: the "thumbnail" is the original
                    ii.update(thumburl=ii["url"], thumbwidth=f.width, thumbheight=f.height)
                else:
                    tw, th = thumb_size(f.width, f.height, width)
                    ii.update(thumburl=f"{self.base}/thumb/{width}/{name}", thumbwidth=tw, thumbheight=th)
            page = {"pageid": 7, "ns": 6, "title": title, "imagerepository": "local", "imageinfo": [ii]}
        return page


@pytest.fixture
async def fake() -> AsyncIterator[FakeWiki]:
    fw = FakeWiki()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", fw.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fw.port = sock.getsockname()[1]
    site = web.SockSite(runner, sock)
    await site.start()
    yield fw
    fw.release.set()
    await runner.cleanup()


@dataclass
class Harness:
    client: WikiClient
    metrics: Metrics
    sleeps: list[float]

    def count(self, kind: str, result: str) -> float:
        v = self.metrics.registry.get_sample_value(
            "mediamoderation_fetch_requests_total", {"kind": kind, "result": result})
        return v or 0.0


FAST = FetchSection(retry_delay=0.001, retries=3, timeout=5.0)


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    clients: list[WikiClient] = []

    async def _make(wiki: WikiSection, fetch: FetchSection = FAST, **kw: object) -> Harness:
        sleeps: list[float] = []

        async def sleep(d: float) -> None:  # record the wait, do not spend it
            sleeps.append(d)

        metrics = Metrics()
        client = WikiClient(fetch, (wiki,), UA, metrics, sleep=sleep, rng=random.Random(4), **kw)  # type: ignore[arg-type]
        await client.start()
        clients.append(client)
        return Harness(client, metrics, sleeps)

    yield _make
    for c in clients:
        await c.aclose()


# --------------------------------------------------------------------------- pure helpers


def test_choose_width_keeps_configured_for_ordinary_images() -> None:
    assert choose_width(4000, 3000, 330, 160) == 330
    assert choose_width(1000, 3000, 330, 160) == 330  # portrait: shorter side is the width, 330


def test_choose_width_for_panoramas() -> None:
    assert thumb_size(2000, 300, 330) == (330, 50)
    assert choose_width(2000, 300, 330, 160) == 1280  # 1280 x 192; 960 would give 144
    assert choose_width(8000, 400, 330, 160) == 3840  # 3840 x 192
    assert choose_width(8000, 400, 500, 160) == 3840
    # portrait panorama: width is the short side
    assert choose_width(150, 6000, 120, 160) == 250  # 250 >= 150: the original, best available


def test_choose_width_extremes() -> None:
    assert choose_width(40000, 200, 330, 160) == 3840  # cannot reach 160, take the most detail allowed
    assert choose_width(1000, 100, 330, 160) == 1280  # original (1000 x 100) is the best there is
    assert choose_width(100, 100, 330, 160) == 330  # already the original
    assert choose_width(0, 0, 330, 160) == 330  # audio: no dimensions
    assert choose_width(9000, 300, 3840, 160) == 3840
    for w, h in [(2000, 300), (8000, 400), (100000, 50), (4000, 3000), (300, 5000)]:
        assert choose_width(w, h, 330, 160) in STANDARD_THUMB_WIDTHS


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# --------------------------------------------------------------------------- fetching


async def test_fetch_thumbnail_and_user_agent(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    f = fake.add("Photo.png", FakeFile(png(1200, 900), 1200, 900))
    h = await make(fake.wiki("127.0.0.1"))
    media = await h.client.fetch(fake.wiki("127.0.0.1"), "File:Photo.png",
                                 expected_sha1=hashlib.sha1(f.data).hexdigest())
    assert media.data_source == "thumbnail"
    assert Image.open(io.BytesIO(media.data)).size == (330, 248)
    assert media.info.sha1 == hashlib.sha1(f.data).hexdigest()
    assert (media.info.width, media.info.height, media.info.size) == (1200, 900, len(f.data))
    assert (media.info.thumb_width, media.info.thumb_height) == (330, 248)
    assert media.original_md5 is None
    api = fake.requests_to("/w/api.php")
    assert [r.query["iiurlwidth"] for r in api] == ["330"]
    assert api[0].query["maxlag"] == "5" and api[0].query["titles"] == "File:Photo.png"
    assert fake.seen and all(s.user_agent == UA for s in fake.seen)
    assert h.count("imageinfo", "ok") == 1 and h.count("thumbnail", "ok") == 1
    assert h.metrics.registry.get_sample_value(
        "mediamoderation_fetched_bytes_total", {"kind": "thumbnail"}) == len(media.data)


async def test_own_session_sends_user_agent(fake: FakeWiki) -> None:
    fake.add("A.png", FakeFile(png(400, 400), 400, 400))
    async with WikiClient(FAST, (fake.wiki(),), UA, Metrics()) as client:
        await client.fetch(fake.wiki(), "File:A.png")
    assert len(fake.seen) == 2 and {s.user_agent for s in fake.seen} == {UA}


async def test_panorama_asks_for_a_wider_standard_thumbnail(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("Pano.png", FakeFile(png(2000, 300), 2000, 300))
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:Pano.png")
    assert [r.query["iiurlwidth"] for r in fake.requests_to("/w/api.php")] == ["330", "1280"]
    assert fake.requests_to("/thumb/")[0].path == "/thumb/1280/Pano.png"
    assert Image.open(io.BytesIO(media.data)).size == (1280, 192)
    assert media.data_source == "thumbnail"


async def test_small_file_served_as_original(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    f = fake.add("Small.png", FakeFile(png(200, 180), 200, 180))
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:Small.png")
    assert media.data == f.data and media.data_source == "original"
    assert media.original_md5 == hashlib.md5(f.data).hexdigest()
    assert len(fake.requests_to("/images/")) == 1 and not fake.requests_to("/thumb/")


async def test_originals_downloaded_with_md5(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    f = fake.add("P.png", FakeFile(png(800, 600), 800, 600))
    h = await make(fake.wiki(), replace(FAST, originals=True))
    media = await h.client.fetch(fake.wiki(), "File:P.png")
    assert media.data_source == "thumbnail"
    assert media.original_md5 == hashlib.md5(f.data).hexdigest()
    assert h.count("original", "ok") == 1


async def test_original_sha1_mismatch_is_retriable(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def other_bytes(_: web.Request) -> web.Response:
        return web.Response(body=png(800, 600, seed=99), content_type="image/png")

    fake.on("/images/P.png", other_bytes)
    h = await make(fake.wiki(), replace(FAST, originals=True))
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert ei.value.reason == "sha1-mismatch" and ei.value.retriable


async def test_expected_sha1_mismatch_warns_and_scans(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]], caplog: pytest.LogCaptureFixture) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))
    h = await make(fake.wiki())
    with caplog.at_level(logging.WARNING, logger="service.fetch"):
        media = await h.client.fetch(fake.wiki(), "File:P.png", expected_sha1="0" * 40)
    assert media.data
    assert any("differs from the event's" in r.getMessage() for r in caplog.records)


async def test_no_thumbnail(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    sound = fake.add("Sound.flac", FakeFile(b"fLaC" + b"\0" * 100, 0, 0, "audio/flac", "AUDIO", renders=False))
    fake.add("Data.bin", FakeFile(b"\0" * 100, 0, 0, "application/octet-stream", "UNKNOWN", renders=False))
    bmp = fake.add("Raw.png", FakeFile(png(600, 400), 600, 400, renders=False))
    fake.add("Big.png", FakeFile(png(600, 400), 600, 400, renders=False))
    h = await make(fake.wiki())
    with pytest.raises(Unscannable) as ei:
        await h.client.fetch(fake.wiki(), "File:Data.bin")
    assert ei.value.reason == "no-thumbnail"
    # Audio (issue 14): the original is streamed for its MD5 (exact banks only), nothing kept.
    audio = await h.client.fetch(fake.wiki(), "File:Sound.flac")
    assert audio.kind == "audio" and audio.path is None and audio.data == b""
    assert audio.original_md5 == hashlib.md5(sound.data).hexdigest()
    media = await h.client.fetch(fake.wiki(), "File:Raw.png")  # bitmap: fall back to the original
    assert media.data == bmp.data and media.data_source == "original"
    h2 = await make(fake.wiki(), replace(FAST, max_bytes=100))
    with pytest.raises(Unscannable) as ei:
        await h2.client.fetch(fake.wiki(), "File:Big.png")
    assert ei.value.reason == "too-large"
    assert not fake.requests_to("/images/Big.png")  # refused from imageinfo's size, nothing downloaded


async def test_missing_file_is_gone(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    h = await make(fake.wiki())
    with pytest.raises(FileGone):
        await h.client.fetch(fake.wiki(), "File:Nope.png")

    async def filemissing(_: web.Request) -> web.Response:
        return web.json_response({"query": {"pages": [{"pageid": 3, "ns": 6, "title": "File:Del.png",
                                                       "imagerepository": "local",
                                                       "imageinfo": [{"filemissing": True}]}]}})

    async def no_file(_: web.Request) -> web.Response:  # description page exists, the file does not
        return web.json_response({"query": {"pages": [{"pageid": 3, "ns": 6, "title": "File:Del.png",
                                                       "imagerepository": ""}]}})

    fake.on("/w/api.php", filemissing, no_file)
    for _ in range(2):
        with pytest.raises(FileGone):
            await h.client.fetch(fake.wiki(), "File:Del.png")
    assert h.count("imageinfo", "gone") == 3


async def test_media_404_is_gone(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def gone(_: web.Request) -> web.Response:
        return web.Response(status=404)

    fake.on("/thumb/330/P.png", gone)
    h = await make(fake.wiki())
    with pytest.raises(FileGone):
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert h.count("thumbnail", "gone") == 1


async def test_other_4xx_is_permanent(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def forbidden(_: web.Request) -> web.Response:
        return web.Response(status=403)

    fake.on("/thumb/330/P.png", forbidden)
    fake.on("/images/P.png", forbidden)
    h = await make(fake.wiki())
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert (ei.value.retriable, ei.value.reason) == (False, "http-403")
    assert len(fake.requests_to("/thumb/")) == 1  # not retried
    assert len(fake.requests_to("/images/")) == 1  # the original was tried once instead


async def test_unrenderable_thumbnail_falls_back_to_the_original(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("Huge.png", FakeFile(png(800, 600), 800, 600))

    async def cannot_render(_: web.Request) -> web.Response:  # what MediaWiki does for a 40000 px PNG
        return web.Response(status=400, text="<html>Error creating thumbnail</html>", content_type="text/html")

    fake.on("/thumb/330/Huge.png", cannot_render, cannot_render)
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:Huge.png")
    assert media.data_source == "original" and media.data == fake.files["Huge.png"].data
    # The original is over the cap: give up, with a reason.
    small = await make(fake.wiki(), dataclasses.replace(FAST, max_bytes=100))
    with pytest.raises(Unscannable) as ei:
        await small.client.fetch(fake.wiki(), "File:Huge.png")
    assert ei.value.reason in ("thumbnail-failed", "too-large")


async def test_redirect_to_disallowed_host_refused(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def to_localhost(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{fake.port}/thumb/330/P.png")

    fake.on("/thumb/330/P.png", to_localhost)
    h = await make(fake.wiki())  # only 127.0.0.1 (the API host) allowed
    with pytest.raises(HostNotAllowed):
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert not [s for s in fake.seen if s.host.startswith("localhost")]
    assert h.count("thumbnail", "host-not-allowed") == 1


async def test_redirect_to_other_scheme_refused(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def to_file(_: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    fake.on("/thumb/330/P.png", to_file)
    h = await make(fake.wiki())
    with pytest.raises(HostNotAllowed):
        await h.client.fetch(fake.wiki(), "File:P.png")


async def test_media_url_on_disallowed_host_refused(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    async def elsewhere(_: web.Request) -> web.Response:
        ii = {"size": 10, "width": 800, "height": 600, "sha1": "a" * 40, "mime": "image/png",
              "mediatype": "BITMAP", "url": "https://evil.example/x.png", "descriptionurl": "",
              "thumburl": "https://evil.example/330px-x.png", "thumbwidth": 330, "thumbheight": 248}
        return web.json_response({"query": {"pages": [{"ns": 6, "title": "File:X.png", "imageinfo": [ii]}]}})

    fake.on("/w/api.php", elsewhere)
    h = await make(fake.wiki())
    with pytest.raises(HostNotAllowed):
        await h.client.fetch(fake.wiki(), "File:X.png")


@pytest.fixture
async def other_port() -> AsyncIterator[FakeWiki]:
    """A second server on 127.0.0.1 (the allowed API host) but on another port, serving the same paths."""
    fw = FakeWiki()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", fw.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fw.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    yield fw
    await runner.cleanup()


async def test_redirect_to_another_port_on_an_allowed_host_refused(
        fake: FakeWiki, other_port: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))
    other_port.add("P.png", FakeFile(png(800, 600), 800, 600))
    assert other_port.port != fake.port

    async def to_other_port(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{other_port.port}/thumb/330/P.png")

    for name in ("127.0.0.1", f"127.0.0.1:{fake.port}", "localhost"):  # however the host itself is allowed
        fake.on("/thumb/330/P.png", to_other_port)
        h = await make(fake.wiki(name))
        with pytest.raises(HostNotAllowed):
            await h.client.fetch(fake.wiki(name), "File:P.png")
        assert h.count("thumbnail", "host-not-allowed") == 1
    assert other_port.seen == []  # not one request reached the other port
    # Listed as host:port, the other port is allowed and the same redirect is followed.
    fake.on("/thumb/330/P.png", to_other_port)
    allowed = fake.wiki(f"127.0.0.1:{other_port.port}")
    h = await make(allowed)
    media = await h.client.fetch(allowed, "File:P.png")
    assert Image.open(io.BytesIO(media.data)).size == (330, 248)
    assert [s.path for s in other_port.seen] == ["/thumb/330/P.png"]


def test_origin_allowed_compares_scheme_host_and_port() -> None:
    from yarl import URL

    from service.fetch import origin_allowed

    wiki = WikiSection(id="w", api_url="https://commons.wikimedia.org/w/api.php",
                       media_hosts=("upload.wikimedia.org", "media.example:8443", "[2001:db8::1]"))
    for ok in ("https://commons.wikimedia.org/x", "https://commons.wikimedia.org:443/x",
               "https://Upload.Wikimedia.org./a.jpg", "https://media.example:8443/a.jpg",
               "https://[2001:db8::1]/a.jpg"):
        assert origin_allowed(wiki, URL(ok)), ok
    for bad in ("https://commons.wikimedia.org:8443/x", "http://commons.wikimedia.org/x",
                "http://upload.wikimedia.org:443/a.jpg", "https://upload.wikimedia.org:80/a.jpg",
                "https://media.example/a.jpg", "https://media.example:443/a.jpg", "https://[2001:db8::1]:8080/",
                "https://user@upload.wikimedia.org/a.jpg", "ftp://upload.wikimedia.org/a.jpg",
                "https://evil.example/a.jpg", "https://commons.wikimedia.org.evil.example/x"):
        assert not origin_allowed(wiki, URL(bad)), bad


async def test_redirect_within_allowed_hosts_followed(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def hop1(_: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"http://localhost:{fake.port}/hop2")

    async def hop2(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/thumb/330/P.png")  # relative, resolved against localhost

    fake.on("/thumb/330/P.png", hop1)
    fake.on("/hop2", hop2)
    h = await make(fake.wiki(f"localhost:{fake.port}"))
    media = await h.client.fetch(fake.wiki(f"localhost:{fake.port}"), "File:P.png")
    assert Image.open(io.BytesIO(media.data)).size == (330, 248)
    thumbs = fake.requests_to("/thumb/")
    assert [t.host.split(":")[0] for t in thumbs] == ["127.0.0.1", "localhost"]
    assert all(s.user_agent == UA for s in fake.seen)


async def test_too_many_redirects(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    fake.on("/thumb/330/P.png", loop)
    fake.on("/loop", *[loop] * 10)
    h = await make(fake.wiki(), replace(FAST, max_redirects=3))
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert ei.value.reason == "too-many-redirects" and not ei.value.retriable
    assert len(fake.requests_to("/loop")) == 3


async def test_byte_cap(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:  # chunked, no Content-Length
        resp = web.StreamResponse()
        resp.content_type = "image/png"
        await resp.prepare(request)
        try:
            for _ in range(1000):
                await resp.write(b"\0" * 65536)
                sent.append(65536)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def declared(_: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 300_000, content_type="image/png")

    fake.on("/thumb/330/P.png", endless, declared)
    h = await make(fake.wiki(), replace(FAST, max_bytes=200_000))
    for _ in range(2):
        with pytest.raises(Unscannable) as ei:
            await h.client.fetch(fake.wiki(), "File:P.png")
        assert ei.value.reason == "too-large"
    assert sum(sent) < 10_000_000  # the client stopped reading long before the server's 64 MB
    assert h.count("thumbnail", "too-large") == 2


async def test_429_honours_retry_after(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def busy(_: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "7"})

    fake.on("/thumb/330/P.png", busy)
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:P.png")
    assert media.data
    assert h.sleeps == [7.0]
    assert len(fake.requests_to("/thumb/")) == 2
    assert h.count("thumbnail", "retry") == 1 and h.count("thumbnail", "ok") == 1


async def test_503_retries_then_retriable_error(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def down(_: web.Request) -> web.Response:
        return web.Response(status=503)

    fake.on("/thumb/330/P.png", *[down] * 10)
    h = await make(fake.wiki(), replace(FAST, retries=3, retry_delay=1.0))
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert (ei.value.retriable, ei.value.reason) == (True, "http-503")
    assert len(fake.requests_to("/thumb/")) == 4
    # exponential backoff with jitter (0.5x .. 1.5x of 1, 2, 4 s)
    assert len(h.sleeps) == 3
    for d, base in zip(h.sleeps, (1, 2, 4), strict=True):
        assert 0.5 * base <= d <= 1.5 * base


async def test_transient_failure_then_success(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def down(_: web.Request) -> web.Response:
        return web.Response(status=502)

    fake.on("/w/api.php", down, down)
    h = await make(fake.wiki())
    assert (await h.client.fetch(fake.wiki(), "File:P.png")).data
    assert len(fake.requests_to("/w/api.php")) == 3


async def test_timeout_is_retriable(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def hang(_: web.Request) -> web.Response:
        await fake.release.wait()
        return web.Response(status=500)

    fake.on("/thumb/330/P.png", hang)
    h = await make(fake.wiki(), replace(FAST, timeout=0.2, retries=0))
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert (ei.value.retriable, ei.value.reason) == (True, "timeout")


async def test_connection_refused_is_retriable(make: Callable[..., Awaitable[Harness]]) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    wiki = WikiSection(id="testwiki", api_url=f"http://127.0.0.1:{port}/w/api.php")
    h = await make(wiki, replace(FAST, retries=1))
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(wiki, "File:P.png")
    assert (ei.value.retriable, ei.value.reason) == (True, "connection")
    assert len(h.sleeps) == 1


async def test_maxlag_waits_at_least_the_minimum(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("P.png", FakeFile(png(800, 600), 800, 600))

    async def lagged(_: web.Request) -> web.Response:
        body = {"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged.",
                          "host": "db1", "lag": 7, "type": "db"}}
        return web.Response(text=json.dumps(body), content_type="application/json",
                            headers={"Retry-After": "1", "X-Database-Lag": "7"})

    fake.on("/w/api.php", lagged, lagged)
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:P.png")
    assert media.data
    assert h.sleeps == [5.0, 5.0]  # Retry-After said 1; the floor is 5
    assert h.count("imageinfo", "maxlag") == 2

    fake.on("/w/api.php", lagged)
    h2 = await make(fake.wiki(), maxlag_min_wait=0.25)  # the floor is injectable
    await h2.client.fetch(fake.wiki(), "File:P.png")
    assert h2.sleeps == [1.0]


async def test_persistent_maxlag_gives_up_retriably(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    async def lagged(_: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "maxlag", "info": "lagged"}}, headers={"Retry-After": "5"})

    fake.on("/w/api.php", *[lagged] * 10)
    h = await make(fake.wiki(), replace(FAST, retries=2))
    with pytest.raises(FetchError) as ei:
        await h.client.fetch(fake.wiki(), "File:P.png")
    assert (ei.value.retriable, ei.value.reason) == (True, "maxlag")
    assert len(fake.requests_to("/w/api.php")) == 3


async def test_other_api_errors(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    async def bad(_: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "badvalue", "info": "Unrecognized value"}})

    async def readonly(_: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "readonly", "info": "The wiki is in read-only mode"}})

    async def not_json(_: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", content_type="text/html")

    fake.on("/w/api.php", bad, readonly, not_json)
    h = await make(fake.wiki())
    expected = [("api-badvalue", False), ("api-readonly", True), ("bad-response", True)]
    for reason, retriable in expected:
        with pytest.raises(FetchError) as ei:
            await h.client.fetch(fake.wiki(), "File:P.png")
        assert (ei.value.reason, ei.value.retriable) == (reason, retriable)
    assert h.count("imageinfo", "error") == 3


async def test_api_requests_to_one_wiki_are_serial_and_batched(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    for i in range(6):
        fake.add(f"F{i}.png", FakeFile(png(400, 300, seed=i), 400, 300))
    active = 0
    peak = 0
    orig = fake.api

    async def counting(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0)  # let other requests in, if the client allowed them
            return orig(request)
        finally:
            active -= 1

    fake.on("/w/api.php", *[counting] * 6)
    h = await make(fake.wiki())
    results = await asyncio.gather(*(h.client.fetch(fake.wiki(), f"File:F{i}.png") for i in range(6)))
    assert len(results) == 6 and peak == 1
    assert [r.info.title for r in results] == [f"File:F{i}.png" for i in range(6)]
    # Six concurrent fetches share one imageinfo request (titles=A|B|...), as Wikimedia asks.
    assert fake.batches == [[f"File:F{i}.png" for i in range(6)]]


async def test_batch_maps_normalized_titles_and_mixed_results(fake: FakeWiki,
                                                             make: Callable[..., Awaitable[Harness]]) -> None:
    fake.add("Present file.png", FakeFile(png(400, 300), 400, 300))
    h = await make(fake.wiki())
    ok, gone = await asyncio.gather(h.client.imageinfo(fake.wiki(), "File:Present_file.png", 330),
                                    h.client.imageinfo(fake.wiki(), "File:Absent.png", 330), return_exceptions=True)
    assert isinstance(ok, FileInfo) and ok.title == "File:Present file.png" and ok.thumb_width == 330
    assert fake.batches == [["File:Present_file.png", "File:Absent.png"]]
    assert isinstance(gone, FileGone)
    with pytest.raises(FetchError, match="invalid title"):
        await h.client.fetch(fake.wiki(), "File:A.png|File:Present file.png")


def apng(frames: int, size: tuple[int, int] = (800, 600)) -> bytes:
    imgs = [Image.open(io.BytesIO(png(*size, seed=40 + i))).convert("RGB") for i in range(frames)]
    out = io.BytesIO()
    imgs[0].save(out, format="PNG", save_all=True, append_images=imgs[1:], duration=1000)
    return out.getvalue()


async def test_apng_original_is_fetched_plain_png_keeps_its_thumbnail(
        fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    """Only a PNG whose metadata says frameCount > 1 gets its original fetched (to sample its frames)."""
    anim = fake.add("Anim.png", FakeFile(apng(3), 800, 600, frame_count=3))
    fake.add("Still.png", FakeFile(png(800, 600), 800, 600))
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:Anim.png")
    assert media.data == anim.data and media.data_source == "original"
    still = await h.client.fetch(fake.wiki(), "File:Still.png")
    assert still.data_source == "thumbnail"
    assert fake.metadata_asked == ["File:Anim.png", "File:Still.png"]
    assert [r.path for r in fake.requests_to("/images/")] == ["/images/Anim.png"]
    # JPEGs (and PNGs above media.animation.original_max_bytes) never cost a metadata request.
    fake.add("Photo.jpg", FakeFile(png(800, 600), 800, 600, mime="image/jpeg"))
    await h.client.fetch(fake.wiki(), "File:Photo.jpg")
    assert fake.metadata_asked == ["File:Anim.png", "File:Still.png"]


def test_png_frame_count_reads_both_layouts() -> None:
    page = {"imageinfo": [{"metadata": [{"name": "frameCount", "value": 5}]}]}
    assert png_frame_count({"query": {"pages": [page]}}) == 5
    assert png_frame_count({"query": {"pages": {"7": {"imageinfo": [{"metadata": {"frameCount": 2}}]}}}}) == 2
    assert png_frame_count({"query": {"pages": [{"imageinfo": [{"metadata": None}]}]}}) == 0
    assert png_frame_count({"error": "x"}) == 0


async def test_tiff_original_is_fetched_within_its_cap(fake: FakeWiki, make: Callable[..., Awaitable[Harness]]) -> None:
    """A TIFF's original (its pages are decoded by the service: a wiki without PagedTiffHandler renders page 1
    only) up to media.documents.tiff_original_max_bytes; above it, or with the cap at 0, the wiki's thumbnail."""
    from service.config import MediaSection
    from service.config.media import DocumentSection

    img = Image.open(io.BytesIO(png(800, 600))).convert("RGB")
    out = io.BytesIO()
    img.save(out, "TIFF", save_all=True, append_images=[img], compression="tiff_deflate")
    scan = fake.add("Scan.tiff", FakeFile(out.getvalue(), 800, 600, mime="image/tiff"))
    h = await make(fake.wiki())
    media = await h.client.fetch(fake.wiki(), "File:Scan.tiff")
    assert media.data == scan.data and media.data_source == "original" and media.kind == "image"
    for cap in (len(scan.data) - 1, 0):
        small = await make(fake.wiki(), media=MediaSection(documents=DocumentSection(tiff_original_max_bytes=cap)))
        assert (await small.client.fetch(fake.wiki(), "File:Scan.tiff")).data_source == "thumbnail"
    assert [r.path for r in fake.requests_to("/images/")] == ["/images/Scan.tiff"]
