"""Wikimedia EventStreams (SSE) source.

One connection at a time, read in a thread that feeds the pipeline's bounded queue and blocks while
it is full.  The HTTP stack is ``requests`` (urllib3); the bytes go through the incremental parser
in :mod:`service.sources.sse`, so reading costs time linear in the bytes received and an event over
:data:`service.events.MAX_EVENT_BYTES` is discarded as it arrives (and handed on as a ``too-large``
malformed event, so it is counted and the checkpoint moves past it).  The SSE ``id`` (a JSON array
with the position of every topic-partition) is the checkpoint: it is stored verbatim once the
watermark passes an event and sent back as ``Last-Event-ID`` on every reconnect.  ``since`` starts a
historical read when there is no checkpoint (or when the command line overrides it).

The connection goes through the proxy :class:`service.net.Proxies` names for the stream URL (``network.proxy``,
else HTTPS_PROXY / NO_PROXY), never through requests' own reading of the environment, so every HTTP client
of the service follows the same setting.  Failures are logged and shown on ``/healthz/pipeline`` as one line
(:func:`service.net.describe`): "connection failed" while no connection was made, "disconnected" only after one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests

from service.backoff import exponential_backoff, parse_retry_after
from service.config import EventStreamsSection
from service.errors import PermanentSourceError
from service.events import MAX_EVENT_BYTES
from service.metrics import Metrics
from service.models import RawEvent
from service.net import Proxies, Proxy, describe, describe_status
from service.sources.base import SourceBase, run_in_thread, until_done_or_stopped
from service.sources.sse import SseParser
from service.store.base import CheckpointStore

log = logging.getLogger(__name__)

# A connection that lasted this long before the server closed it was cut normally (the CDN's
# 15-minute limit): reconnect at once.  Shorter ones back off.
_HEALTHY_CONNECTION_SECONDS = 10.0
# Largest read handed to the parser: a transfer chunk bigger than this is read in pieces, so a
# hostile upstream's giant chunk is never held whole.
_READ_BYTES = 65536


class _Disconnected(Exception):
    """The stream ended or failed while reading."""


class _HttpStatus(Exception):
    """The server answered the stream request with an error status."""

    def __init__(self, status: int, retry_after: str | None, body: str, *, summary: str = "") -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.summary = summary or f"HTTP {status}: {body}"


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The response body as it arrives, in pieces of at most ``_READ_BYTES``.

    Chunked transfer-encoding is decoded by urllib3 (each transfer chunk is handed over as soon as
    it is in); anything else is read with ``read1``, which returns whatever the socket has.  Every
    way the body can end raises :class:`_Disconnected`.
    """
    raw = resp.raw
    try:
        if getattr(raw, "chunked", False):
            yield from raw.read_chunked(amt=_READ_BYTES, decode_content=True)
        else:
            while chunk := raw.read1(_READ_BYTES, decode_content=True):
                yield chunk
    except Exception as exc:
        raise _Disconnected(f"{type(exc).__name__}: {exc}") from exc
    raise _Disconnected("server closed the stream")


def resume_id(last_id: str) -> str:
    """The ``Last-Event-ID`` to send for a stored SSE id.

    EventStreams writes ``message time + 1 ms`` into ids and resumes at the first message at or after
    that time, so events sharing the last millisecond would be skipped: rewind each timestamp by 1 ms
    (the repeats are dropped by the ``meta.id`` de-duplication).  A partition never read yet carries
    ``offset: -1`` ("latest"), which would skip whatever it received while we were away: start it at
    the newest timestamp we know instead.  Anything unparseable is sent verbatim.
    """
    try:
        entries = json.loads(last_id)
    except ValueError:
        return last_id
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return last_id
    stamps = [e["timestamp"] for e in entries
              if isinstance(e.get("timestamp"), int) and not isinstance(e.get("offset"), int)]
    newest = max(stamps) if stamps else None
    out = []
    for e in entries:
        e = dict(e)
        if isinstance(e.get("offset"), int) and e["offset"] >= 0:
            pass  # offsets are exact
        elif isinstance(e.get("timestamp"), int):
            e.pop("offset", None)
            e["timestamp"] = e["timestamp"] - 1
        elif e.get("offset") == -1 and newest is not None:
            e.pop("offset")
            e["timestamp"] = newest - 1
        out.append(e)
    return json.dumps(out, separators=(",", ":"))


