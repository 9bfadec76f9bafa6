"""Stand-ins for the hash-sharing exchanges and for a plain hash-list URL, for tests and benchmarks.

One aiohttp server (127.0.0.1, its own thread and event loop) speaks, under its own path prefix, each wire
format as python-threatexchange's clients use it:

- ``/ncmec``: NCMEC hash sharing v2, ``GET /v2/entries?from=&to=`` (HTTP Basic), XML ``<queryResult>`` with
  ``<images maxTimestamp=...>`` of ``<image>`` / ``<deletedImage>`` entries and ``<paging><next>`` (a path with
  ``start``, ``size`` and ``max``) while more entries are in the window;
- ``/stopncii``: ``GET /FetchHashes?startTimestamp=&pageSize=&nextPageToken=`` with ``x-functions-key`` and
  ``Ocp-Apim-Subscription-Key``, JSON with ``hashRecords``, ``nextPageToken``, ``nextSetTimestamp``,
  ``hasMoreRecords``;
- ``/tcap``: Tech Against Terrorism, ``POST /token-auth/tcap/`` (form user/password) returning a token, then
  ``GET /api/hash-list/v2/all?offset=&limit=&order=asc&after=<ts,id>`` with ``Authorization: Bearer``, JSON with
  ``results``, ``next`` and ``checkpoint``;
- ``/te``: Meta ThreatExchange Graph API, ``GET /<privacy_group>/threat_updates/?access_token=&start_time=&limit=``,
  JSON ``data`` (indicators with ``descriptors``, or ``should_delete`` tombstones) and ``paging.next``;
- ``/lists/<name>``: a CSV or JSON-lines list with ``ETag`` / ``Last-Modified`` and 304 answers.

Hashes are generated (random bits), never real.  Faults are injected per prefix: ``fail_next(prefix, status,
count)`` answers the next requests with that status (429 with ``Retry-After``, 5xx), ``truncate_next(prefix)``
cuts the next body in half.  Every request is counted per prefix in :attr:`requests`.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

NCMEC_USER, NCMEC_PASSWORD = "esp-user", "esp-password"
STOPNCII_FETCH_KEY, STOPNCII_SUBSCRIPTION_KEY = "fetch-key", "subscription-key"
TCAP_USER, TCAP_PASSWORD = "tcap-user", "tcap-password"
TE_TOKEN = "1234|te-secret"  # app_id|secret
TE_PRIVACY_GROUP = 303636684709969
_DATE = "%Y-%m-%dT%H:%M:%SZ"


def random_hash(kind: str) -> str:
    return secrets.token_hex({"sha1": 20, "md5": 16, "pdq": 32}[kind])


@dataclass
class Record:
    """One upstream record: an NCMEC entry, a StopNCII hash, a TCAP hash."""

    id: str
    updated: int  # Unix seconds
    fingerprints: dict[str, str]  # NCMEC fingerprint name (md5, sha1, pdq, pdna, tmk_pdqf) -> value
    label: str = ""  # NCMEC classification, StopNCII tag, TCAP ideology
    deleted: bool = False
    video: bool = False


@dataclass
class Feed:
    records: list[Record] = field(default_factory=list)  # sorted by (updated, id): see reindex()
    times: list[int] = field(default_factory=list)

    def upsert(self, record: Record) -> None:
        self.records = [r for r in self.records if r.id != record.id] + [record]
        self.reindex()

    def reindex(self) -> None:
        self.records.sort(key=lambda r: (r.updated, r.id))
        self.times = [r.updated for r in self.records]

    def since(self, ts: int) -> list[Record]:
        """Records updated at or after ``ts`` (a binary search: large lists page fast)."""
        return self.records[bisect.bisect_left(self.times, ts):]


class ExchangeStandIn:
    """See the module docstring.  ``start()`` / ``stop()``; ``url(prefix)`` is the base URL of one exchange."""

    def __init__(self, *, page_size: int = 50) -> None:
        self.page_size = page_size
        self.feeds: dict[str, Feed] = {"ncmec": Feed(), "stopncii": Feed(), "tcap": Feed(), "te": Feed()}
        self.lists: dict[str, tuple[bytes, str, str]] = {}  # name -> (body, etag, last-modified)
        self.requests: Counter[str] = Counter()
        self.list_requests: list[dict[str, str]] = []  # headers of each /lists request
        self._faults: dict[str, list[int]] = {}
        self._truncate: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ control

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def add(self, prefix: str, record: Record) -> None:
        with self._lock:
            self.feeds[prefix].upsert(record)

    def delete(self, prefix: str, record_id: str, at: int) -> None:
        with self._lock:
            old = next(r for r in self.feeds[prefix].records if r.id == record_id)
            self.feeds[prefix].upsert(Record(old.id, at, {} if prefix == "ncmec" else old.fingerprints, old.label,
                                             deleted=True, video=old.video))

    def set_list(self, name: str, body: bytes) -> None:
        with self._lock:
            etag = f'"{secrets.token_hex(8)}"'
            modified = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
            self.lists[name] = (body, etag, modified)

    def fail_next(self, prefix: str, status: int, count: int = 1) -> None:
        with self._lock:
            self._faults.setdefault(prefix, []).extend([status] * count)

    def truncate_next(self, prefix: str, count: int = 1) -> None:
        with self._lock:
            self._truncate[prefix] += count

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{prefix}/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="exchange-standin", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # ------------------------------------------------------------------ dispatch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        prefix = request.match_info["prefix"]
        tail = request.match_info["tail"]
        with self._lock:
            self.requests[prefix] += 1
            faults = self._faults.get(prefix)
            status = faults.pop(0) if faults else None
            truncate = self._truncate[prefix] > 0
            if truncate:
                self._truncate[prefix] -= 1
        if status is not None:
            headers = {"Retry-After": "0"} if status == 429 else {}
            return web.Response(status=status, text=f"injected {status}", headers=headers)
        if prefix == "ncmec":
            response = self._ncmec(request, tail)
        elif prefix == "stopncii":
            response = self._stopncii(request, tail)
        elif prefix == "tcap":
            response = await self._tcap(request, tail)
        elif prefix == "te":
            response = self._threatexchange(request, tail)
        elif prefix == "lists":
            response = self._list(request, tail)
        else:
            response = web.Response(status=404)
        if truncate and isinstance(response, web.Response) and response.body:
            body = bytes(response.body)  # type: ignore[arg-type]
            response = web.Response(status=response.status, body=body[: len(body) // 2],
                                    content_type=response.content_type)
        return response

    def _page(self, prefix: str, keep: Any, offset: int, size: int, since: int = 0) -> tuple[list[Record], bool]:
        """Records kept by ``keep`` among those updated at or after ``since``: ``size`` from ``offset``."""
        with self._lock:
            after = self.feeds[prefix].since(since)
            chosen = after if keep is None else [r for r in after if keep(r)]
        return chosen[offset:offset + size], offset + size < len(chosen)

    # ------------------------------------------------------------------ NCMEC

    def _ncmec(self, request: web.Request, tail: str) -> web.Response:
        auth = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{NCMEC_USER}:{NCMEC_PASSWORD}".encode()).decode()
        if auth != expected:
            return web.Response(status=401, text="unauthorized")
        if tail != "v2/entries":
            return web.Response(status=404)
        q = request.query
        start = int(datetime.strptime(q["from"], _DATE).replace(tzinfo=UTC).timestamp())
        end = int(datetime.strptime(q["to"], _DATE).replace(tzinfo=UTC).timestamp())
        offset = int(q.get("start", 0))
        page, more = self._page("ncmec", lambda r: start <= r.updated < end, offset, self.page_size, start)
        images = [r for r in page if not r.video]
        videos = [r for r in page if r.video]
        parts = ['<?xml version="1.0" encoding="UTF-8"?>',
                 '<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2">']
        for tag, items in (("images", images), ("videos", videos)):
            if not items:
                continue
            max_ts = datetime.fromtimestamp(max(r.updated for r in items), UTC).strftime(_DATE)
            parts.append(f'<{tag} count="{len(items)}" maxTimestamp="{max_ts}">')
            for r in items:
                kind = tag[:-1]
                name = f"deleted{kind.capitalize()}" if r.deleted else kind
                parts.append(f"<{name}><id>{escape(r.id)}</id><member id=\"42\">Example ESP</member>")
                parts.append(f"<timestamp>{datetime.fromtimestamp(r.updated, UTC).strftime(_DATE)}</timestamp>")
                if not r.deleted:
                    if r.label:
                        parts.append(f"<classification>{escape(r.label)}</classification>")
                    parts.append("<fingerprints>" + "".join(f"<{k}>{v}</{k}>" for k, v in r.fingerprints.items())
                                 + "</fingerprints>")
                parts.append(f"</{name}>")
            parts.append(f"</{tag}>")
        if more:
            with self._lock:
                total = sum(1 for r in self.feeds["ncmec"].records if start <= r.updated < end)
            nxt = (f"/v2/entries?from={q['from']}&amp;to={q['to']}&amp;start={offset + self.page_size}"
                   f"&amp;size={self.page_size}&amp;max={total}")
            parts.append(f"<paging><next>{nxt}</next></paging>")
        parts.append("</queryResult>")
        return web.Response(body="".join(parts).encode(), content_type="application/xml")

    # ------------------------------------------------------------------ StopNCII

    def _stopncii(self, request: web.Request, tail: str) -> web.Response:
        if (request.headers.get("x-functions-key") != STOPNCII_FETCH_KEY
                or request.headers.get("Ocp-Apim-Subscription-Key") != STOPNCII_SUBSCRIPTION_KEY):
            return web.json_response({"statusCode": 401, "message": "Access denied"}, status=401)
        if tail != "FetchHashes":
            return web.Response(status=404)
        start = int(request.query.get("startTimestamp", 0))
        size = int(request.query.get("pageSize", 800))
        offset = int(request.query.get("nextPageToken") or 0)
        page, more = self._page("stopncii", None, offset, size, start + 1)  # updated after start
        records = []
        for r in page:
            kind, value = next(iter(r.fingerprints.items()))
            signal_type = {"pdq": "ImagePDQ", "md5": "VideoMD5", "tmk": "VideoTMK"}[kind]
            records.append({
                "lastModtimestamp": r.updated, "signalType": signal_type, "hashValue": value,
                "hashStatus": "Withdrawn" if r.deleted else "Active", "caseNumbers": {r.id: "Active"},
                "CSPFeedbacks": [{"feedbackValue": "Blocked", "tags": [r.label] if r.label else [],
                                  "source": "csp-1"}],
            })
        with self._lock:
            newest = self.feeds["stopncii"].times[-1] if self.feeds["stopncii"].times else start
        return web.json_response({
            "count": len(records), "nextPageToken": str(offset + size) if more else None,
            "nextSetTimestamp": max([start, *(r.updated for r in page)]) if more else max(start, newest),
            "hasMoreRecords": more, "hashRecords": records,
        })

    # ------------------------------------------------------------------ TCAP

    async def _tcap(self, request: web.Request, tail: str) -> web.Response:
        if tail == "token-auth/tcap/" and request.method == "POST":
            form = await request.post()
            if form.get("username") != TCAP_USER or form.get("password") != TCAP_PASSWORD:
                return web.json_response({"error": "Invalid credentials"}, status=401)
            return web.json_response({"user": {"username": TCAP_USER}, "token": "jwt-" + TCAP_USER})
        if request.headers.get("Authorization") != f"Bearer jwt-{TCAP_USER}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if tail != "api/hash-list/v2/all":
            return web.Response(status=404)
        after = request.query.get("after", "")
        after_key = (int(after.split(",")[0]), int(after.split(",")[1])) if after else (-1, -1)
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", self.page_size))
        page, more = self._page("tcap", lambda r: (r.updated, int(r.id)) > after_key, offset, limit,
                                after_key[0])
        results = []
        for r in page:
            kind, value = next(iter(r.fingerprints.items()))
            results.append({
                "hash_digest": value, "algorithm": kind.upper(), "ideology": r.label or "islamist",
                "file_type": "mp4" if r.video else "jpg", "deleted": r.deleted, "updated_on": float(r.updated),
                "created_on": datetime.fromtimestamp(r.updated, UTC).isoformat(), "id": int(r.id),
            })
        checkpoint = f"{page[-1].updated},{page[-1].id}" if page else after
        return web.json_response({
            "count": len(results), "next": f"offset={offset + limit}&limit={limit}" if more else None,
            "previous": None, "checkpoint": checkpoint, "results": results,
        })

    # ------------------------------------------------------------------ ThreatExchange (Graph API)

    def _threatexchange(self, request: web.Request, tail: str) -> web.Response:
        q = request.query
        if q.get("access_token") != TE_TOKEN:
            return web.json_response({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException",
                                                "code": 190}}, status=400)
        if tail != f"{TE_PRIVACY_GROUP}/threat_updates/":
            return web.json_response({"error": {"message": "Unsupported get request.", "code": 100}}, status=400)
        start = int(q.get("start_time") or 0)
        limit = int(q.get("limit") or 100)
        offset = int(q.get("after") or 0)
        page, more = self._page("te", None, offset, limit, start)
        data = []
        for r in page:
            kind, value = next(iter(r.fingerprints.items()))
            item: dict[str, Any] = {"id": r.id, "indicator": value, "type": f"HASH_{kind.upper()}",
                                    "creation_time": r.updated, "last_updated": r.updated,
                                    "should_delete": r.deleted}
            if not r.deleted:
                descriptor = {"id": str(10**9 + int(r.id)), "owner": {"id": "777"}, "status": "MALICIOUS",
                              "tags": [r.label] if r.label else [], "added_on": r.updated}
                item["descriptors"] = {"data": [descriptor]}
            data.append(item)
        body: dict[str, Any] = {"data": data}
        if more:
            nxt = request.url.update_query({"after": str(offset + limit)})
            body["paging"] = {"cursors": {"after": str(offset + limit)}, "next": str(nxt)}
        return web.json_response(body)

    # ------------------------------------------------------------------ plain lists

    def _list(self, request: web.Request, name: str) -> web.Response:
        with self._lock:
            self.list_requests.append(dict(request.headers))
            found = self.lists.get(name)
        if found is None:
            return web.Response(status=404)
        body, etag, modified = found
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers={"ETag": etag, "Last-Modified": modified},
                            content_type="text/csv")


def now() -> int:
    return int(time.time())
