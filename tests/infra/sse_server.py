"""An in-process EventStreams server (Wikimedia's KafkaSSE protocol) for tests.

``GET /v2/stream/{streams}`` answers like stream.wikimedia.org: ``:ok`` first, then per event
``event: message`` / ``id: <JSON array>`` / ``data: <JSON>``.  The id array carries the position of
every topic-partition the connection consumes (timestamp mode like the public service: message time
+ 1 ms; ``offsets=True`` switches to offset + 1).  Resume follows KafkaSSE: ``Last-Event-ID`` replaces
the stream's assignments, ``offset`` wins over ``timestamp``, a timestamp resumes at the first message
with time >= it (so later messages sharing the last seen millisecond are *not* replayed), ``-1`` means
latest; ``?since=`` (ms epoch or ISO 8601) applies only without ``Last-Event-ID``.

Knobs for fault tests: ``disconnect_after``, ``reject_next`` (429/503, optional Retry-After),
``keepalive_interval``, ``publish_raw`` (malformed ``data:``), explicit ``ts_ms`` (many events in one
millisecond), ``trickle`` (write one message in pieces of that many bytes, each its own write and
transfer chunk, like a slow upstream).  Every connection is recorded (headers, query, events sent) and tests can await
conditions with ``wait_for`` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

RECENTCHANGE_TOPICS = ("eqiad.mediawiki.recentchange", "codfw.mediawiki.recentchange")
DEFAULT_STREAMS: Mapping[str, Sequence[str]] = {
    "mediawiki.recentchange": RECENTCHANGE_TOPICS,
    "recentchange": RECENTCHANGE_TOPICS,  # the public alias
    "mediawiki.page-create": ("eqiad.mediawiki.page-create", "codfw.mediawiki.page-create"),
}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _compact(value: Any) -> str:
    """Compact JSON like EventStreams (node's well-formed ``JSON.stringify``): non-ASCII text as is,
    lone surrogates as ``\\uXXXX`` escapes (they cannot be encoded as UTF-8)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True)
class StoredMessage:
    """One message in a topic-partition (``data`` is a dict, or a raw string for malformed tests)."""

    seq: int
    topic: str
    partition: int
    offset: int
    ts_ms: int
    data: dict[str, Any] | str
    trickle: int | None = None  # written in pieces of this many bytes


@dataclass
class ConnectionRecord:
    """What one client request looked like and what it was sent."""

    index: int
    path: str
    streams: tuple[str, ...]
    query: dict[str, str]
    headers: CIMultiDict[str]
    status: int = 0
    sent: list[StoredMessage] = field(default_factory=list)
    ids: list[list[dict[str, Any]]] = field(default_factory=list)
    keepalives: int = 0
    closed: bool = False
    write_started: list[float] = field(default_factory=list)  # time.monotonic() per sent message
    write_ended: list[float] = field(default_factory=list)

    @property
    def user_agent(self) -> str | None:
        return self.headers.get("User-Agent")

    @property
    def last_event_id(self) -> str | None:
        return self.headers.get("Last-Event-ID")