def _with_since(url: str, since: datetime) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode({"since": since.isoformat()})
    return urlunsplit(parts._replace(query=query))


class EventStreamsSource(SourceBase):
    name = "eventstreams"

    def __init__(
        self,
        cfg: EventStreamsSection,
        *,
        user_agent: str,
        checkpoints: CheckpointStore,
        metrics: Metrics,
        since: datetime | None = None,
        checkpoint_name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        proxies: Proxies | None = None,
    ) -> None:
        self.cfg = cfg
        self._proxies = proxies if proxies is not None else Proxies.from_environment()
        self.user_agent = user_agent
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.since_override = since
        self.checkpoint_name = checkpoint_name or cfg.checkpoint_name
        self._sleep = sleep
        self._connected = threading.Event()
        self._response: requests.Response | None = None
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def commit(self, position: Any) -> None:
        await self.checkpoints.set_checkpoint(self.checkpoint_name, position)

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        start_id: str | None = None
        since = self.since_override
        if since is None:
            stored = await self.checkpoints.get_checkpoint(self.checkpoint_name)
            if isinstance(stored, str):
                start_id = stored
            elif self.cfg.since:
                from service.config import parse_time

                since = parse_time(self.cfg.since)
        log.info(
            "eventstreams source starting",
            extra={"url": self.cfg.url, "resume": bool(start_id), "since": since.isoformat() if since else None},
        )
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        finished = run_in_thread(lambda: self._read_loop(loop, out, halt, start_id, since),
                                 name="eventstreams-reader")
        try:
            await until_done_or_stopped(finished, stop)
        finally:
            halt.set()
            self._interrupt()
            self._connected.clear()
            self.metrics.source_connected.set(0)
        if finished.done():
            finished.result()  # raises a fatal SourceError from the reader
        else:
            # The reader notices ``halt`` within one read timeout; it is a daemon thread, so a
            # stuck socket never holds up shutdown.
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(finished), timeout=2.0)

    def _interrupt(self) -> None:
        """Wake a reader blocked in a socket read, from another thread, without taking its locks.

        Closing the response here would wait for the reader's buffered-reader lock (up to a whole
        read timeout, with the event loop blocked); shutting the socket down makes the read return.
        """
        response = self._response
        if response is None:
            return
        raw = response.raw
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
        if sock is None:
            fp = getattr(getattr(raw, "_fp", None), "fp", None)
            sock = getattr(getattr(fp, "raw", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _close_response(self) -> None:
        """Close the current response; only ever called from the reader thread."""
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()

    # ------------------------------------------------------------------ reader thread

    def _put(self, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[RawEvent], item: RawEvent,
             halt: threading.Event) -> bool:
        """Block until the queue takes the item (backpressure); False if asked to stop meanwhile."""
        fut = asyncio.run_coroutine_threadsafe(out.put(item), loop)
        while True:
            try:
                fut.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if halt.is_set():
                    fut.cancel()
                    return False

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        rc = self.cfg.reconnect
        delay = exponential_backoff(min(attempt, 16), initial=rc.initial_delay, maximum=rc.max_delay,
                                    jitter=(0.5, 1.0))
        if retry_after is not None:
            delay = max(delay, min(retry_after, rc.max_delay * 10))
        return delay

    def _wait(self, halt: threading.Event, seconds: float) -> None:
        if self._sleep is time.sleep:
            halt.wait(seconds)
        else:
            self._sleep(seconds)

    def _connect(self, session: requests.Session, url: str, last_id: str | None,
                 proxy: Proxy | None) -> requests.Response:
        """Open the stream; :class:`_HttpStatus` (with the start of the body's text) for an error status."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache",
                   "Accept-Encoding": "identity"}  # no compression: nothing to inflate
        if last_id:
            headers["Last-Event-ID"] = resume_id(last_id)
        # Redirects are never followed: the stream comes only from the configured scheme, host and port.
        scheme = urlsplit(url).scheme
        response = session.get(url, stream=True, headers=headers, allow_redirects=False,
                               proxies={scheme: proxy.url} if proxy is not None else {},
                               timeout=(self.cfg.connect_timeout, self.cfg.read_timeout))
        if response.status_code < 300:
            return response
        if response.status_code < 400:
            response.close()
            location = response.headers.get("Location", "(no Location)")[:200]
            detail = (f"redirect to {location!r} not followed; set source.eventstreams.url to the "
                      "stream's final URL")
            raise _HttpStatus(response.status_code, None, detail,
                              summary=describe_status(response.status_code, url, hint=detail).summary)
        try:
            body = response.raw.read(4096, decode_content=True)  # only its first line of text is kept
        except Exception as exc:  # the body is only for the message
            body = f"(body unreadable: {type(exc).__name__})".encode()
        finally:
            response.close()
        text = body.decode("utf-8", "replace")
        raise _HttpStatus(response.status_code, response.headers.get("Retry-After"), text,
                          summary=describe_status(response.status_code, url, text).summary)

    @staticmethod
    def _problem(exc: BaseException, url: str, proxy: Proxy | None) -> str:
        """One line for people: what failed, where, and what to check."""
        if isinstance(exc, _Disconnected) and exc.__cause__ is None:
            return f"{urlsplit(url).hostname} closed the stream"
        return describe(exc, url, proxy=proxy).summary

    def _too_large(self, position: str | None, size: int) -> RawEvent:
        """An event discarded for its size: handed on so it is counted and the checkpoint passes it."""
        self.metrics.events_received.labels(self.name).inc()
        log.warning("eventstreams event over the size limit discarded while reading",
                    extra={"position": position, "bytes": size, "limit": MAX_EVENT_BYTES})
        return RawEvent(data=b"", position=position, label=f"id={position}", problem="too-large")

    def _read_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        out: asyncio.Queue[RawEvent],
        halt: threading.Event,
        last_id: str | None,
        since: datetime | None,
    ) -> None:
        session = requests.Session()
        session.trust_env = False  # the proxy comes from self._proxies (which reads the environment itself)
        session.headers["User-Agent"] = self.user_agent
        attempt = 0
        try:
            while not halt.is_set():
                url = self.cfg.url if last_id or since is None else _with_since(self.cfg.url, since)
                started = time.monotonic()
                retry_after: float | None = None
                cause = "network"
                proxy = self._proxies.for_url(url)
                connected = False
                try:
                    response = self._response = self._connect(session, url, last_id, proxy)
                    connected = True
                    self._connected.set()
                    self.metrics.source_connected.set(1)
                    self.last_error = None
                    log.info("eventstreams connected", extra={"url": url, "resume": bool(last_id)})
                    parser = SseParser(MAX_EVENT_BYTES)
                    for chunk in _chunks(response):
                        if halt.is_set():
                            return
                        for msg in parser.feed(chunk):
                            if msg.too_large:
                                item = self._too_large(msg.id or last_id, msg.size)
                                if msg.id:
                                    last_id = msg.id
                            elif msg.event == "error":
                                log.error("eventstreams sent an error event",
                                          extra={"data": msg.data[:500].decode("utf-8", "replace")})
                                continue
                            elif msg.event != "message" or not msg.data:
                                continue
                            else:
                                if msg.id:
                                    last_id = msg.id
                                self.metrics.events_received.labels(self.name).inc()
                                item = RawEvent(data=msg.data, position=last_id, label=f"id={last_id}")
                            if not self._put(loop, out, item, halt):
                                return
                            attempt = 0
                except _HttpStatus as exc:
                    status = exc.status
                    if status == 429 or status >= 500 or status == 408:
                        cause = f"http-{status}"
                        retry_after = parse_retry_after(exc.retry_after)
                        self.last_error = exc.summary
                    else:
                        raise PermanentSourceError(
                            f"EventStreams refused the stream: {exc.summary} (not retrying; check "
                            "source.eventstreams.url and service.user_agent)",
                        ) from exc
                except (_Disconnected, requests.RequestException, OSError) as exc:
                    self.last_error = self._problem(exc, url, proxy)
                    if time.monotonic() - started >= _HEALTHY_CONNECTION_SECONDS and isinstance(
                        exc, _Disconnected
                    ):
                        cause = "cut-off"
                        attempt = 0
                finally:
                    self._connected.clear()
                    self.metrics.source_connected.set(0)
                    self._close_response()
                    self._response = None
                if halt.is_set():
                    return
                self.metrics.source_reconnects.labels(cause).inc()
                delay = 0.0 if cause == "cut-off" else self._backoff(attempt, retry_after)
                attempt += 1
                log.warning(
                    "eventstreams disconnected; reconnecting" if connected
                    else "eventstreams connection failed; retrying",
                    extra={"cause": cause, "error": self.last_error, "delay": round(delay, 2)},
                )
                if delay:
                    self._wait(halt, delay)
        finally:
            session.close()
