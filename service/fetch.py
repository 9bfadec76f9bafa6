"""Fetch file details and bytes from a wiki: ``prop=imageinfo``, then the thumbnail (and the original).

Every request goes through the one MediaWiki client (:mod:`service.mediawiki.client`), which enforces
the safety rules: every URL and redirect hop on the wiki's allowlist (scheme, host and port: see
:func:`~service.mediawiki.allowlist.origin_allowed`), downloads
aborted beyond ``fetch.max_bytes``, each attempt bounded by ``fetch.timeout``, transient failures
retried with backoff honouring ``Retry-After``, API requests serial per wiki and carrying ``maxlag``.
This module turns the client's errors into the fetch outcomes (FileGone, Unscannable, FetchError).

Thumbnail widths are only ever the wiki's standard steps (see :func:`choose_width`); thumbnail URLs
are taken from the API, never constructed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from prometheus_client import Counter
from yarl import URL

from service.backoff import parse_retry_after as parse_retry_after  # re-exported for callers and tests
from service.config import STANDARD_THUMB_WIDTHS, FetchSection, MediaSection, WikiSection
from service.errors import (
    FetchError,
    FileGone,
    HostNotAllowed,
    TransientFetchError,
    Unscannable,
    WikiApiError,
    WikiResponseTooLarge,
)
from service.media.download import HashingSink
from service.mediawiki.allowlist import origin_allowed as origin_allowed  # re-exported: `photodna check` uses it
from service.mediawiki.client import MediaWikiClient, RetryPolicy, Sleep
from service.mediawiki.transport import AiohttpTransport, Transport
from service.metrics import Metrics
from service.models import KIND_AUDIO, KIND_DOCUMENT, KIND_IMAGE, KIND_VIDEO, FetchedMedia, FileInfo
from service.net import Proxies

log = logging.getLogger(__name__)

MAX_THUMB_WIDTH = 3840
IMAGE_MEDIATYPES = frozenset({"BITMAP", "DRAWING"})  # the original may be decoded when there is no thumbnail
MAXLAG_MIN_WAIT = 5.0  # Wikimedia: on a maxlag error wait Retry-After, at least 5 seconds
_API_MAX_BYTES = 2_000_000  # one batch of imageinfo is a few hundred bytes per title
_MAX_BACKOFF = 60.0
# Multi-page formats whose further pages the wiki renders (``iiurlparam=page<N>-<width>px``).
DOCUMENT_MIMES = frozenset({"application/pdf", "image/vnd.djvu", "image/x-djvu", "image/tiff"})
# Formats that may be animated: the original (within media.animation.original_max_bytes) is decoded, all frames.
# Not image/png: MediaWiki labels APNG image/png too, and fetching every PNG's original instead of its thumbnail
# would cost too much; a PNG's original is fetched only when the wiki's metadata says it is animated.
ANIMATED_MIMES = frozenset({"image/gif", "image/apng", "image/webp"})
PNG_MIME = "image/png"
# A TIFF's original (within media.documents.tiff_original_max_bytes) is decoded, every page: a wiki without
# PagedTiffHandler renders page 1 only (and MediaWiki 1.39 with ImageMagick fails on a multi-page TIFF).
TIFF_MIME = "image/tiff"
# Containers that may carry video although the wiki labels them audio (it does so when it finds no video
# track, e.g. in a damaged file): the video decoder looks at them and says.
CONTAINER_MIMES = frozenset({"application/ogg", "audio/ogg", "audio/webm"})
# The wiki answers a file it cannot render (a video without TimedMediaHandler) with a generic icon.
FILE_ICON_PATH = "/file-type-icons/"


def media_kind(info: FileInfo) -> str:
    """video, audio, document or image, from imageinfo's mediatype and MIME type."""
    mediatype, mime = info.mediatype.upper(), info.mime.lower()
    if mediatype == "VIDEO" or mime.startswith("video/") or mime in CONTAINER_MIMES:
        return KIND_VIDEO  # the decoder finds out an Ogg or WebM with audio only and judges it as audio
    if mediatype == "AUDIO" or mime.startswith("audio/"):
        return KIND_AUDIO
    if mime in DOCUMENT_MIMES and info.pagecount > 1:
        return KIND_DOCUMENT
    return KIND_IMAGE