class _HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body.get("title", status))
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class EventStreamsServer:
    """EventStreams look-alike on 127.0.0.1, run inside the caller's event loop."""

    def __init__(self, streams: Mapping[str, Sequence[str]] | None = None, *, offsets: bool = False) -> None:
        self.streams = {name: tuple(topics) for name, topics in (streams or DEFAULT_STREAMS).items()}
        self.offsets = offsets
        self.disconnect_after: int | None = None
        self.abrupt_disconnect = False
        self.keepalive_interval: float | None = None
        self.connections: list[ConnectionRecord] = []
        self.messages: list[StoredMessage] = []
        self._partition_lengths: dict[tuple[str, int], int] = {}
        self._rejections: list[tuple[int, float | None]] = []
        self._pulse = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/stream/{streams}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing = True
        self._wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EventStreamsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``; streams live under ``/v2/stream/``."""
        return f"http://127.0.0.1:{self._port}"

    def stream_url(self, streams: str = "mediawiki.recentchange") -> str:
        return f"{self.url}/v2/stream/{streams}"

    # -- publishing and fault knobs ------------------------------------------------------------
    def publish(self, event: dict[str, Any], ts_ms: int | None = None, *,
                stream: str = "mediawiki.recentchange", topic: str | None = None,
                trickle: int | None = None) -> StoredMessage:
        """Append ``event`` to ``topic`` (default: the stream's first, the eqiad one), partition 0.

        Like EventStreams' deserializer, ``meta.topic/partition/offset`` are stamped into the data.
        """
        data = copy.deepcopy(event)
        message = self._append(data, ts_ms, stream, topic, trickle)
        meta = data.setdefault("meta", {})
        if isinstance(meta, dict):
            meta.update(topic=message.topic, partition=message.partition, offset=message.offset)
        return message

    def publish_raw(self, data: str, ts_ms: int | None = None, *,
                    stream: str = "mediawiki.recentchange", topic: str | None = None,
                    trickle: int | None = None) -> StoredMessage:
        """Append a message whose ``data:`` line is ``data`` verbatim (e.g. truncated JSON)."""
        return self._append(data, ts_ms, stream, topic, trickle)

    def _append(self, data: dict[str, Any] | str, ts_ms: int | None, stream: str,
                topic: str | None, trickle: int | None = None) -> StoredMessage:
        topic = topic or self.streams[stream][0]
        key = (topic, 0)
        offset = self._partition_lengths.get(key, 0)
        self._partition_lengths[key] = offset + 1
        message = StoredMessage(
            seq=len(self.messages), topic=topic, partition=0, offset=offset,
            ts_ms=int(time.time() * 1000) if ts_ms is None else ts_ms, data=data, trickle=trickle,
        )
        self.messages.append(message)
        self._wake()
        return message

    def reject_next(self, count: int, status: int = 429, retry_after: float | None = None) -> None:
        """Answer the next ``count`` connections with ``status`` (and ``Retry-After`` when given)."""
        self._rejections.extend([(status, retry_after)] * count)

    # -- awaiting conditions -------------------------------------------------------------------
    def _wake(self) -> None:
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (TimeoutError after ``within`` seconds).

        Re-checked whenever a connection arrives, ends, or is sent an event or keep-alive.
        """
        async with asyncio.timeout(within):
            while not predicate():
                await self._pulse.wait()

    async def wait_for_connections(self, count: int, within: float = 10.0) -> list[ConnectionRecord]:
        await self.wait_for(lambda: len(self.connections) >= count, within)
        return self.connections[:count]

    async def wait_for_sent(self, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` events in total were written to clients (over all connections)."""
        await self.wait_for(lambda: sum(len(c.sent) for c in self.connections) >= count, within)

    # -- request handling ----------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        streams = tuple(request.match_info["streams"].split(","))
        record = ConnectionRecord(
            index=len(self.connections), path=request.path, streams=streams,
            query=dict(request.query), headers=CIMultiDict(request.headers),
        )
        self.connections.append(record)
        try:
            if self._rejections:
                status, retry_after = self._rejections.pop(0)
                headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                kind, title = (("too_many_requests", "Too Many Concurrent Connections From Your Client IP")
                               if status == 429 else ("unavailable", "Service Unavailable"))
                raise _HttpError(status, {"type": kind, "title": title, "method": "get",
                                          "uri": request.path_qs}, headers)
            positions = self._assignments(request, streams)
        except _HttpError as exc:
            record.status = exc.status
            record.closed = True
            self._wake()
            return web.json_response(exc.body, status=exc.status, headers=exc.headers)
        record.status = 200
        self._wake()
        try:
            return await self._stream(request, record, positions)
        finally:
            record.closed = True
            self._wake()

    def _assignments(self, request: web.Request, streams: tuple[str, ...]) -> dict[tuple[str, int], dict]:
        """Resolved start position per topic-partition (KafkaSSE's ``latestOffsetsMap`` seed)."""
        invalid = [s for s in streams if s not in self.streams]
        if invalid:
            raise _HttpError(400, {"type": "not_found", "title": "Stream Not Found", "method": "get",
                                   "detail": f"Invalid streams: {','.join(invalid)}", "uri": request.path})
        topics = list(dict.fromkeys(t for s in streams for t in self.streams[s]))
        at_timestamp = self._since(request)
        header = request.headers.get("Last-Event-ID")
        if header is not None:
            try:
                wanted = json.loads(header)
            except ValueError:
                wanted = None
            if not (isinstance(wanted, list) and wanted and all(_valid_assignment(a) for a in wanted)):
                raise _HttpError(400, {"type": "InvalidAssignmentError", "title": "Invalid Last-Event-ID",
                                       "detail": "Must provide an array of objects with topic, partition "
                                                 "and offset|timestamp.", "last_event_id": header})
            unavailable = [a["topic"] for a in wanted if a["topic"] not in topics]
            if unavailable:
                raise _HttpError(404, {"type": "TopicNotAvailableError",
                                       "title": f"Topics {', '.join(unavailable)} are not available for "
                                                "consumption.", "availableTopics": topics})
        else:
            start = {"offset": -1} if at_timestamp is None else {"timestamp": at_timestamp}
            wanted = [{"topic": t, "partition": 0, **start} for t in topics]
        resolved: dict[tuple[str, int], dict] = {}
        for assignment in wanted:
            key = (assignment["topic"], assignment["partition"])
            if isinstance(assignment.get("offset"), int):
                resolved[key] = {"topic": key[0], "partition": key[1], "offset": assignment["offset"]}
            else:
                resolved[key] = {"topic": key[0], "partition": key[1],
                                 "offset": self._offset_for_time(key, assignment["timestamp"])}
        return resolved

    def _since(self, request: web.Request) -> int | None:
        since = request.query.get("since")
        if since is None or since == "":
            return None
        if since.lstrip("-").isdigit():
            return int(since)
        try:
            parsed = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise _HttpError(400, {"type": "invalid_timestamp", "title": "Invalid timestamp",
                                   "detail": "since timestamp is not a UTC milliseconds unix epoch and was "
                                             f"not parseable: '{since}'"}) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # Wikimedia's servers run in UTC
        return int(parsed.timestamp() * 1000)

    def _offset_for_time(self, key: tuple[str, int], ts_ms: int) -> int:
        """Kafka offsetsForTimes: earliest offset with timestamp >= ts_ms, else -1 (end)."""
        for message in self.messages:
            if (message.topic, message.partition) == key and message.ts_ms >= ts_ms:
                return message.offset
        return -1

    async def _stream(self, request: web.Request, record: ConnectionRecord,
                      positions: dict[tuple[str, int], dict]) -> web.StreamResponse:
        cursor: dict[tuple[str, int], int] = {}
        for key, position in positions.items():
            offset = position["offset"]
            end = self._partition_lengths.get(key, 0)
            cursor[key] = end if offset == -1 else 0 if offset < -1 else min(offset, end)
        latest = {key: dict(position) for key, position in positions.items()}
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
        })
        await response.prepare(request)
        await response.write(b":ok\n\n")
        loop = asyncio.get_running_loop()
        interval = self.keepalive_interval
        next_keepalive = None if interval is None else loop.time() + interval
        index = 0
        try:
            while not self._closing:
                if index >= len(self.messages):
                    pulse = self._pulse
                    try:
                        async with asyncio.timeout_at(next_keepalive):
                            await pulse.wait()
                    except TimeoutError:
                        await response.write(b":\n\n")
                        record.keepalives += 1
                        next_keepalive = None if interval is None else loop.time() + interval
                        self._wake()
                    continue
                message = self.messages[index]
                index += 1
                key = (message.topic, message.partition)
                if key not in cursor or message.offset < cursor[key]:
                    continue
                cursor[key] = message.offset + 1
                latest[key] = ({"topic": key[0], "partition": key[1], "offset": message.offset + 1}
                               if self.offsets else
                               {"topic": key[0], "partition": key[1], "timestamp": message.ts_ms + 1})
                event_id = list(latest.values())
                data = message.data if isinstance(message.data, str) else _compact(message.data)
                lines = ["event: message", f"id: {_compact(event_id)}"]
                lines += [f"data: {line}" for line in data.split("\n")]
                frame = ("\n".join(lines) + "\n\n").encode()
                record.write_started.append(time.monotonic())
                step = message.trickle or len(frame)
                for start in range(0, len(frame), step):
                    await response.write(frame[start:start + step])
                record.write_ended.append(time.monotonic())
                record.sent.append(message)
                record.ids.append(event_id)
                next_keepalive = None if interval is None else loop.time() + interval
                self._wake()
                if self.disconnect_after is not None and len(record.sent) >= self.disconnect_after:
                    if self.abrupt_disconnect and request.transport is not None:
                        request.transport.abort()
                        return response
                    break
            await response.write_eof()
        except ConnectionError:  # the client went away
            pass
        return response


def _valid_assignment(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("topic"), str)
            and type(value.get("partition")) is int
            and (type(value.get("offset")) is int or type(value.get("timestamp")) is int))
