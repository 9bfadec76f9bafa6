"""A stand-in for the PhotoDNA Cloud Service Match API, for tests and benchmarks.

Same contract as the real service (:mod:`service.matchers.photodna_api`): ``POST
/photodna/v1.0/Match[?enhance=true|false]`` with ``Ocp-Apim-Subscription-Key`` and the image's
``Content-Type``; answers in the ``Status`` envelope; errors outside it with the Azure API-management
body (``{"statusCode": 401, "message": "Access denied ..."}``).

IsMatch is decided by PDQ distance (all eight dihedral variants of the submitted image, threshold 31)
to a corpus of "known" images given with :meth:`PhotoDnaServer.add_known`, so resized, recompressed and
mirrored copies match as they would in production.  It is stricter than the real service in one way:
a ``Content-Type`` that does not describe the bytes sent is refused with 3002.

It can enforce a rate limit (sliding 1 s window, HTTP 429 with ``Retry-After``), inject latency and,
at configured rates, 429 (with and without ``Retry-After``), 5xx, malformed JSON, 3004 and 3208; and
it can be scripted to give exact answers to the next requests.  Every request is recorded with its
arrival time, so tests check the client's rate from the server's side.

In tests it runs in its own thread and event loop (so its clock does not depend on the service's
loop); as a script it serves the benchmark and reports its figures on ``GET /_standin/stats``::

    python tests/infra/photodna_server.py --port 8790 --latency 0.1 --rate-limit 10
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

PATH = "/photodna/v1.0/Match"
STATS_PATH = "/_standin/stats"
DENIED_INVALID = ("Access denied due to invalid subscription key. Make sure to provide a valid key for an "
                  "active subscription.")
DENIED_MISSING = ("Access denied due to missing subscription key. Make sure to include subscription key when "
                  "making requests to an API.")
CONTENT_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/bmp": "BMP",
                 "image/tiff": "TIFF"}
DESCRIPTIONS = {
    3000: "OK", 3002: "Invalid or missing request parameter(s)", 3004: "Unknown scenario or unhandled error",
    3206: "The given file could not be verified as an image",
    3208: "Image size in pixels is not within allowed range", 3209: "Request Size Exceeded",
}
MAX_BYTES = 4_000_000


def sniff(data: bytes) -> str | None:
    """The image type the bytes are, by their magic number."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


def pdq_hashes(data: bytes) -> tuple[bytes, ...]:
    """PDQ of all eight dihedral variants, computed the service's way (its decoder, its hashing)."""
    from service.config import ThumbnailSection
    from service.media.thumbnail import prepare

    media = prepare(data, "0" * 40, ThumbnailSection(make_jpeg=False))
    assert media.pdq is not None
    return media.pdq.hashes


def _hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


@dataclass(frozen=True)
class Known:
    pdq: bytes
    source: str
    violations: tuple[str, ...]
    match_id: str


@dataclass
class Faults:
    """Injected trouble; each ``p_*`` is the share of requests that get it (checked in this order)."""

    latency: float = 0.0
    p_429: float = 0.0  # 429 without Retry-After
    p_429_retry_after: float = 0.0  # 429 with Retry-After: ``retry_after``
    retry_after: float = 1.0
    p_5xx: float = 0.0
    p_malformed: float = 0.0
    p_3004: float = 0.0
    p_3208: float = 0.0

    @property
    def total(self) -> float:
        return self.p_429 + self.p_429_retry_after + self.p_5xx + self.p_malformed + self.p_3004 + self.p_3208


@dataclass(frozen=True)
class Record:
    t: float  # arrival, time.monotonic()
    status: int
    code: int | None
    kind: str  # match, no-match, rate-limited, injected-429, 5xx, malformed, 3004, ... , unauthorized
    content_type: str
    size: int
    enhance: str | None
    key: str | None
    pdq: str | None = None  # hex PDQ of the submitted image (variant 0), when it was hashed
    dims: tuple[int, int] | None = None  # width x height of the submitted image, when it was decoded


@dataclass
class _Reply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


# (kind, reply, PhotoDNA status code, PDQ hex of the image, its width x height)
_Decision = tuple[str, _Reply, int | None, str | None, tuple[int, int] | None]


