"""Retroactive matching with the memory store: hits act once, progress survives restarts, the flood guard."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.actions.notify import render_email
from service.actions.plan import build_planners
from service.config import (
    ActionsSection,
    BankSection,
    BanksSection,
    Config,
    FloodGuardSection,
    NotifySection,
    RetroSection,
    TakedownSection,
)
from service.file_hashes import FileHashWriter, scanned_file
from service.matchers.banks import BankDelta, BankEntry, BankSet
from service.metrics import Metrics
from service.models import UploadEvent
from service.retro import RetroMatcher, marker
from service.store import MemoryStore
from service.store.base import RETRO_ACTING, RETRO_DONE, RETRO_MATCHING, RETRO_QUARANTINED, FileHashes, StoreError
from tests.helpers import until

NOTIFY = NotifySection(sender="mm@example.org", recipients=("ts@example.org",))


def cfg(max_hits: int = 50, batch: int = 200, cpu_share: float = 1.0, mode: str = "auto") -> Config:
    bank = BankSection(name="cp", path="/dev/null", category="child-protection", pdq_threshold=31)
    banks = BanksSection(list=(bank,),
                         flood_guard=FloodGuardSection(max_hits=max_hits),
                         retro=RetroSection(batch=batch, cpu_share=cpu_share, refresh_interval=0.05))
    return Config(banks=banks, actions=ActionsSection(notify=NOTIFY, takedown=TakedownSection(mode=mode)))  # type: ignore[arg-type]


def event(n: int) -> UploadEvent:
    return UploadEvent(event_id=f"ev-{n}", wiki="testwiki", title=f"File:F{n}.jpg", server_url="https://w.example",
                       page_url=f"https://w.example/wiki/File:F{n}.jpg", uploader="U",
                       upload_time=datetime(2024, 1, 1, tzinfo=UTC), log_action="upload", sha1=f"{n:040x}")


def pdq(seed: int) -> str:
    return random.Random(seed).randbytes(32).hex()


def near(hex_hash: str, bits: int) -> str:
    """``hex_hash`` with its first ``bits`` bits flipped."""
    value = int(hex_hash, 16) ^ (((1 << bits) - 1) << (256 - bits))
    return f"{value:064x}"


def stored(n: int, *, quality: int = 90, md5: str | None = None) -> FileHashes:
    return FileHashes(event=event(n), sha1=f"{n:040x}", md5=md5, pdq=pdq(n), pdq_quality=quality, scanned_at=1.0)


def matcher(store: MemoryStore, config: Config, metrics: Metrics | None = None) -> RetroMatcher:
    return RetroMatcher(config.banks, store=store, planners=build_planners(config), metrics=metrics or Metrics(),
                        notify=config.actions.notify)


def delta(*entries: tuple[str, str], at: float = 1_700_000_000.0) -> BankDelta:
    return BankDelta(bank="cp", added=tuple(BankEntry(hash=h, category="child-protection", source="src", id=i)
                                            for h, i in entries), removed=(), at=at)


def kinds(store: MemoryStore) -> list[str]:
    return sorted(i.key.split(":", 1)[0] for i in store.outbox.values())


async def test_new_hashes_match_stored_files_once_with_the_retroactive_marker() -> None:
    store = MemoryStore()
    await store.put_file_hashes([stored(1, md5="a" * 32), stored(2), stored(3), stored(4, quality=10)])
    metrics = Metrics()
    m = matcher(store, cfg(), metrics)
    await m.load()
    assert len(m.pdqs) == 3  # quality below banks.pdq_quality_min is not matched (as in live scanning)
    m.on_delta(delta((f"{2:040x}", "sha1-hit"), ("a" * 32, "md5-hit"), (near(pdq(3), 20), "pdq-hit"),
                     (near(pdq(1), 40), "too-far"), (pdq(4), "low-quality"), ("b" * 40, "nothing"),
                     ("z" * 64, "not-hex")))  # bad data from a list is skipped, the rest goes on
    await m.step()
    [d] = await store.list_retro_deltas()
    assert d.state == RETRO_DONE
    rows = {(r["title"], r["matcher"], r["hash_id"], r["distance"]) for r in store.matches}
    assert rows == {("File:F2.jpg", "sha1", "sha1-hit", None), ("File:F1.jpg", "md5", "md5-hit", None),
                    ("File:F3.jpg", "pdq", "pdq-hit", 20)}
    note = marker("cp", 1_700_000_000.0)
    assert note == "found by retroactive match: cp, added 2023-11-14 22:13:20 UTC"
    assert all(f'"retroactive": "{note}"' in r["details"] for r in store.matches)
    # The normal act stage: one notification per file; in auto mode (child-protection) a takedown for the exact
    # matches only: the PDQ match at distance 20 is above actions.takedown.auto_max_distance (10), so it waits
    # for review.
    assert kinds(store) == ["notify"] * 3 + ["takedown"] * 2
    notify = next(i for i in store.outbox.values() if i.key.startswith("notify:testwiki:File:F3.jpg"))
    body = render_email(notify.payload, "mm@example.org", ["ts@example.org"], page_url=None, review_url=None)
    text = body.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert note in text
    assert metrics.registry.get_sample_value("mediamoderation_retro_matches_total",
                                             {"bank": "cp", "matcher": "pdq"}) == 1
    assert metrics.registry.get_sample_value("mediamoderation_retro_queue_hashes") == 0
    # The same hashes again (removed and re-added upstream): nothing new is recorded or notified.
    m.on_delta(delta((f"{2:040x}", "sha1-hit"), (near(pdq(3), 20), "pdq-hit")))
    await m.step()
    assert len(store.matches) == 3 and len(store.outbox) == 5


async def test_a_restart_mid_delta_resumes_and_never_notifies_twice() -> None:
    store = MemoryStore()
    await store.put_file_hashes([stored(n) for n in range(1, 7)])
    config = cfg(batch=2)
    first = matcher(store, config)
    await first.load()
    first.on_delta(delta(*((near(pdq(n), 3), f"h{n}") for n in range(1, 7))))
    await first.save_incoming()
    [d] = await store.list_retro_deltas()
    stop = asyncio.Event()
    await first.process(d, stop, on_progress=lambda _: stop.set())  # "crash" after the first step
    [d] = await store.list_retro_deltas()
    assert (d.state, d.progress, len(d.hits)) == (RETRO_MATCHING, 2, 2)
    assert store.outbox == {}
    # A new process resumes the delta where it stood: the 4 other hashes, then acts on all 6 files.
    second = matcher(store, config)
    await second.load()
    await second.step()
    [d] = await store.list_retro_deltas()
    assert d.state == RETRO_DONE and len(d.hits) == 6
    assert kinds(store).count("notify") == 6
    # A crash while acting (progress not written yet) repeats those files: still one email each.
    await store.update_retro_delta(d.id, state=RETRO_ACTING, progress=0)
    third = matcher(store, config)
    await third.step()
    assert kinds(store).count("notify") == 6 and len(store.matches) == 6


async def test_the_flood_guard_quarantines_a_delta_hitting_too_many_files_until_released() -> None:
    store = MemoryStore()
    await store.put_file_hashes([stored(n) for n in range(1, 6)])
    metrics = Metrics()
    m = matcher(store, cfg(max_hits=3), metrics)
    await m.load()
    m.on_delta(delta(*((pdq(n), f"h{n}") for n in range(1, 6))))
    await m.step()
    [d] = await store.list_retro_deltas()
    assert d.state == RETRO_QUARANTINED and d.note == "5 files hit (limit 3)"
    # In the review queue, no takedown, no per-file email: one alert naming the bank and the counts.
    assert len({r["sha1"] for r in store.matches}) == 5
    [alert] = store.outbox.values()
    assert alert.key == f"flood:cp:{d.id}" and alert.kind == "notify"
    msg = render_email(alert.payload, "mm@example.org", ["ts@example.org"], page_url=None, review_url=None)
    text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "bank cp gained 5 hashes that match 5 already-scanned files" in text
    assert "FLOOD GUARD" in str(msg["Subject"])
    assert metrics.registry.get_sample_value("mediamoderation_retro_quarantined_deltas_total", {"bank": "cp"}) == 1
    await m.step()  # stays quarantined
    assert len(store.outbox) == 1
    released = await m.release(d.id, "tester")
    assert released.state == RETRO_ACTING
    with pytest.raises(LookupError):
        await m.release(d.id, "tester")
    await m.step()
    [d] = await store.list_retro_deltas()
    assert d.state == RETRO_DONE and "released by tester" in d.note
    assert kinds(store) == ["flood"] + ["notify"] * 5 + ["takedown"] * 5


async def test_the_index_follows_newly_scanned_files_and_bank_reloads_wake_the_task(tmp_path: Path) -> None:
    store = MemoryStore()
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    banks_cfg = dataclasses.replace(cfg().banks, list=(BankSection(name="cp", path=str(bank),
                                                                   category="child-protection"),))
    config = dataclasses.replace(cfg(), banks=banks_cfg)
    metrics = Metrics()
    bankset = BankSet(banks_cfg, metrics)
    m = matcher(store, config, metrics)
    bankset.subscribe(m.on_delta)
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    await until(lambda: m.loaded, 5)
    await store.put_file_hashes([stored(1)])  # scanned after the index was loaded
    bank.write_text(f"hash,category,source,id\n{near(pdq(1), 5)},,src,late\n")
    assert await asyncio.to_thread(bankset.reload_if_changed)  # in a worker thread, as the service does
    assert threading.current_thread() is threading.main_thread()
    await until(lambda: any(i.key.startswith("notify:") for i in store.outbox.values()), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [r["hash_id"] for r in store.matches] == ["late"]


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    async def put_file_hashes(self, files: list[FileHashes]) -> None:  # type: ignore[override]
        if self.fail:
            raise StoreError("down")
        await super().put_file_hashes(files)


async def test_file_hash_writer_batches_and_keeps_rows_while_the_store_is_down() -> None:
    store = FlakyStore()
    metrics = Metrics()
    writer = FileHashWriter(store, metrics, interval=0.05, batch=2)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    writer.add(scanned_file(event(1), f"{1:040x}", None))
    writer.add(scanned_file(event(2), f"{2:040x}", None))
    await until(lambda: (metrics.registry.get_sample_value("mediamoderation_file_hashes_stored_total",
                                                           {"result": "error"}) or 0) >= 2, 5)
    assert writer.pending == 2 and store.file_hashes == {}
    store.fail = False
    await until(lambda: len(store.file_hashes) == 2, 5)
    writer.add(scanned_file(event(3), f"{3:040x}", None))
    stop.set()
    await asyncio.wait_for(task, 5)  # what is left is written when it stops
    assert len(store.file_hashes) == 3 and writer.pending == 0


def test_the_docs_page_names_only_real_metrics_config_keys_and_commands() -> None:
    import re

    from service.cli.parser import build_parser
    from service.config.reference import reference_markdown

    text = (Path(__file__).resolve().parent.parent / "docs" / "retroactive-matching.md").read_text()
    exported = {m.name for m in Metrics().registry.collect()}
    exported |= {f"{n}_total" for n in exported}
    for name in set(re.findall(r"mediamoderation_[a-z_]+", text)):
        assert name in exported, name
    reference = reference_markdown()
    for key in set(re.findall(r"`((?:banks|actions|fetch)\.[a-z_.\[\]]+)`", text)):
        assert f"| `{key}` |" in reference, key
    parser = build_parser()
    commands = re.findall(r"`mediamoderation ((?:retro|bank) [a-z ]+?)(?: [A-Z-]|`)", text)
    assert len(commands) >= 3
    for cmd in commands:
        args = cmd.split()
        extra = {"run": ["--bank", "x"], "release": ["1"]}.get(args[-1], [])
        parser.parse_args([*args, *extra])  # exits on an unknown command


def test_cli_retro_run_quarantine_list_and_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main
    from service.store import sqlite_stores

    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n" + "".join(f"{near(pdq(n), 4)},,src,h{n}\n" for n in (1, 2)))
    config = tmp_path / "config.yaml"
    config.write_text(
        'service: {user_agent: "mediamoderation-test/0.1 (ts@example.org)", log_level: warning}\n'
        "wikis: [{id: testwiki, api_url: https://w.example/w/api.php}]\n"
        f"banks: {{reload_interval: 0, flood_guard: {{max_hits: 5}}, list: [{{name: cp, path: {bank}, "
        "category: child-protection}]}\n"
        f"actions: {{notify: {{sender: mm@example.org, recipients: [ts@example.org], outbox_dir: {tmp_path}/out}}}}\n"
        f"store: {{path: {tmp_path}/store.sqlite3}}\n")
    stores = sqlite_stores(str(tmp_path / "store.sqlite3"))

    async def prepare_store() -> None:
        await stores.open()
        await stores.retro.put_file_hashes([stored(n) for n in (1, 2, 3)])
        await stores.close()

    async def outbox_keys() -> list[str]:
        await stores.open()
        try:
            return sorted(i.key.split(":", 1)[0] for i in await stores.outbox.list_actions())  # type: ignore[attr-defined]
        finally:
            await stores.close()

    asyncio.run(prepare_store())
    assert main(["retro", "run", "-c", str(config), "--bank", "cp", "--max-hits", "1"]) == 1
    assert main(["bank", "quarantine", "list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "quarantined" in out and "bank cp" in out and "2 hashes" in out and "2 files hit" in out
    assert asyncio.run(outbox_keys()) == ["flood"]
    assert main(["bank", "quarantine", "release", "-c", str(config), "1"]) == 0
    assert "done" in capsys.readouterr().out
    assert asyncio.run(outbox_keys()) == ["flood", "notify", "notify"]
    assert main(["bank", "quarantine", "release", "-c", str(config), "1"]) == 2  # not quarantined any more
    # A full run again: the same hits, nothing notified twice.
    assert main(["retro", "run", "-c", str(config), "--bank", "cp"]) == 1
    assert asyncio.run(outbox_keys()) == ["flood", "notify", "notify"]
    assert main(["bank", "quarantine", "list", "-c", str(config), "--all"]) == 0
    assert capsys.readouterr().out.count("done") == 2
