"""PhotoDNA throughput: the whole pipeline against a PhotoDNA stand-in with latency and a rate limit.

    python bench/bench_photodna.py [--events 300] [--rate 10] [--latency 0.1]

A backlog of N upload events (distinct SHA-1s, so every one needs PhotoDNA) goes through the real
service: imageinfo + thumbnail from ``bench/standin_wiki.py``, decode + PDQ + JPEG in the CPU pool,
no local match, then PhotoDNA.  The PhotoDNA stand-in (``tests/infra/photodna_server.py``, its own
process) answers after ``--latency`` seconds and refuses (HTTP 429) any request beyond ``--rate`` in a
sliding second.  The service's limit is set to the same ``--rate``.  Printed: the request rate the
stand-in saw (first to last request), the busiest 1 s window, the 429s, and the client's own view
(requests by status, mean rate-limiter wait).  Target: the rate within 5 % of the limit, no 429.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.app import Service  # noqa: E402
from service.config import Config, config_from_dict  # noqa: E402
from service.events import sha1_to_base36  # noqa: E402
from service.models import RawEvent  # noqa: E402
from service.sources.base import SourceBase  # noqa: E402
from tests.infra.images import jpeg_bytes, photo  # noqa: E402
from tests.test_events import REAL  # noqa: E402

DISTINCT = 50
KEY = "bench-photodna-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event_json(i: int) -> str:
    obj: dict[str, Any] = copy.deepcopy(REAL)
    now = time.time()
    obj.update(wiki="benchwiki", title=f"File:Bench {i % DISTINCT} {i}.jpg",
               log_params={"img_sha1": sha1_to_base36(f"{i:040x}"),
                           "img_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(now))})
    obj["meta"].update(id=f"pdna-bench-{i}", dt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    return json.dumps(obj)


class BacklogSource(SourceBase):
    name = "backlog"

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def connected(self) -> bool:
        return True

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        for i in range(self.n):
            if stop.is_set():
                return
            await out.put(RawEvent(data=event_json(i), position=i))

    async def commit(self, position: Any) -> None:
        return None


def make_config(tmp: Path, wiki_port: int, photodna_url: str, rate: float) -> Config:
    bank = tmp / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return config_from_dict(
        {
            "service": {"user_agent": "mediamoderation-bench/0.1 (bench@example.org)", "log_level": "warning",
                        "shutdown_grace": 3600},  # a finite backlog: let every event finish
            "http": {"enabled": False},
            "wikis": [{"id": "benchwiki", "api_url": f"http://127.0.0.1:{wiki_port}/api.php"}],
            "pipeline": {"queue_size": 64, "concurrency": {"fetch": 8, "thumbnail": 2, "match": 2, "act": 2,
                                                           "remote": 8}},
            "banks": {"reload_interval": 0, "list": [{"name": "bench", "path": str(bank), "category": "test"}]},
            "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                                   "outbox_dir": str(tmp / "outbox")}},
            "photodna": {"enabled": True, "url": photodna_url, "key": {"env": "BENCH_PHOTODNA_KEY"}, "rate": rate,
                         "rescan": {"enabled": False}},
            "store": {"path": str(tmp / "bench.sqlite3")},
        },
        base=tmp,
    )


def wait_up(url: str) -> None:
    for _ in range(200):
        with contextlib.suppress(requests.RequestException):
            requests.get(url, timeout=1)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def run_service(cfg: Config, n: int) -> dict[str, float]:
    service = Service(cfg, source=BacklogSource(n))
    t0 = time.perf_counter()
    await service.run()
    wall = time.perf_counter() - t0
    reg = service.metrics.registry

    def value(name: str, **labels: str) -> float:
        return reg.get_sample_value(name, labels) or 0.0

    waits = value("mediamoderation_photodna_ratelimit_wait_seconds_count", priority="live")
    return {
        "wall_s": wall,
        "ok": value("mediamoderation_photodna_requests_total", http_status="200", code="3000"),
        "http_429": value("mediamoderation_photodna_requests_total", http_status="429", code="none"),
        "clean": value("mediamoderation_outcomes_total", outcome="clean"),
        "errors": value("mediamoderation_outcomes_total", outcome="error"),
        "mean_wait_s": value("mediamoderation_photodna_ratelimit_wait_seconds_sum", priority="live") / max(1, waits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    os.environ["BENCH_PHOTODNA_KEY"] = KEY
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        thumbs = tmp / "thumbs"
        thumbs.mkdir()
        for k in range(DISTINCT):
            (thumbs / f"{k}.jpg").write_bytes(jpeg_bytes(photo(60_000 + k, size=(330, 248)), quality=85))
        wiki_port, pdna_port = free_port(), free_port()
        procs = [
            subprocess.Popen([sys.executable, str(ROOT / "bench" / "standin_wiki.py"), "--port", str(wiki_port),
                              "--thumbs", str(thumbs)]),
            subprocess.Popen([sys.executable, str(ROOT / "tests" / "infra" / "photodna_server.py"), "--port",
                              str(pdna_port), "--key", KEY, "--latency", str(args.latency), "--rate-limit",
                              str(args.rate)], stdout=subprocess.DEVNULL),
        ]
        try:
            wait_up(f"http://127.0.0.1:{wiki_port}/api.php")
            stats_url = f"http://127.0.0.1:{pdna_port}/_standin/stats"
            wait_up(stats_url)
            cfg = make_config(tmp, wiki_port, f"http://127.0.0.1:{pdna_port}/photodna/v1.0/Match", args.rate)
            client = asyncio.run(run_service(cfg, args.events))
            server = requests.get(stats_url, timeout=5).json()
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    rate = server["rate"]
    deviation = (rate - args.rate) / args.rate
    rejected = server["statuses"].get("429", 0)
    print(f"cores: {os.cpu_count()}; stand-in latency {args.latency * 1000:.0f} ms, limit {args.rate:g} req/s "
          f"(enforced by the stand-in); service photodna.rate {args.rate:g}")
    print(f"events: {args.events} in {client['wall_s']:.1f} s; outcomes: {client['clean']:.0f} clean, "
          f"{client['errors']:.0f} error")
    print(f"stand-in saw: {server['requests']} requests over {server['span_s']:.2f} s = {rate:.2f} req/s "
          f"({deviation * 100:+.1f} % of the limit); busiest 1 s window: {server['max_in_1s']}; HTTP 429: {rejected}")
    print(f"client: {client['ok']:.0f} answered 200/3000, {client['http_429']:.0f} got 429; mean rate-limiter wait "
          f"{client['mean_wait_s'] * 1000:.0f} ms")
    ok = abs(deviation) <= 0.05 and rejected == 0 and server["max_in_1s"] <= args.rate
    print("RESULT:", "PASS" if ok else "FAIL", "(rate within 5 % of the limit, no 429, no 1 s window over the limit)")


if __name__ == "__main__":
    main()