class PhotoDnaServer:
    def __init__(
        self,
        *,
        keys: Iterable[str] = ("stand-in-key",),
        threshold: int = 31,
        rate_limit: float | None = None,
        faults: Faults | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        hang_seconds: float = 30.0,
        executor: Executor | None = None,
    ) -> None:
        self.keys = set(keys)
        self.threshold = threshold
        self.rate_limit = rate_limit
        self.faults = faults or Faults()
        self.host = host
        self._port = port
        self.hang_seconds = hang_seconds
        self._executor = executor  # where images are decoded and hashed (default: a thread)
        self._rng = random.Random(seed)
        self._known: list[Known] = []
        self._script: deque[str] = deque()
        self._records: list[Record] = []
        self._window: deque[float] = deque()  # arrivals within the last second (rate limit)
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # -- corpus and behaviour

    def add_known(self, data: bytes, *, source: str = "Test", violations: Sequence[str] = ("A1",),
                  match_id: str | None = None) -> str:
        """Make images like ``data`` match; returns the MatchId they will carry."""
        mid = match_id or str(7_000_000 + len(self._known))
        with self._lock:
            self._known.append(Known(pdq_hashes(data)[0], source, tuple(violations), mid))
        return mid

    def script(self, *answers: str) -> None:
        """Answer the next requests with these, in order (after the key check): ``"401"``, ``"403"``,
        ``"429"``, ``"429:2"`` (Retry-After 2), ``"500"``, ``"503"``, ``"malformed"``, ``"hang"``, or a
        PhotoDNA status code ``"3002"``, ``"3004"``, ``"3206"``, ``"3208"``, ``"3209"``."""
        with self._lock:
            self._script.extend(answers)

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def max_in_window(self, window: float = 1.0, records: Sequence[Record] | None = None) -> int:
        """The most requests that arrived within any ``window`` seconds (sliding, half-open)."""
        times = sorted(r.t for r in (self.records if records is None else records))
        best, j = 0, 0
        for i, t in enumerate(times):
            while times[j] <= t - window:
                j += 1
            best = max(best, i - j + 1)
        return best

    def stats(self) -> dict[str, Any]:
        recs = self.records
        span = (recs[-1].t - recs[0].t) if len(recs) > 1 else 0.0
        return {
            "requests": len(recs),
            "span_s": span,
            "rate": (len(recs) - 1) / span if span > 0 else 0.0,
            "max_in_1s": self.max_in_window(1.0, recs),
            "statuses": dict(Counter(str(r.status) for r in recs)),
            "kinds": dict(Counter(r.kind for r in recs)),
        }

    # -- lifecycle (own thread and loop)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}{PATH}"

    def start(self) -> None:
        if not self._port:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self._port = int(s.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="photodna-standin", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError("PhotoDNA stand-in failed to start") from self._error

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            fut = asyncio.run_coroutine_threadsafe(self._cleanup(), loop)
            fut.result(15)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
        self._loop = None

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _start_site(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", PATH, self._handle)
        app.router.add_get(STATS_PATH, self._stats)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self._port).start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, predicate: Callable[[PhotoDnaServer], bool], within: float = 10.0) -> None:
        """Wait (in the caller's loop) until ``predicate(self)`` holds; re-checked after every request."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._listeners.append(entry)
        try:
            async with asyncio.timeout(within):
                while not predicate(self):
                    await event.wait()
                    event.clear()
        finally:
            with self._lock:
                self._listeners.remove(entry)

    def _record(self, rec: Record) -> None:
        with self._lock:
            self._records.append(rec)
            listeners = list(self._listeners)
        for loop, event in listeners:
            loop.call_soon_threadsafe(event.set)

    # -- the API

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        key = request.headers.get("Ocp-Apim-Subscription-Key")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        enhance = request.query.get("enhance")
        body = await request.read()
        kind, reply, code, pdq, dims = await self._decide(request.method, key, ctype, enhance, body, arrival)
        self._record(Record(arrival, reply.status, code, kind, ctype, len(body), enhance, key, pdq, dims))
        if kind == "hang":
            await asyncio.sleep(self.hang_seconds)
        elif self.faults.latency > 0:
            await asyncio.sleep(self.faults.latency)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers,
                            content_type="application/json")

    async def _decide(self, method: str, key: str | None, ctype: str, enhance: str | None, body: bytes,
                      arrival: float) -> _Decision:
        if method != "POST":
            return "bad-method", _azure(405, "Method not allowed"), None, None, None
        if not key:
            return "unauthorized", _azure(401, DENIED_MISSING), None, None, None
        if key not in self.keys:
            return "unauthorized", _azure(401, DENIED_INVALID), None, None, None
        with self._lock:
            while self._window and self._window[0] <= arrival - 1.0:
                self._window.popleft()
            self._window.append(arrival)
            over = self.rate_limit is not None and len(self._window) > self.rate_limit
            forced = self._script.popleft() if self._script else None
        if over:
            return "rate-limited", _azure(429, "Rate limit is exceeded. Try again in 1 seconds.",
                                          {"Retry-After": "1"}), None, None, None
        if forced is None:
            forced = self._random_fault()
        if forced is not None:
            reply = self._forced(forced)
            if reply is not None:
                return forced, reply[0], reply[1], None, None
        return await self._evaluate(ctype, enhance, body)

    def _random_fault(self) -> str | None:
        f = self.faults
        x = self._rng.random()
        for name, p in (("429", f.p_429), (f"429:{f.retry_after:g}", f.p_429_retry_after), ("503", f.p_5xx),
                        ("malformed", f.p_malformed), ("3004", f.p_3004), ("3208", f.p_3208)):
            if x < p:
                return name
            x -= p
        return None

    def _forced(self, what: str) -> tuple[_Reply, int | None] | None:
        if what == "hang":
            return _Reply(200, envelope(3000, False)), 3000
        if what == "malformed":
            return _Reply(200, '{"Status": {"Code": 3000, "Descr'), None
        if what.startswith("429"):
            _, _, after = what.partition(":")
            headers = {"Retry-After": after} if after else {}
            return _azure(429, "Rate limit is exceeded.", headers), None
        if what in ("401", "403"):
            return _azure(int(what), DENIED_INVALID), None
        if what.isdigit() and 500 <= int(what) < 600:
            return _azure(int(what), "Service unavailable"), None
        if what.isdigit() and int(what) in DESCRIPTIONS:
            return _Reply(200, envelope(int(what), False)), int(what)
        raise ValueError(f"unknown scripted answer {what!r}")

    async def _evaluate(self, ctype: str, enhance: str | None,
                        body: bytes) -> _Decision:
        def status(code: int, kind: str, detail: str = "", dims: tuple[int, int] | None = None) -> _Decision:
            return kind, _Reply(200, envelope(code, False, description=detail or None)), code, None, dims

        if enhance not in (None, "true", "false", "True", "False"):
            return status(3002, "bad-enhance", f"enhance must be a boolean, got {enhance!r}")
        if ctype == "application/json":
            return status(3002, "url-mode", "DataRepresentation URL is not supported by the stand-in")
        if ctype not in CONTENT_TYPES:
            return status(3002, "bad-content-type", f"unsupported Content-Type {ctype!r}")
        if len(body) > MAX_BYTES:
            return status(3209, "too-large")
        actual = sniff(body)
        if actual is None:
            return status(3206, "not-an-image")
        if actual != ctype:
            return status(3002, "content-type-mismatch", f"Content-Type {ctype} but the bytes are {actual}")
        loop = asyncio.get_running_loop()
        try:
            size, hashes = await loop.run_in_executor(self._executor, _size_and_pdq, body)
        except Exception:
            return status(3206, "not-an-image")
        if min(size) < 160:
            return status(3208, "too-small", dims=size)
        with self._lock:
            known = list(self._known)
        flags = []
        for k in known:
            distance = min(_hamming(h, k.pdq) for h in hashes)
            if distance <= self.threshold:
                flags.append({"AdvancedInfo": [{"Key": "MatchId", "Value": k.match_id}], "Source": k.source,
                              "Violations": list(k.violations), "MatchDistance": distance})
        return ("match" if flags else "no-match"), _Reply(200, envelope(3000, bool(flags), flags)), 3000, \
            hashes[0].hex(), size


def _size_and_pdq(body: bytes) -> tuple[tuple[int, int], tuple[bytes, ...]]:
    with Image.open(io.BytesIO(body)) as img:
        size = img.size
    return size, pdq_hashes(body)


def envelope(code: int, is_match: bool, flags: list[dict[str, Any]] | None = None, *,
             description: str | None = None) -> str:
    return json.dumps({
        "Status": {"Code": code, "Description": description or DESCRIPTIONS.get(code, "Error"), "Exception": None},
        "ContentId": None,
        "IsMatch": is_match,
        "MatchDetails": {"AdvancedInfo": [], "MatchFlags": flags or []} if code == 3000 else None,
        "XPartnerCustomerId": None,
        "TrackingId": f"STANDIN_{uuid.uuid4().hex}",
        "EvaluateResponse": None,
    })


def _azure(status: int, message: str, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps({"statusCode": status, "message": message}), dict(headers or {}))


def main() -> None:  # pragma: no cover - used by the benchmark
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--key", default="stand-in-key")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--known", nargs="*", default=[], help="image files that match")
    args = parser.parse_args()
    # Hashing in other processes keeps this loop free to time each arrival exactly.
    pool = ProcessPoolExecutor(2)
    server = PhotoDnaServer(keys=[args.key], rate_limit=args.rate_limit, faults=Faults(latency=args.latency),
                            port=args.port, executor=pool)
    for path in args.known:
        with open(path, "rb") as f:
            server.add_known(f.read())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # stop cleanly: the pool goes too
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    server.start()
    print(f"PhotoDNA stand-in on {server.url}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        pool.shutdown(cancel_futures=True)


if __name__ == "__main__":  # pragma: no cover
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
