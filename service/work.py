"""Horizontal scale: the work topic between ``--role ingest`` and ``--role worker`` replicas.

An ingest process runs one source (the stream, API polling or a backfill) and publishes each upload
event to a partitioned Kafka topic, keyed by the file's SHA-1 so one content always lands on the
same partition (and so, at any moment, on one worker).  Worker replicas consume the topic as one
consumer group (:func:`service.sources.factory.worker_source`) and run fetch → thumbnail → match →
act against the shared PostgreSQL store.  The message is the recentchange-shaped event itself.

The source's checkpoint moves only past events the broker has acknowledged (the same watermark
as the pipeline), so a crash of the ingest process never loses an upload; events skipped here
(canaries, other wikis, non-uploads, backfill batch markers) are acknowledged at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import CollectorRegistry

from service.backoff import exponential_backoff
from service.config import Config, KafkaConnectionSection, kafka_client_options
from service.metrics import Metrics
from service.models import RawEvent
from service.pipeline_steps import read_upload
from service.runtime.committer import Committer
from service.runtime.http import HttpServer, source_details, source_ready, store_ready
from service.runtime.supervisor import CRITICAL, RESTART, RestartPolicy, Supervised, Supervisor
from service.sources.base import Source
from service.store import Stores, make_stores

log = logging.getLogger(__name__)

# A source that raises is fatal (sources reconnect by themselves); a finite one (backfill) may end.
SOURCE = RestartPolicy(critical=True, may_return=True)


def work_connection(cfg: Config) -> KafkaConnectionSection:
    return cfg.work.connection or cfg.source.kafka.connection


def ensure_work_topic(cfg: Config) -> None:
    """Create the work topic with ``work.partitions`` partitions unless it exists."""
    admin = KafkaAdminClient(**kafka_client_options(work_connection(cfg)))
    try:
        if cfg.work.topic in set(admin.list_topics()):
            return
        admin.create_topics([NewTopic(cfg.work.topic, cfg.work.partitions, cfg.work.replication_factor)])
        log.info("work topic created", extra={"topic": cfg.work.topic, "partitions": cfg.work.partitions})
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


class IngestService:
    """``--role ingest``: source → filter → work topic, checkpointed behind the broker's acknowledgements."""

    def __init__(
        self,
        cfg: Config,
        *,
        make_source: Callable[[Config, Stores, Metrics], Source],
        registry: CollectorRegistry | None = None,
        stores: Stores | None = None,
        restart: RestartPolicy = RESTART,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics(registry)
        self.stores = stores if stores is not None else make_stores(cfg.store)
        self.source = make_source(cfg, self.stores, self.metrics)
        self.wikis = {w.id for w in cfg.wikis}
        self.committer = Committer(self.source, self.metrics)
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.published = 0
        self.http = HttpServer(cfg.http, self.metrics)
        self._producer: KafkaProducer | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._published = asyncio.Event()
        self.restart = restart  # the policy of the tasks that may be restarted (the committer)
        self.supervisor = Supervisor(self.metrics, self.stop_event,
                                     stop_timeout=max(10.0, cfg.service.shutdown_grace))

    @property
    def http_port(self) -> int | None:
        return self.http.port

    def stop(self) -> None:
        self.stop_event.set()

    async def run(self) -> None:
        await self.stores.open()
        try:
            await asyncio.to_thread(ensure_work_topic, self.cfg)
            self._producer = await asyncio.to_thread(self._make_producer)
            await self._start_http()
            await self._run_pipeline()
        finally:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await asyncio.to_thread(producer.close, 10)
            await self.http.close()
            await self.stores.close()
        if self.supervisor.failure is not None:
            raise self.supervisor.failure

    def _make_producer(self) -> KafkaProducer:
        return KafkaProducer(acks="all", linger_ms=20, retries=10, max_in_flight_requests_per_connection=1,
                             **kafka_client_options(work_connection(self.cfg)))

    async def _start_http(self) -> None:
        await self.http.start({"store": store_ready(self.stores)}, {"tasks": self.supervisor.problem},
                              details=source_details(self.source), pipeline={"source": source_ready(self.source)})

    async def _run_pipeline(self) -> None:
        queue: asyncio.Queue[RawEvent] = asyncio.Queue(self.cfg.pipeline.queue_size)
        sup = self.supervisor
        # Started in this order, stopped in the reverse one: the source, then the publisher, then the committer.
        sup.start("commit", self.committer.run, restart=self.restart)
        sup.start("publish", lambda: self._publish_loop(queue), restart=CRITICAL)
        source = sup.start("source", lambda: self.source.run(queue, self.stop_event), restart=SOURCE)
        self.started.set()
        log.info("ingest started", extra={"source": self.source.name, "topic": self.cfg.work.topic})
        try:
            await self._until_source_ends(source)
            if sup.failure is None:
                # Everything read is published (or given up at the deadline) before the last commit.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.join(), self.cfg.service.shutdown_grace)
                    await asyncio.wait_for(self._idle.wait(), self.cfg.service.shutdown_grace)
        finally:
            self.stop_event.set()
            await sup.close()
            if self._producer is not None:
                try:
                    await asyncio.to_thread(self._producer.flush, 10)
                except Exception:  # what was not acknowledged stays above the checkpoint: read again next time
                    log.exception("flushing the work topic producer failed")
            await asyncio.shield(self.committer.commit())
            log.info("ingest stopped", extra={"published": self.published})

    async def _until_source_ends(self, source: Supervised) -> None:
        """Until the source ends: it ran out, or it died (a task failure stops the service); once a stop is
        requested, at most ``service.shutdown_grace`` more."""
        ended = asyncio.ensure_future(source.wait())
        stopped = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                await asyncio.wait({ended}, timeout=self.cfg.service.shutdown_grace)
        finally:
            ended.cancel()
            stopped.cancel()
            await asyncio.gather(ended, stopped, return_exceptions=True)

    async def _publish_loop(self, queue: asyncio.Queue[RawEvent]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            raw = await queue.get()
            try:
                seq = self.committer.track(raw.position)
                key = self._key(raw)
                if key is None:
                    self._done(seq)
                else:
                    self._send(loop, raw, key, seq)
            finally:
                queue.task_done()

    def _key(self, raw: RawEvent) -> bytes | None:
        """The partition key (SHA-1, else the title) of an upload to publish; None for anything to skip."""
        parsed = read_upload(raw, self.wikis, self.metrics)
        if parsed is None:  # malformed, or not an upload to scan: counted and skipped
            return None
        return (parsed.sha1 or f"{parsed.wiki}:{parsed.title}").encode()

    def _send(self, loop: asyncio.AbstractEventLoop, raw: RawEvent, key: bytes, seq: int, attempt: int = 0) -> None:
        assert self._producer is not None
        data = raw.data.encode() if isinstance(raw.data, str) else raw.data
        self._inflight += 1
        self._idle.clear()

        def ok(_: Any) -> None:
            loop.call_soon_threadsafe(self._sent, seq, None, raw, key, attempt)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(self._sent, seq, exc, raw, key, attempt)

        try:
            future = self._producer.send(self.cfg.work.topic, value=data, key=key)
        except KafkaError as exc:
            self._sent(seq, exc, raw, key, attempt)
            return
        future.add_callback(ok)
        future.add_errback(failed)

    def _sent(self, seq: int, exc: BaseException | None, raw: RawEvent, key: bytes, attempt: int) -> None:
        self._inflight -= 1
        if exc is None:
            self.published += 1
            self._published.set()
            self.metrics.work_published.labels("ok").inc()
            self._done(seq)
        else:
            # Never dropped: the checkpoint stays behind it until the broker takes it.
            self.metrics.work_published.labels("retry").inc()
            delay = exponential_backoff(attempt, initial=0.5, maximum=30.0)
            log.warning("publishing to the work topic failed; retrying",
                        extra={"position": raw.label, "error": str(exc), "delay": delay})
            loop = asyncio.get_running_loop()
            self._inflight += 1
            loop.call_later(delay, self._resend, loop, raw, key, seq, attempt + 1)
        if not self._inflight:
            self._idle.set()

    def _resend(self, loop: asyncio.AbstractEventLoop, raw: RawEvent, key: bytes, seq: int, attempt: int) -> None:
        self._inflight -= 1
        self._send(loop, raw, key, seq, attempt)

    def _done(self, seq: int) -> None:
        self.committer.done(seq)

    async def wait_published(self, count: int) -> None:
        """Test helper: until ``count`` events were published."""
        while self.published < count:
            self._published.clear()
            await self._published.wait()
