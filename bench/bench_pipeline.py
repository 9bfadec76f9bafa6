"""Whole-pipeline throughput against a stand-in wiki (the service's own cost), beside a sequential baseline.

    python bench/bench_pipeline.py [--events 100000] [--baseline-events 2000] [--no-views] [--views JSON] [--varied]

(b) of issue 2: a backlog of N upload events (generated lazily, as a stream that is far behind),
each fetched through imageinfo + thumbnail from ``bench/standin_wiki.py`` (run in its own process),
decoded, PDQ-hashed (8 dihedral variants), matched against a bank, recorded in SQLite; 1 in 100
matches and gets a notification (spooled to .eml).  The baseline does the same work one upload at
a time, sequentially, the way a job queue runs MediaModeration.  Prints uploads/s, CPU ms per
upload (service process + its CPU pool), and peak / sampled RSS to show memory stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.app import Service
from service.config import Config, config_from_dict
from service.events import sha1_to_base36
from service.matchers.banks import BankSet
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.base import SourceBase
from service.store import sqlite_stores
from tests.infra.images import jpeg_bytes, photo
from tests.test_events import REAL

DISTINCT = 200
MATCH_EVERY = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (the CPU pool's workers are grandchildren, via the forkserver)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    out += [int(child), *descendants(int(child))]
    return out


_TEMPLATE: dict[str, Any] = copy.deepcopy(REAL)
_TEMPLATE.update(wiki="benchwiki", title="@TITLE@", log_params={"img_sha1": "@SHA1@", "img_timestamp": "@TS@"})
_TEMPLATE["meta"].update(id="@ID@", dt="@DT@")
_TEMPLATE_JSON = json.dumps(_TEMPLATE)


def event_json(i: int) -> str:
    """A recentchange upload event for upload ``i`` (string substitution: the source costs ~nothing)."""
    now = time.time()
    return (_TEMPLATE_JSON.replace("@TITLE@", f"File:Bench {i % DISTINCT} {i}.jpg")
            .replace("@SHA1@", sha1_to_base36(f"{i:040x}"))
            .replace("@TS@", time.strftime("%Y%m%d%H%M%S", time.gmtime(now)))
            .replace("@ID@", f"bench-{i}")
            .replace("@DT@", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))))


class BacklogSource(SourceBase):
    """N events already waiting (a stream far behind), produced lazily so the source holds nothing."""

    name = "backlog"

    def __init__(self, n: int) -> None:
        self.n = n
        self.committed: Any = None

    @property
    def connected(self) -> bool:
        return True

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        for i in range(self.n):
            if stop.is_set():
                return
            await out.put(RawEvent(data=event_json(i), position=i))

    async def commit(self, position: Any) -> None:
        self.committed = position


def make_config(tmp: Path, port: int, bank: Path, *, views: bool = True,
                views_set: dict[str, Any] | None = None) -> Config:
    return config_from_dict(
        {
            "service": {"user_agent": "mediamoderation-bench/0.1 (bench@example.org)", "log_level": "warning"},
            "http": {"enabled": False},
            # The events carry the template's server_url and meta.uri: configured, so they are not "forged".
            "wikis": [{"id": "benchwiki", "api_url": f"http://127.0.0.1:{port}/api.php",
                       "server_url": _TEMPLATE["server_url"]}],
            "pipeline": {"queue_size": 64, "concurrency": {"fetch": 16, "thumbnail": 4, "match": 2, "act": 4}},
            "banks": {"reload_interval": 0, "list": [{"name": "bench", "path": str(bank), "category": "test"}]},
            "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                                   "outbox_dir": str(tmp / "outbox")}},
            "store": {"path": str(tmp / "bench.sqlite3")},
            # --no-views: the image as uploaded only (docs/evasion.md)
            **({} if views else {"thumbnail": {"views": {"trim_border": False, "trim_caption": False, "uncrop": [],
                                                         "uncrop_sides": [], "uncrop_corners": []}}}),
            **({"thumbnail": {"views": views_set}} if views_set else {}),  # --views '{...}'

        },
        base=tmp,
    )


async def run_pipeline(cfg: Config, n: int) -> dict[str, float]:
    source = BacklogSource(n)
    service = Service(cfg, source=source)
    pid = os.getpid()
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(rss_mb(pid))
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample())
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    pool_cpu: dict[int, float] = {}

    async def watch_pool() -> None:
        while True:
            for c in descendants(pid):
                pool_cpu[c] = max(pool_cpu.get(c, 0.0), proc_cpu(c))
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_pool())
    await service.run()
    wall = time.perf_counter() - t0
    sampler.cancel()
    watcher.cancel()
    main_cpu = time.process_time() - cpu0
    cpu = main_cpu + sum(pool_cpu.values())
    return {
        "uploads": n,
        "wall_s": wall,
        "uploads_per_s": n / wall,
        "cpu_ms_per_upload": cpu * 1000 / n,
        "main_cpu_ms_per_upload": main_cpu * 1000 / n,
        "rss_first_mb": samples[1] if len(samples) > 1 else samples[0],
        "rss_last_mb": samples[-1],
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "outcomes_match": service.metrics.registry.get_sample_value("mediamoderation_outcomes_total",
                                                                   {"outcome": "match"}) or 0,
        "outcomes_clean": service.metrics.registry.get_sample_value("mediamoderation_outcomes_total",
                                                                   {"outcome": "clean"}) or 0,
    }


async def run_baseline(cfg: Config, n: int, port: int) -> dict[str, float]:
    """The same work, one upload at a time: imageinfo, download, decode + PDQ, match, record."""
    stores = sqlite_stores(str(Path(cfg.store.path).with_name("baseline.sqlite3")))
    await stores.open()
    banks = BankSet(cfg.banks, Metrics())
    session = requests.Session()
    session.headers["User-Agent"] = cfg.service.user_agent
    from service.events import classify, decode

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    matched = 0
    for i in range(n):
        event = classify(decode(event_json(i)), {"benchwiki"})
        assert not isinstance(event, type(None))
        r = session.get(f"http://127.0.0.1:{port}/api.php", params={
            "action": "query", "prop": "imageinfo", "titles": event.title,  # type: ignore[union-attr]
            "iiprop": "url|sha1|size|mime|mediatype", "iiurlwidth": 330, "format": "json", "formatversion": 2})
        info = r.json()["query"]["pages"][0]["imageinfo"][0]
        data = session.get(info["thumburl"]).content
        media = prepare(data, info["sha1"], cfg.thumbnail)
        hits = banks.match_pdq_signals(media.pdq_signals)
        matched += bool(hits)
        await stores.ledger.record_event(event, "match" if hits else "clean")  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await stores.close()
    return {"uploads": n, "wall_s": wall, "uploads_per_s": n / wall, "cpu_ms_per_upload": cpu * 1000 / n,
            "matched": matched}


class ListSource(SourceBase):
    name = "list"

    def __init__(self, events: list[str]) -> None:
        self.events = events

    @property
    def connected(self) -> bool:
        return True

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        for i, data in enumerate(self.events):
            await out.put(RawEvent(data=data, position=i))

    async def commit(self, position: Any) -> None:
        pass


def real_wiki(n: int) -> None:
    """(a): the same pipeline against the real local MediaWiki (php -S, thumbnails rendered by ImageMagick).

    Every upload is scanned twice over fresh titles: once by the sequential baseline, once by the
    pipeline, so both pay for first-time thumbnail rendering.
    """
    from tests.infra.mediawiki import MediaWikiServer

    with tempfile.TemporaryDirectory() as d, MediaWikiServer() as wiki:
        tmp = Path(d)
        bank = tmp / "bank.csv"
        bank.write_text("hash,category,source,id\n")
        print(f"uploading {2 * n} generated images to the local wiki ...", flush=True)
        runs: dict[str, list[str]] = {"baseline": [], "pipeline": []}
        for kind in runs:
            for i in range(n):
                name = f"Bench {kind} {i}.jpg"
                seed = 60_000 + i + (n if kind == "pipeline" else 0)
                wiki.upload(name, jpeg_bytes(photo(seed, size=(1024, 768))))
                runs[kind].append(json.dumps(wiki.recentchange_event(name)))
        cfg = config_from_dict(
            {
                "service": {"user_agent": "mediamoderation-bench/0.1 (bench@example.org)", "log_level": "warning"},
                "http": {"enabled": False},
                "wikis": [{"id": wiki.wiki_id, "api_url": wiki.api_url}],
                "banks": {"reload_interval": 0, "list": [{"name": "b", "path": str(bank), "category": "test"}]},
                "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                                       "outbox_dir": str(tmp / "outbox")}},
                "store": {"path": str(tmp / "wiki.sqlite3")},
            },
            base=tmp,
        )
        # Baseline: one upload at a time through the same client and decoder.
        from service.events import classify, decode
        from service.fetch import WikiClient

        async def baseline() -> tuple[float, float]:
            banks = BankSet(cfg.banks, Metrics())
            client = WikiClient(cfg.fetch, cfg.wikis, cfg.service.user_agent, Metrics())
            await client.start()
            c0, t0 = time.process_time(), time.perf_counter()
            for data in runs["baseline"]:
                event = classify(decode(data), {wiki.wiki_id})
                fetched = await client.fetch(cfg.wikis[0], event.title)  # type: ignore[union-attr]
                media = prepare(fetched.data, fetched.info.sha1, cfg.thumbnail)
                banks.match_pdq_signals(media.pdq_signals)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            await client.aclose()
            return wall, cpu

        async def pipeline() -> tuple[float, float]:
            service = Service(cfg, source=ListSource(runs["pipeline"]))
            c0, t0 = time.process_time(), time.perf_counter()
            pool_cpu: dict[int, float] = {}

            async def watch_pool() -> None:
                wiki_side = {php_pid, *descendants(php_pid)}
                while True:
                    wiki_side |= set(descendants(php_pid))
                    for c in descendants(os.getpid()):
                        if c not in wiki_side:
                            pool_cpu[c] = max(pool_cpu.get(c, 0.0), proc_cpu(c))
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch_pool())
            await service.run()
            watcher.cancel()
            return time.perf_counter() - t0, time.process_time() - c0 + sum(pool_cpu.values())

        php_pid = wiki._process.pid if wiki._process is not None else 0

        def php_cpu() -> float:  # php -S forks workers; ImageMagick runs below them
            return sum(proc_cpu(p) for p in [php_pid, *descendants(php_pid)]) if php_pid else 0.0

        php0 = php_cpu()
        bw, bc = asyncio.run(baseline())
        pw, pc = asyncio.run(pipeline())
        php1 = php_cpu()
    print(f"(a) real local MediaWiki, {n} uploads each, 1024x768 JPEG originals, 330 px thumbnails rendered on demand")
    print(f"{'':28}{'uploads/s':>11}{'service CPU ms/upload':>23}")
    print(f"{'baseline (sequential)':28}{n / bw:>11.1f}{bc * 1000 / n:>23.2f}")
    print(f"{'pipeline (service)':28}{n / pw:>11.1f}{pc * 1000 / n:>23.2f}")
    if php1:
        print(f"MediaWiki (php -S + ImageMagick) CPU over both runs: {(php1 - php0) * 1000 / (2 * n):.1f} ms/upload")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--baseline-events", type=int, default=2_000)
    parser.add_argument("--real-wiki", type=int, default=0, metavar="N",
                        help="instead: (a) N uploads through the real local MediaWiki")
    parser.add_argument("--no-views", action="store_true",
                        help="hash the image as uploaded only (thumbnail.views off)")
    parser.add_argument("--views", type=json.loads, default=None, metavar="JSON",
                        help="thumbnail.views keys to set, e.g. '{\"uncrop_corners\": []}'")
    parser.add_argument("--varied", action="store_true",
                        help="thumbnails 330 px wide of 200 different heights (150-549 px), as a wiki's are, "
                             "instead of all 330 x 248")
    args = parser.parse_args()
    if args.real_wiki:
        real_wiki(args.real_wiki)
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        thumbs = tmp / "thumbs"
        thumbs.mkdir()
        bank_rows = ["hash,category,source,id"]
        for k in range(DISTINCT):
            img = photo(50_000 + k, size=(330, 150 + (k * 37) % 400 if args.varied else 248))
            data = jpeg_bytes(img, quality=85)
            (thumbs / f"{k}.jpg").write_bytes(data)
        from service.config import ThumbnailSection

        for k in range(0, DISTINCT, MATCH_EVERY):
            media = prepare((thumbs / f"{k}.jpg").read_bytes(), "0" * 40, ThumbnailSection())
            assert media.pdq is not None
            bank_rows.append(f"{media.pdq.hex},test,bench,img-{k}")
        bank = tmp / "bank.csv"
        bank.write_text("\n".join(bank_rows) + "\n")
        port = free_port()
        server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("standin_wiki.py")),
                                   "--port", str(port), "--thumbs", str(thumbs)])
        try:
            for _ in range(100):
                with contextlib.suppress(requests.RequestException):
                    requests.get(f"http://127.0.0.1:{port}/api.php", timeout=1)
                    break
                time.sleep(0.1)
            cfg = make_config(tmp, port, bank, views=not args.no_views, views_set=args.views)
            s0 = proc_cpu(server.pid)
            base = asyncio.run(run_baseline(cfg, args.baseline_events, port))
            s1 = proc_cpu(server.pid)
            pipe = asyncio.run(run_pipeline(cfg, args.events))
            s2 = proc_cpu(server.pid)
            base["standin_ms"] = (s1 - s0) * 1000 / base["uploads"]
            pipe["standin_ms"] = (s2 - s1) * 1000 / pipe["uploads"]
        finally:
            server.terminate()
            server.wait()
    print(f"cores: {os.cpu_count()}; thumbnails: {'330 px wide, 200 heights' if args.varied else '330 x 248'}; "
          f"views: {'off' if args.no_views else 'defaults'}{f' with {args.views}' if args.views else ''}")
    print(f"{'':28}{'uploads':>9}{'uploads/s':>11}{'CPU ms/upload':>15}{'stand-in ms':>13}")
    for name, r in (("baseline (sequential)", base), ("pipeline (service)", pipe)):
        print(f"{name:28}{r['uploads']:>9.0f}{r['uploads_per_s']:>11.1f}{r['cpu_ms_per_upload']:>15.2f}"
              f"{r['standin_ms']:>13.2f}")
    print(f"pipeline CPU split: service process {pipe['main_cpu_ms_per_upload']:.2f} ms/upload, "
          f"CPU pool {pipe['cpu_ms_per_upload'] - pipe['main_cpu_ms_per_upload']:.2f} ms/upload")
    print(f"pipeline RSS: after 1 s {pipe['rss_first_mb']:.0f} MB, at end {pipe['rss_last_mb']:.0f} MB, "
          f"peak {pipe['rss_peak_mb']:.0f} MB; outcomes: {pipe['outcomes_clean']:.0f} clean, "
          f"{pipe['outcomes_match']:.0f} match")


if __name__ == "__main__":
    main()