def is_file_icon(url: str | None) -> bool:
    """True for the generic file-type icon MediaWiki gives as the "thumbnail" of what it cannot render."""
    if url is None:
        return False
    if FILE_ICON_PATH in url:
        return True
    # The last path segment, decoded, names the icon: without "fileicon" or an escape in it, it cannot.
    return ("fileicon" in url or "%" in url) and URL(url).name.startswith("fileicon")


def fetch_error(exc: WikiApiError) -> FetchError:
    """The fetch outcome for a client error: the same reason, retriable when the cause is."""
    if isinstance(exc, FetchError):  # HostNotAllowed: a policy refusal, kept as it is
        return exc
    reason = "bad-response" if isinstance(exc, WikiResponseTooLarge) else exc.reason
    cls = TransientFetchError if exc.retriable else FetchError
    return cls(str(exc), reason=reason)


# --------------------------------------------------------------------------- pure helpers


def thumb_size(width: int, height: int, requested: int) -> tuple[int, int]:
    """Size of the thumbnail the wiki renders for ``iiurlwidth=requested``: it never upscales."""
    if requested >= width:
        return width, height
    return requested, max(1, int(height * requested / width + 0.5))  # PHP round(): half away from zero


def choose_width(width: int, height: int, configured: int, min_side: int) -> int:
    """The standard thumbnail width to ask for.

    ``configured`` unless its thumbnail's shorter side would be below ``min_side`` (panoramas); then the
    smallest larger standard width (up to 3840) whose thumbnail keeps both sides >= ``min_side``.  When
    none does, the width that gets closest: the first one that already yields the original (the wiki
    never upscales), else 3840.  Unknown dimensions (audio) keep ``configured``.
    """
    if width <= 0 or height <= 0 or configured >= width:
        return configured
    if min(thumb_size(width, height, configured)) >= min_side:
        return configured
    best = configured
    for w in STANDARD_THUMB_WIDTHS:
        if w <= configured or w > MAX_THUMB_WIDTH:
            continue
        best = w
        if min(thumb_size(width, height, w)) >= min_side or w >= width:
            return w
    return best


# --------------------------------------------------------------------------- client


