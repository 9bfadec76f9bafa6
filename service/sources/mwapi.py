"""Polling the MediaWiki Action API: for wikis without EventStreams or Kafka.

:func:`polling_client` configures the one MediaWiki client (:mod:`service.mediawiki.client`) for
listing requests: one at a time per wiki, with ``maxlag`` (a lagged wiki is waited for:
``Retry-After``, at least 5 s) and retries with backoff for transient failures, unreadable answers
included.  :class:`LogEventsSource` polls ``list=logevents&letype=upload`` with
continuation and turns each entry into the same recentchange-shaped event the stream sources
deliver, so the pipeline, the de-duplication and the watermark work unchanged.  Its checkpoint
(the last finished log entry of every polled wiki) is kept in the store and moves only past
finished events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from service.config import Config, WikiSection, parse_time
from service.errors import PermanentSourceError, SourceError, WikiApiError
from service.mediawiki.client import MediaWikiClient, RetryPolicy, Sleep
from service.mediawiki.transport import Transport
from service.metrics import Metrics
from service.models import RawEvent
from service.net import Proxies
from service.sources.base import SourceBase
from service.store.base import CheckpointStore

log = logging.getLogger(__name__)

MAXLAG_MIN_WAIT = 5.0


def mw_timestamp(iso: str) -> str:
    """``2024-01-02T03:04:05Z`` -> ``20240102030405`` (MediaWiki's TS_MW)."""
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%d%H%M%S")


def iso_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def polling_client(
    wiki: WikiSection,
    *,
    user_agent: str,
    metrics: Metrics,
    timeout: float = 30.0,
    maxlag: int = 5,
    retries: int = 6,
    sleep: Sleep = asyncio.sleep,
    maxlag_min_wait: float = MAXLAG_MIN_WAIT,
    transport: Transport | None = None,
    proxies: Proxies | None = None,
) -> MediaWikiClient:
    """The MediaWiki client as listing sources use it; its results are counted in ``mwapi_requests``."""
    counter = metrics.poll_requests

    def observe(what: str, result: str) -> None:
        counter.labels(what, result if result in ("ok", "retry", "maxlag") else "error").inc()

    policy = RetryPolicy(retries=retries, initial_delay=0.5, max_delay=30.0, maxlag_retries=retries,
                         maxlag_min_wait=maxlag_min_wait, retry_answers=True)
    return MediaWikiClient(wiki, user_agent=user_agent, transport=transport, proxies=proxies, timeout=timeout,
                           maxlag=maxlag, policy=policy, observe=observe, sleep=sleep)


def source_error(exc: WikiApiError) -> SourceError:
    """A listing failure as the sources report it: retriable (reconnect later) when the cause is."""
    return (SourceError if exc.retriable else PermanentSourceError)(str(exc))


def recentchange_event(wiki: WikiSection, site: dict[str, Any], *, event_id: str, title: str, timestamp: str,
                       user: str | None, action: str, sha1_b36: str | None, img_timestamp: str | None,
                       log_id: int | None = None, page_url: str | None = None) -> dict[str, Any]:
    """A ``mediawiki.recentchange``-shaped upload event, as the stream sources deliver them."""
    server = str(site.get("server") or "")
    if server.startswith("//"):
        server = f"{urlsplit(wiki.api_url).scheme}:{server}"
    if not server:
        parts = urlsplit(wiki.api_url)
        server = f"{parts.scheme}://{parts.netloc}"
    if page_url is None:
        path = str(site.get("articlepath") or "/wiki/$1")
        page_url = server + path.replace("$1", quote(title.replace(" ", "_"), safe=";@$!*(),/~:"))
    when = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    params: dict[str, Any] = {}
    if sha1_b36:
        params["img_sha1"] = sha1_b36
    if img_timestamp:
        params["img_timestamp"] = img_timestamp
    event: dict[str, Any] = {
        "$schema": "/mediawiki/recentchange/1.0.0",
        "meta": {"uri": page_url, "id": event_id, "dt": timestamp, "domain": site.get("servername") or "",
                 "stream": "mediawiki.recentchange"},
        "type": "log",
        "namespace": 6,
        "title": title,
        "timestamp": int(when.timestamp()),
        "log_type": "upload",
        "log_action": action,
        "log_params": params,
        "server_url": server,
        "server_name": site.get("servername") or "",
        "server_script_path": site.get("scriptpath") or "",
        "wiki": wiki.id,
    }
    if user:
        event["user"] = user
    if log_id is not None:
        event["log_id"] = log_id
    return event


class LogEventsSource(SourceBase):
    """Polls every configured wiki's upload log; checkpoint ``{wiki: {"ts": TS_MW, "id": log_id}}``."""

    name = "mwapi"

    def __init__(
        self,
        cfg: Config,
        *,
        checkpoints: CheckpointStore,
        metrics: Metrics,
        since: datetime | None = None,
        until: datetime | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.mw = cfg.source.mwapi
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.since = since
        self.until = until
        self._sleep = sleep
        self._clock = clock
        wanted = set(self.mw.wikis) or {w.id for w in cfg.wikis}
        self.clients = {
            w.id: polling_client(w, user_agent=cfg.service.user_agent, metrics=metrics, timeout=self.mw.timeout,
                                 maxlag=cfg.fetch.maxlag, sleep=sleep, proxies=Proxies.for_config(cfg.network))
            for w in cfg.wikis if w.id in wanted
        }
        self._connected = False
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def commit(self, position: Any) -> None:
        await self.checkpoints.set_checkpoint(self.mw.checkpoint_name, position)

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        stored = None if self.since is not None else await self.checkpoints.get_checkpoint(self.mw.checkpoint_name)
        start = self.since
        if start is None and self.mw.since:
            start = parse_time(self.mw.since)
        if start is None:
            start = datetime.fromtimestamp(self._clock(), tz=UTC)
        cursors: dict[str, dict[str, Any]] = {}
        for wiki_id in self.clients:
            saved = stored.get(wiki_id) if isinstance(stored, dict) else None
            cursors[wiki_id] = dict(saved) if isinstance(saved, dict) else {"start": iso_time(start)}
        log.info("api polling source starting", extra={"wikis": list(self.clients), "cursors": cursors})
        try:
            failures = 0
            while not stop.is_set():
                caught_up = True
                try:
                    for client in self.clients.values():
                        more = await self._poll_once(client, cursors, out, stop)
                        caught_up = caught_up and not more
                    failures = 0
                    self._connected = True
                    self.last_error = None
                except SourceError as exc:
                    if not exc.retriable:
                        raise
                    failures += 1
                    self._connected = False
                    self.last_error = str(exc)
                    self.metrics.source_reconnects.labels("mwapi").inc()
                    await self._wait(stop, min(60.0, 2.0 ** min(failures, 6)))
                    continue
                if caught_up:
                    if self.until is not None:
                        log.info("api polling source reached --until")
                        return
                    await self._wait(stop, self.mw.poll_interval)
        finally:
            for client in self.clients.values():
                await client.aclose()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _poll_once(self, client: MediaWikiClient, cursors: dict[str, dict[str, Any]],
                         out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> bool:
        """One page of the wiki's upload log; True when the API says there is more."""
        wiki = client.wiki
        try:
            site = await client.siteinfo()
        except WikiApiError as exc:
            raise source_error(exc) from exc
        cursor = cursors[wiki.id]
        params = {"list": "logevents", "letype": "upload", "ledir": "newer", "lelimit": str(self.mw.limit),
                  "leprop": "ids|title|type|user|timestamp|details"}
        if "ts" in cursor:
            params["lecontinue"] = f"{cursor['ts']}|{int(cursor['id']) + 1}"
        else:
            params["lestart"] = str(cursor["start"])
        if self.until is not None:
            params["leend"] = iso_time(self.until)
        try:
            data = await client.query(params, what="logevents")
        except WikiApiError as exc:
            raise source_error(exc) from exc
        entries = (data.get("query") or {}).get("logevents") or []
        for entry in entries:
            if stop.is_set():
                return False
            try:
                log_id = int(entry["logid"])
                ts = str(entry["timestamp"])
                details = entry.get("params") if isinstance(entry.get("params"), dict) else {}
                img_ts = details.get("img_timestamp")
                event = recentchange_event(
                    wiki, site, event_id=f"logevents:{wiki.id}:{log_id}", title=str(entry["title"]), timestamp=ts,
                    user=entry.get("user"), action=str(entry.get("action") or ""),
                    sha1_b36=details.get("img_sha1"),
                    img_timestamp=mw_timestamp(img_ts) if isinstance(img_ts, str) and "T" in img_ts else img_ts,
                    log_id=log_id,
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("skipping an unreadable log entry", extra={"wiki": wiki.id, "entry": str(entry)[:300],
                                                                        "error": str(exc)})
                continue
            cursors[wiki.id] = {"ts": mw_timestamp(ts), "id": log_id}
            position = {k: dict(v) for k, v in cursors.items()}
            self.metrics.events_received.labels(self.name).inc()
            await out.put(RawEvent(data=json.dumps(event), position=position, label=f"{wiki.id} log {log_id}"))
        return "continue" in data
