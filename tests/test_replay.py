"""Replay on EventStreams (``since`` + its own checkpoint, ended at ``--until``) and the ``--rescan`` store view."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from service.config import config_from_dict
from service.errors import ConfigError
from service.metrics import Metrics
from service.models import RawEvent, UploadEvent
from service.sources.base import SourceBase, SourceStatus
from service.sources.eventstreams import EventStreamsSource
from service.sources.replay import ReplayProgress, ReplayRequest, RescanAdmission, UntilSource, replay_source
from service.store import MemoryStore
from service.store.base import NewAction, ScanRecord
from tests.infra.sse_server import EventStreamsServer
from tests.terminal import REPO
from tests.test_events import REAL
from tests.test_eventstreams import MemoryCheckpoints

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def event(n: int, at: datetime) -> dict[str, Any]:
    obj = copy.deepcopy(REAL)
    obj["meta"]["id"] = f"id-{n}"
    obj["meta"]["dt"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return obj


def config(tmp_path: Path, url: str) -> Any:
    return config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "source": {"eventstreams": {"url": url, "reconnect": {"initial_delay": 0.05, "max_delay": 0.2}}},
        "wikis": [{"id": "commonswiki", "api_url": "https://commons.wikimedia.org/w/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "s.sqlite3")},
    }, base=tmp_path)


async def test_eventstreams_replay_reads_the_window_under_its_own_checkpoint_and_ends(
    tmp_path: Path, sse_server: EventStreamsServer,
) -> None:
    times = [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20), T0 + timedelta(seconds=50),
             T0 + timedelta(seconds=200)]
    for n, at in enumerate(times):
        sse_server.publish(event(n, at), ts_ms=int(at.timestamp() * 1000))
    checkpoints = MemoryCheckpoints()
    checkpoints.values["eventstreams"] = "live position"
    req = ReplayRequest(since=T0, until=T0 + timedelta(seconds=15))
    source = replay_source(config(tmp_path, sse_server.stream_url()), checkpoints, Metrics(), req)
    assert isinstance(source, UntilSource) and isinstance(source.inner, EventStreamsSource)
    queue: asyncio.Queue[RawEvent] = asyncio.Queue(10)
    # Events up to --until are passed on; one later event (within the slack for the other data centre's
    # stragglers) is dropped; the first one past the slack ends the replay.
    await asyncio.wait_for(source.run(queue, asyncio.Event()), 20)
    got = [json.loads(queue.get_nowait().data)["meta"]["id"] for _ in range(queue.qsize())]
    assert got == ["id-0", "id-1"]
    assert "since" in sse_server.connections[0].query and sse_server.connections[0].last_event_id is None
    await source.commit("replay position")
    assert checkpoints.values == {"eventstreams": "live position", "eventstreams-replay": "replay position"}


def test_offsets_only_for_kafka_and_a_window_needs_a_start(tmp_path: Path) -> None:
    cfg = config(tmp_path, "https://stream.example/v2/stream/x")
    for req in (ReplayRequest(offsets={("t", 0): 1}), ReplayRequest()):
        try:
            replay_source(cfg, MemoryCheckpoints(), Metrics(), req)
        except ConfigError:
            continue
        raise AssertionError(f"{req} was accepted")


async def test_rescan_view_hides_what_was_handled_and_keeps_everything_else() -> None:
    store = MemoryStore()
    view = RescanAdmission(store)
    event = UploadEvent(event_id="e", wiki="w", title="File:A.jpg", server_url="", page_url="", uploader=None,
                        upload_time=datetime(2024, 1, 1, tzinfo=UTC), log_action="upload", sha1="a" * 40)
    scan = ScanRecord(sha1="a" * 40, outcome="clean", bank_version="v1", scanned_at=1.0)
    await view.finish(event, "clean", scan)
    assert await store.admit("e", "a" * 40) == (True, None)  # handled, as far as the real store knows
    assert await view.admit("e", "a" * 40) == (False, None)  # the view admits it again, unscanned
    action = NewAction(key="notify:w:File:A.jpg:" + "a" * 40, kind="notify")
    assert len(await view.record_matches(event, "a" * 40, [], [action])) == 1
    assert await view.record_matches(event, "a" * 40, [], [action]) == []  # still sent only once


def test_until_source_passes_acks_and_status_to_the_source_it_ends() -> None:
    class Acking(SourceBase):
        name = "acking"

        def __init__(self) -> None:
            self.acked: list[Any] = []
            self.last_error = "broker unreachable"

        @property
        def connected(self) -> bool:
            return False

        async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
            return None

        async def commit(self, position: Any) -> None:
            return None

        def ack(self, position: Any) -> None:
            self.acked.append(position)

    inner = Acking()
    source = UntilSource(inner, T0)
    source.ack(("t", 0, 7))
    assert inner.acked == [("t", 0, 7)]
    assert source.status() == SourceStatus(connected=False, last_error="broker unreachable")


def test_replay_progress_follows_event_time_and_its_summary_lists_every_outcome() -> None:
    metrics = Metrics()
    now = [T0.timestamp() + 3600]
    req = ReplayRequest(since=T0, until=T0 + timedelta(seconds=1000))
    progress = ReplayProgress(req, metrics, clock=lambda: now[0])
    assert progress.sample().completed == 0 and progress.sample().total == 1000
    metrics.events_received.labels("eventstreams").inc(7)
    metrics.source_lag.set(now[0] - (T0.timestamp() + 250))  # the newest event read is from T0 + 250 s
    metrics.outcomes.labels("clean").inc(3)
    metrics.outcomes.labels("match").inc(1)
    metrics.outcomes.labels("unscannable:too-small").inc(1)
    metrics.events_skipped.labels("duplicate").inc(1)
    metrics.events_skipped.labels("not-upload").inc(1)
    sample = progress.sample()
    assert sample.completed == 250 and sample.fields == {"read": 7, "scanned": 5, "matched": 1}
    c = progress.counts()
    assert c["read"] == c["scanned"] + c["skipped_already_handled"] + sum(c["skipped_other"].values())
    rows = dict(progress.rows(elapsed=5))
    assert rows["events read"] == 7 and rows["    too-small"] == 1 and rows["skipped: not-upload"] == 1
    offsets = ReplayProgress(ReplayRequest(offsets={("t", 0): 5}), metrics)
    assert offsets.sample().total is None and offsets.sample().completed == 7  # no time axis: events read


async def test_replay_command_ends_with_a_summary(tmp_path: Path, sse_server: EventStreamsServer) -> None:
    times = [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20), T0 + timedelta(seconds=200)]
    for n, at in enumerate(times):
        sse_server.publish(event(n, at), ts_ms=int(at.timestamp() * 1000))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 5},
        "http": {"host": "127.0.0.1", "port": 0},
        "source": {"eventstreams": {"url": sse_server.stream_url(),
                                    "reconnect": {"initial_delay": 0.05, "max_delay": 0.2}}},
        # Not the events' wiki: they are read and skipped, nothing is fetched from outside.
        "wikis": [{"id": "otherwiki", "api_url": "http://127.0.0.1:9/w/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "banks": {"list": []},
        "store": {"path": str(tmp_path / "s.sqlite3")},
    }))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "replay", "-c", str(path), "--since", T0.isoformat(),
        "--until", (T0 + timedelta(seconds=15)).isoformat(), cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    records = [json.loads(line) for line in err.decode().splitlines()]
    assert records[-1]["msg"] == "replay summary"  # the last word, after "service stopped"
    summary = records[-1]
    assert summary["read"] >= 2 and summary["scanned"] == 0
    assert summary["skipped_other"]["wiki-not-configured"] == 2
    assert "elapsed_seconds" in summary