class WikiClient:
    """Reads file details and media bytes from the configured wikis."""

    def __init__(
        self,
        fetch: FetchSection,
        wikis: tuple[WikiSection, ...],
        user_agent: str,
        metrics: Metrics,
        session: aiohttp.ClientSession | None = None,
        *,
        transport: Transport | None = None,
        proxies: Proxies | None = None,
        maxlag_min_wait: float = MAXLAG_MIN_WAIT,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        media: MediaSection | None = None,
    ) -> None:
        if not user_agent.strip():
            raise ValueError("a descriptive User-Agent is required")
        self._fetch = fetch
        self._media = media or MediaSection()
        self._wikis = {w.id: w for w in wikis}
        self._user_agent = user_agent
        self._metrics = metrics
        self._ok_counters: dict[str, Counter] = {}  # fetch_requests{kind, "ok"}: looked up once per kind
        self._transport: Transport = transport or AiohttpTransport(user_agent=user_agent, timeout=fetch.timeout,
                                                                   session=session, proxies=proxies)
        self._policy = RetryPolicy(retries=fetch.retries, initial_delay=fetch.retry_delay, max_delay=_MAX_BACKOFF,
                                   maxlag_retries=fetch.retries, maxlag_min_wait=maxlag_min_wait,
                                   max_redirects=fetch.max_redirects)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clients: dict[WikiSection, MediaWikiClient] = {}
        self._pending: dict[str, list[tuple[str, int, asyncio.Future[FileInfo]]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle

    async def start(self) -> None:
        """Nothing to open: the transport connects on first use.  Kept for the ``async with`` protocol."""

    async def aclose(self) -> None:
        for task in self._flushers.values():
            task.cancel()
        for task in self._flushers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flushers.clear()
        self._clients.clear()
        await self._transport.aclose()

    async def __aenter__(self) -> WikiClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def client(self, wiki: WikiSection) -> MediaWikiClient:
        """The MediaWiki client for ``wiki`` (all of them share this fetcher's transport)."""
        client = self._clients.get(wiki)
        if client is None:
            counter = self._metrics.fetch_requests

            def observe(what: str, result: str) -> None:
                if result in ("retry", "maxlag"):  # results of whole requests are counted by _counted
                    counter.labels(what, result).inc()

            client = self._clients[wiki] = MediaWikiClient(
                wiki, user_agent=self._user_agent, transport=self._transport, timeout=self._fetch.timeout,
                maxlag=self._fetch.maxlag, policy=self._policy, observe=observe, sleep=self._sleep, rng=self._rng)
        return client

    def wiki(self, wiki_id: str) -> WikiSection | None:
        return self._wikis.get(wiki_id)

    # -- the main operation

    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        """File details plus the bytes to scan.

        Raises FileGone (deleted or never existed), Unscannable (no thumbnail, too large),
        HostNotAllowed, or FetchError (``retriable`` says whether trying later may help).
        """
        cfg = self._fetch
        info = await self.imageinfo(wiki, title, cfg.thumb_width)
        if info.thumb_url and info.thumb_width and info.thumb_height \
                and min(info.thumb_width, info.thumb_height) < cfg.min_side:
            width = choose_width(info.width, info.height, cfg.thumb_width, cfg.min_side)
            if width != cfg.thumb_width:
                log.debug("%s %r: %dx%d, asking for a %dpx thumbnail", wiki.id, title, info.width,
                          info.height, width)
                info = await self.imageinfo(wiki, title, width)
        if expected_sha1 and info.sha1.lower() != expected_sha1.lower():
            log.warning("%s %r: imageinfo SHA-1 %s differs from the event's %s (a newer version may have "
                        "been uploaded); scanning the current version",
                        wiki.id, title, info.sha1, expected_sha1)
        kind = media_kind(info)
        if kind in (KIND_VIDEO, KIND_AUDIO):
            return await self.stream_original(wiki, info, kind)
        if is_file_icon(info.thumb_url):  # never hash the generic icon as if it were the file
            raise Unscannable("no-thumbnail", f"{info.mediatype} {info.mime}: the wiki shows a file-type icon")

        original: bytes | None = None
        animation_cap = self._media.animation.original_max_bytes
        may_animate = 0 < info.size <= min(animation_cap, cfg.max_bytes)
        tiff_cap = min(self._media.documents.tiff_original_max_bytes, cfg.max_bytes)
        if info.mime.lower() == TIFF_MIME and 0 < info.size <= tiff_cap:
            # It may have pages the wiki does not render: the decode pool reads them all from the original.
            original = await self._download_original(wiki, info)
            data, source = original, "original"
        elif may_animate and (info.mime.lower() in ANIMATED_MIMES
                              or (info.mime.lower() == PNG_MIME and await self.png_animated(wiki, info.title))):
            # It may be animated: the wiki's thumbnail would show the first frame only.
            original = await self._download_original(wiki, info)
            data, source = original, "original"
        elif info.thumb_url is not None and info.thumb_url != info.url:
            try:
                data = await self.download(wiki, info.thumb_url, kind="thumbnail", limit=cfg.max_bytes)
                source = "thumbnail"
            except FetchError as exc:
                # The wiki could not render a thumbnail (MediaWiki answers 400 for, e.g., a 40000 x
                # 40000 PNG).  Decide from the original, within the byte cap, rather than give up.
                refused = exc.reason.startswith("http-4") and not isinstance(exc, HostNotAllowed)
                if not refused:
                    raise  # transient, or a policy refusal (host, redirects): never work around it
                if info.mediatype.upper() not in IMAGE_MEDIATYPES or info.size > cfg.max_bytes \
                        or info.mime.lower() == "image/svg+xml":  # never render SVG here
                    raise Unscannable("thumbnail-failed", str(exc)) from exc
                log.info("%s %r: thumbnail failed (%s); scanning the original", wiki.id, title, exc)
                original = await self._download_original(wiki, info)
                data, source = original, "original"
        else:
            # No thumbnail, or the "thumbnail" is the original itself (file narrower than the width asked).
            if info.thumb_url is None and info.mediatype.upper() not in IMAGE_MEDIATYPES:
                raise Unscannable("no-thumbnail", f"{info.mediatype} {info.mime}")
            original = await self._download_original(wiki, info)
            data, source = original, "original"
        if cfg.originals and original is None:
            if info.size <= cfg.max_bytes:
                original = await self._download_original(wiki, info)
            else:
                log.info("%s %r: original is %d bytes (> %d), MD5 not computed", wiki.id, title, info.size,
                         cfg.max_bytes)
        md5 = hashlib.md5(original).hexdigest() if original is not None else None
        pages: tuple[tuple[int, bytes], ...] = ()
        if kind == KIND_DOCUMENT and source == "thumbnail":
            pages = await self._pages(wiki, info)
        return FetchedMedia(info=info, data=data, data_source=source, original_md5=md5,
                            kind=KIND_DOCUMENT if pages else KIND_IMAGE, pages=pages)

    async def _pages(self, wiki: WikiSection, info: FileInfo) -> tuple[tuple[int, bytes], ...]:
        """The wiki's thumbnails of pages 2 .. 1 + ``media.documents.extra_pages`` (never rendered here)."""
        last = min(info.pagecount, 1 + self._media.documents.extra_pages)
        width = info.thumb_width or self._fetch.thumb_width
        out: list[tuple[int, bytes]] = []
        for page in range(2, last + 1):
            params = {"action": "query", "prop": "imageinfo", "titles": info.title, "iiprop": "url",
                      "iiurlwidth": str(width), "iiurlparam": f"page{page}-{width}px"}
            try:
                answer = await self.client(wiki).api(params, what="imageinfo", limit=_API_MAX_BYTES)
            except WikiApiError as exc:
                raise fetch_error(exc) from exc
            pages = (answer.get("query") or {}).get("pages") or []
            ii = (pages[0].get("imageinfo") or [{}])[0] if pages and isinstance(pages[0], dict) else {}
            thumb = ii.get("thumburl") if isinstance(ii, dict) else None
            if not thumb or is_file_icon(str(thumb)):
                log.info("%s %r: no thumbnail for page %d", wiki.id, info.title, page)
                continue
            url = str(URL(wiki.api_url).join(URL(str(thumb), encoded=True)))
            out.append((page, await self.download(wiki, url, kind="thumbnail", limit=self._fetch.max_bytes)))
        return tuple(out)

    async def stream_original(self, wiki: WikiSection, info: FileInfo, kind: str) -> FetchedMedia:
        """Stream a video or audio original, hashing it (MD5, SHA-1) on the way; never the whole file in memory.

        A video is kept in a temporary file for the decode pool (``FetchedMedia.path``, deleted by whoever
        decodes it: :func:`service.media.download.discard`); audio (or video with ``media.video.enabled``
        off) is only hashed."""
        video = self._media.video
        decode = kind == KIND_VIDEO and video.enabled
        limit = video.max_bytes if decode else max(video.max_bytes, self._fetch.max_bytes)
        if info.size > limit:
            raise Unscannable("too-large", f"original is {info.size} bytes (> {limit})")
        sink = HashingSink(keep=decode, suffix="." + info.title.rsplit(".", 1)[-1][:8].lower())
        try:
            with self._counted("original"):
                try:
                    resp = await self.client(wiki).get(info.url, what="original", limit=limit, sink=sink,
                                                       timeout=max(self._fetch.timeout, limit / 1_000_000))
                except WikiResponseTooLarge as exc:
                    raise Unscannable("too-large", f"original exceeds {limit} bytes") from exc
                except WikiApiError as exc:
                    raise fetch_error(exc) from exc
                if resp.status in (404, 410):
                    raise FileGone(f"original {info.url}: HTTP {resp.status}")
                if not 200 <= resp.status < 300:
                    raise FetchError(f"original {info.url}: HTTP {resp.status}", reason=f"http-{resp.status}")
            self._metrics.bytes_fetched.labels("original").inc(sink.size)
            sink.close()
            sha1 = sink.sha1.hexdigest()
            if sha1 != info.sha1:
                raise TransientFetchError(f"{wiki.id} {info.title!r}: original's SHA-1 {sha1} != imageinfo "
                                          f"{info.sha1}", reason="sha1-mismatch")
        except BaseException:
            sink.delete()
            raise
        return FetchedMedia(info=info, data=b"", data_source="original", original_md5=sink.md5.hexdigest(),
                            kind=KIND_VIDEO if decode else KIND_AUDIO, path=sink.path)

    # -- imageinfo

    async def imageinfo(self, wiki: WikiSection, title: str, width: int) -> FileInfo:
        """File details for one title.

        Requests to one wiki are serial and batched (``titles=A|B|…``, up to ``fetch.batch_size``, as
        Wikimedia asks): callers that arrive while a request is in flight share the next one.
        """
        if "|" in title or not title.strip():
            raise FetchError(f"{wiki.id} {title!r}: invalid title", reason="invalid-title")
        future: asyncio.Future[FileInfo] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(wiki.id, []).append((title, width, future))
        flusher = self._flushers.get(wiki.id)
        if flusher is None or flusher.done():
            self._flushers[wiki.id] = asyncio.create_task(self._flush(wiki), name=f"imageinfo-{wiki.id}")
        with self._counted("imageinfo"):
            return await future

    async def _flush(self, wiki: WikiSection) -> None:
        """The one owner of a wiki's API traffic: sends batches until nobody is waiting."""
        pending = self._pending[wiki.id]
        while pending:
            await asyncio.sleep(0)  # let callers scheduled in the same loop turn join this batch
            width = pending[0][1]
            batch = [item for item in pending if item[1] == width][: self._fetch.batch_size]
            for item in batch:
                pending.remove(item)
            live = [item for item in batch if not item[2].done()]
            if not live:
                continue
            try:
                results = await self._imageinfo_batch(wiki, [t for t, _, _ in live], width)
            except Exception as exc:  # handed to every waiter; the loop goes on for the others
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for title, _, fut in live:
                if fut.done():
                    continue
                result = results[title]
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def _imageinfo_batch(self, wiki: WikiSection, titles: list[str],
                               width: int) -> dict[str, FileInfo | BaseException]:
        params = {
            "action": "query",
            "prop": "imageinfo",
            "titles": "|".join(dict.fromkeys(titles)),
            "iiprop": "url|sha1|size|mime|mediatype",
            "iiurlwidth": str(width),
        }
        try:
            data = await self.client(wiki).api(params, what="imageinfo", limit=_API_MAX_BYTES)
        except WikiApiError as exc:
            raise fetch_error(exc) from exc
        raw_query = data.get("query")
        query: dict[str, Any] = raw_query if isinstance(raw_query, dict) else {}
        renamed: dict[str, str] = {}
        for key in ("normalized", "converted"):
            for entry in query.get(key) or []:
                if isinstance(entry, dict) and isinstance(entry.get("from"), str):
                    renamed[entry["from"]] = str(entry.get("to"))
        pages = query.get("pages")
        if isinstance(pages, dict):  # formatversion=1 layout, tolerated
            pages = list(pages.values())
        by_title = {p.get("title"): p for p in pages or [] if isinstance(p, dict)}
        out: dict[str, FileInfo | BaseException] = {}
        for title in titles:
            page = by_title.get(renamed.get(title, title))
            if page is None and len(titles) == 1 and len(by_title) == 1:
                page = next(iter(by_title.values()))
            try:
                out[title] = self._parse_imageinfo(wiki, title, {"query": {"pages": [page] if page else []}})
            except Exception as exc:
                out[title] = exc
        return out

    async def png_animated(self, wiki: WikiSection, title: str) -> bool:
        """Whether the wiki's metadata of a PNG says it is an APNG (``frameCount`` > 1).

        Asked only for PNGs within ``media.animation.original_max_bytes`` (metadata can be large, so it is
        not part of every imageinfo request).  Any problem means "judge it by its thumbnail"."""
        params = {"action": "query", "prop": "imageinfo", "titles": title, "iiprop": "metadata"}
        try:
            data = await self.client(wiki).api(params, what="imageinfo-metadata", limit=_API_MAX_BYTES)
        except WikiApiError as exc:
            log.info("%s %r: no PNG metadata (%s); judging it by its thumbnail", wiki.id, title, exc)
            return False
        return png_frame_count(data) > 1

    def _parse_imageinfo(self, wiki: WikiSection, title: str, data: dict[str, Any]) -> FileInfo:
        pages = (data.get("query") or {}).get("pages")
        if isinstance(pages, dict):  # formatversion=1 layout, tolerated
            pages = list(pages.values())
        if not isinstance(pages, list) or not pages or not isinstance(pages[0], dict):
            raise TransientFetchError(f"{wiki.id} {title!r}: no page in the API answer", reason="bad-response")
        page = pages[0]
        if page.get("invalid"):
            raise FetchError(f"{wiki.id} {title!r}: invalid title ({page.get('invalidreason', '')})",
                             reason="invalid-title")
        infos = page.get("imageinfo")
        if page.get("missing") or page.get("filemissing") or not infos:
            raise FileGone(f"{wiki.id} {title!r}: no such file")
        ii = infos[0]
        if not isinstance(ii, dict) or ii.get("filemissing") or ii.get("missing"):
            raise FileGone(f"{wiki.id} {title!r}: file missing")
        base = URL(wiki.api_url)
        try:
            url = str(base.join(URL(ii["url"], encoded=True)))
            thumb = ii.get("thumburl")
            if ii.get("thumberror"):
                log.info("%s %r: the wiki could not render a thumbnail: %s", wiki.id, title, ii["thumberror"])
            return FileInfo(
                title=str(page.get("title") or title),
                url=url,
                description_url=str(ii.get("descriptionurl") or ""),
                sha1=str(ii["sha1"]).lower(),
                size=int(ii["size"]),
                width=int(ii.get("width") or 0),
                height=int(ii.get("height") or 0),
                mime=str(ii.get("mime") or ""),
                mediatype=str(ii.get("mediatype") or ""),
                thumb_url=str(base.join(URL(thumb, encoded=True))) if thumb else None,
                thumb_width=int(ii["thumbwidth"]) if thumb and ii.get("thumbwidth") else None,
                thumb_height=int(ii["thumbheight"]) if thumb and ii.get("thumbheight") else None,
                pagecount=int(ii.get("pagecount") or 1),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientFetchError(f"{wiki.id} {title!r}: incomplete imageinfo ({exc!r})",
                                      reason="bad-response") from exc

    # -- media

    async def _download_original(self, wiki: WikiSection, info: FileInfo) -> bytes:
        if info.size > self._fetch.max_bytes:
            raise Unscannable("too-large", f"original is {info.size} bytes (> {self._fetch.max_bytes})")
        data = await self.download(wiki, info.url, kind="original", limit=self._fetch.max_bytes)
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 != info.sha1:
            log.warning("%s %r: downloaded original has SHA-1 %s, imageinfo said %s",
                        wiki.id, info.title, sha1, info.sha1)
            raise TransientFetchError(f"{wiki.id} {info.title!r}: original's SHA-1 {sha1} != imageinfo {info.sha1}",
                                      reason="sha1-mismatch")
        return data

    async def download(self, wiki: WikiSection, url: str, *, kind: str, limit: int) -> bytes:
        """The bytes at ``url`` (at most ``limit``), fetched from ``wiki``'s allowed hosts with retries.

        ``kind`` labels metrics and messages (``"thumbnail"``, ``"original"``).  Raises FileGone (HTTP
        404/410), Unscannable (larger than ``limit``), HostNotAllowed, or FetchError.
        """
        with self._counted(kind):
            try:
                resp = await self.client(wiki).get(url, what=kind, limit=limit)
            except WikiResponseTooLarge as exc:
                raise Unscannable("too-large", f"{kind} exceeds {limit} bytes") from exc
            except WikiApiError as exc:
                raise fetch_error(exc) from exc
            if resp.status == 404 or resp.status == 410:
                raise FileGone(f"{kind} {url}: HTTP {resp.status}")
            if not 200 <= resp.status < 300:
                raise FetchError(f"{kind} {url}: HTTP {resp.status}", reason=f"http-{resp.status}")
            self._metrics.bytes_fetched.labels(kind).inc(len(resp.body))
            return resp.body

    @contextmanager
    def _counted(self, kind: str) -> Iterator[None]:
        """Count one logical request by its result: ok, gone, error, host-not-allowed, too-large, ..."""
        try:
            yield
        except FileGone:
            self._metrics.fetch_requests.labels(kind, "gone").inc()
            raise
        except HostNotAllowed:
            self._metrics.fetch_requests.labels(kind, "host-not-allowed").inc()
            raise
        except Unscannable as exc:
            self._metrics.fetch_requests.labels(kind, exc.reason).inc()
            raise
        except FetchError:
            self._metrics.fetch_requests.labels(kind, "error").inc()
            raise
        else:
            counter = self._ok_counters.get(kind)
            if counter is None:
                counter = self._ok_counters[kind] = self._metrics.fetch_requests.labels(kind, "ok")
            counter.inc()


def png_frame_count(data: Any) -> int:
    """``frameCount`` from an ``iiprop=metadata`` answer (MediaWiki's PNGHandler; 0 for a still PNG), or 0."""
    try:
        pages = data["query"]["pages"]
        page = next(iter(pages.values())) if isinstance(pages, dict) else pages[0]
        metadata = page["imageinfo"][0].get("metadata") or []
        if isinstance(metadata, dict):
            return int(metadata.get("frameCount") or 0)
        for item in metadata:
            if isinstance(item, dict) and item.get("name") == "frameCount":
                return int(item.get("value") or 0)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, StopIteration):
        pass
    return 0
