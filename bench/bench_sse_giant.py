"""How long a giant event trickled in small pieces holds up the next event on the EventStreams source.

    python bench/bench_sse_giant.py [--sizes 3,6] [--piece 1024]

The test EventStreams server (tests/infra/sse_server.py) sends one event whose ``data:`` is SIZE MB,
written in PIECE-byte writes (each its own HTTP transfer chunk), then one small event.  The figure is
the time from the first byte of the giant event until the small event reaches the pipeline's queue:
the delay every later event suffers.  The raw transfer time (first to last byte written by the
server) is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import EventStreamsSection, ReconnectSection
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.eventstreams import EventStreamsSource
from tests.infra.sse_server import EventStreamsServer
from tests.test_events import REAL


class _Checkpoints:
    async def get_checkpoint(self, name: str) -> Any | None:
        return None

    async def set_checkpoint(self, name: str, value: Any) -> None:
        pass


async def measure(size_mb: float, piece: int) -> tuple[float, float]:
    async with EventStreamsServer() as server:
        giant = copy.deepcopy(REAL)
        giant["meta"]["id"] = "giant"
        giant["comment"] = "x" * int(size_mb * 1_000_000)
        server.publish(giant, ts_ms=1_700_000_000_000, trickle=piece)
        small = copy.deepcopy(REAL)
        small["meta"]["id"] = "next"
        server.publish(small, ts_ms=1_700_000_000_001)
        cfg = EventStreamsSection(url=server.stream_url(), since="2000-01-01T00:00:00Z", read_timeout=600,
                                  reconnect=ReconnectSection(initial_delay=0.05, max_delay=0.2))
        source = EventStreamsSource(cfg, user_agent="bench/0.1 (bench@example.org)",
                                    checkpoints=_Checkpoints(), metrics=Metrics())  # type: ignore[arg-type]
        queue: asyncio.Queue[RawEvent] = asyncio.Queue(4)
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(queue, stop))
        try:
            while True:
                raw = await asyncio.wait_for(queue.get(), 900)
                try:
                    if json.loads(raw.data)["meta"]["id"] == "next":
                        arrived = time.monotonic()
                        break
                except ValueError:
                    continue
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        conn = server.connections[0]
        return arrived - conn.write_started[0], conn.write_ended[0] - conn.write_started[0]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="3,6", help="giant event sizes in MB, comma-separated")
    parser.add_argument("--piece", type=int, default=1024, help="bytes per write")
    args = parser.parse_args()
    for size in (float(s) for s in args.sizes.split(",")):
        delay, transfer = await measure(size, args.piece)
        print(f"{size:g} MB in {args.piece}-byte pieces: next event after {delay:.2f} s "
              f"(server wrote the giant event in {transfer:.2f} s)")


if __name__ == "__main__":
    asyncio.run(main())
