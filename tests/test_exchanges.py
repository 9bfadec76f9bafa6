"""Issue 12, exchanges: url and exchange banks synced through python-threatexchange against wire-format stand-ins."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config import BankSection, BanksSection, ExchangeSection, LabelCategory, Secret
from service.exchanges.sync import BankSyncer
from service.matchers.banks import BankDelta, BankSet
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.base import SourceBase
from service.store import MemoryStore, Stores, memory_stores, sqlite_stores
from tests.helpers import until
from tests.infra.exchanges import (
    NCMEC_PASSWORD,
    NCMEC_USER,
    STOPNCII_FETCH_KEY,
    STOPNCII_SUBSCRIPTION_KEY,
    TCAP_PASSWORD,
    TCAP_USER,
    TE_PRIVACY_GROUP,
    TE_TOKEN,
    ExchangeStandIn,
    Record,
    now,
    random_hash,
)


@pytest.fixture
def standin() -> Iterator[ExchangeStandIn]:
    server = ExchangeStandIn(page_size=50)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCMEC_CREDENTIALS", f"{NCMEC_USER}:{NCMEC_PASSWORD}")
    monkeypatch.setenv("STOPNCII_KEYS", f"{STOPNCII_FETCH_KEY},{STOPNCII_SUBSCRIPTION_KEY}")
    monkeypatch.setenv("TCAP_CREDENTIALS", f"{TCAP_USER}:{TCAP_PASSWORD}")
    monkeypatch.setenv("LIST_TOKEN", "Bearer list-secret")
    monkeypatch.setenv("TE_TOKEN", TE_TOKEN)


def exchange_bank(standin: ExchangeStandIn, kind: str, name: str | None = None, **kw: object) -> BankSection:
    env = {"ncmec": "NCMEC_CREDENTIALS", "stopncii": "STOPNCII_KEYS", "tcap": "TCAP_CREDENTIALS",
           "threatexchange": "TE_TOKEN"}[kind]
    prefix = "te" if kind == "threatexchange" else kind
    ex = ExchangeSection(type=kind, credentials=Secret(env=env), base_url=standin.url(prefix),  # type: ignore[arg-type]
                         **kw)  # type: ignore[arg-type]
    category = "terrorism" if kind == "tcap" else "child-protection"
    return BankSection(name=name or kind, exchange=ex, category=category)


def make(standin: ExchangeStandIn, banks: list[BankSection], stores: Stores | None = None,
         ) -> tuple[BankSyncer, BankSet, Stores, Metrics]:
    cfg = BanksSection(list=tuple(banks), allowed_hosts=(f"127.0.0.1:{standin.port}",), retry_delay=0.01)
    metrics = Metrics()
    bank_set = BankSet(cfg, metrics)
    stores = stores or memory_stores()
    return BankSyncer(cfg, bank_set, stores.banksync, metrics), bank_set, stores, metrics


def hashes(bank_set: BankSet, name: str) -> set[str]:
    bank = bank_set.bank(name)
    assert bank is not None
    return {e.hash for e in bank.entries()}


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"mediamoderation_{name}", labels)
    return 0.0 if value is None else value


async def test_stopncii_resumes_from_its_checkpoint_and_drops_withdrawn_hashes(standin: ExchangeStandIn) -> None:
    t0 = now() - 1000
    pdqs = [random_hash("pdq") for _ in range(120)]
    for i, h in enumerate(pdqs):
        standin.add("stopncii", Record(str(i), t0 + i, {"pdq": h}, label="ncii"))
    standin.add("stopncii", Record("tmk", t0, {"tmk": "ab" * 100}))
    standin.add("stopncii", Record("video", t0 + 1, {"md5": random_hash("md5")}))
    syncer, bank_set, stores, metrics = make(standin, [exchange_bank(standin, "stopncii")])
    deltas: list[BankDelta] = []
    bank_set.subscribe(deltas.append)

    result = await syncer.sync("stopncii")
    assert result.ok and result.full and result.added == 121
    assert set(pdqs) <= hashes(bank_set, "stopncii") and bank_set.sizes()["stopncii"] == {"sha1": 0, "md5": 1,
                                                                                          "pdq": 120}
    assert metric(metrics, "bank_sync_skipped_signals_total", bank="stopncii", signal_type="VideoTMK") == 1
    assert metric(metrics, "bank_category_hashes", bank="stopncii", kind="pdq", category="child-protection") == 120
    assert sum(len(d.added) for d in deltas) == 121
    state = await stores.banksync.bank_sync_state("stopncii")
    assert state is not None and state.checkpoint["update_time"] >= t0 + 119 and state.errors == 0

    # Upstream: two withdrawn, three new.  The next sync asks only for what changed since the checkpoint.
    before = standin.requests["stopncii"]
    standin.delete("stopncii", "3", at=now())
    standin.delete("stopncii", "4", at=now())
    new = [random_hash("pdq") for _ in range(3)]
    for i, h in enumerate(new):
        standin.add("stopncii", Record(f"n{i}", now(), {"pdq": h}))
    deltas.clear()
    result = await syncer.sync("stopncii")
    assert result.ok and not result.full and (result.added, result.removed) == (3, 2)
    assert standin.requests["stopncii"] - before == 1
    have = hashes(bank_set, "stopncii")
    assert pdqs[3] not in have and pdqs[4] not in have and set(new) <= have
    assert {e.hash for d in deltas for e in d.removed} == {pdqs[3], pdqs[4]}
    stored = {r.hash for r in await stores.banksync.bank_hashes("stopncii")}
    assert stored == have


async def test_a_failing_exchange_is_retried_and_never_blocks_another(standin: ExchangeStandIn) -> None:
    for i in range(10):
        standin.add("tcap", Record(str(i + 1), now() - 100 + i, {"pdq": random_hash("pdq")}, label="far-right"))
        standin.add("stopncii", Record(str(i), now() - 100 + i, {"pdq": random_hash("pdq")}))
    tcap = exchange_bank(standin, "tcap")
    syncer, bank_set, stores, metrics = make(standin, [tcap, exchange_bank(standin, "stopncii")])
    standin.fail_next("tcap", 503, count=30)  # beyond the client's own retries
    bad, good = await syncer.sync("tcap"), await syncer.sync("stopncii")
    assert not bad.ok and good.ok and bank_set.sizes()["stopncii"]["pdq"] == 10
    assert metric(metrics, "bank_sync_errors_total", bank="tcap", reason="http") == 1
    assert metric(metrics, "bank_sync_degraded", bank="tcap") == 1
    details = syncer.details()
    assert details["tcap"]["state"] == "degraded" and details["stopncii"] == {"state": "ok"}  # type: ignore[index]
    state = await stores.banksync.bank_sync_state("tcap")
    assert state is not None and state.errors == 1 and state.last_error
    assert syncer.retry_delay("tcap", 1) < syncer.retry_delay("tcap", 5) <= tcap.interval * 1.2

    # A 429 (the token request is a POST, which the client does not retry): failed again; the next try works.
    with standin._lock:
        standin._faults["tcap"] = [429]
    assert not (await syncer.sync("tcap")).ok
    assert metric(metrics, "bank_sync_errors_total", bank="tcap", reason="http") == 2
    ok = await syncer.sync("tcap")
    assert ok.ok and bank_set.sizes()["tcap"]["pdq"] == 10 and syncer.details()["tcap"] == {"state": "ok"}
    assert metric(metrics, "bank_sync_degraded", bank="tcap") == 0


async def test_wrong_credentials_are_an_auth_error(standin: ExchangeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOPNCII_KEYS", "wrong,keys")
    syncer, _, _, metrics = make(standin, [exchange_bank(standin, "stopncii")])
    result = await syncer.sync("stopncii")
    assert not result.ok and metric(metrics, "bank_sync_errors_total", bank="stopncii", reason="auth") == 1


async def test_ncmec_pages_resume_labels_and_truncated_pages(standin: ExchangeStandIn) -> None:
    base = now() - 3 * 3600
    recs = []
    for i in range(130):
        fp = {"md5": random_hash("md5"), "pdq": random_hash("pdq"), "pdna": "1,2,3"}
        if i % 2:
            fp["sha1"] = random_hash("sha1")
        recs.append(Record(str(i), base + i * 30, fp, label="A1" if i % 3 else "B2"))
        standin.add("ncmec", recs[-1])
    rules = (LabelCategory(label="a1", category="child-protection"), LabelCategory(label="B2", category="exploitative"))
    bank = exchange_bank(standin, "ncmec", categories=rules)
    syncer, bank_set, stores, metrics = make(standin, [bank])
    result = await syncer.sync("ncmec")
    assert result.ok, result.error
    assert bank_set.sizes()["ncmec"] == {"sha1": 65, "md5": 130, "pdq": 130}
    assert metric(metrics, "bank_sync_skipped_signals_total", bank="ncmec", signal_type="pdna") == 130
    cats = {e.category for e in bank_set.bank("ncmec").entries()}  # type: ignore[union-attr]
    assert cats == {"child-protection", "exploitative"}
    match = bank_set.match_md5(recs[7].fingerprints["md5"])
    assert [(m.bank, m.hash_id, m.category) for m in match] == [("ncmec", "42-7", "child-protection")]

    # Deleted upstream; and one truncated XML page on the way: the sync fails (data), the next one resumes.
    # NCMEC's client fetches up to 5 s before now: changes stamped at the checkpoint are in the next window.
    state = await stores.banksync.bank_sync_state("ncmec")
    assert state is not None
    at = state.checkpoint["get_entries_max_ts"]
    standin.delete("ncmec", "7", at=at)
    for i in range(60):
        standin.add("ncmec", Record(f"x{i}", at, {"pdq": random_hash("pdq")}))
    await until(lambda: now() - 5 > at, timeout=10, what="a second of NCMEC window")
    standin.truncate_next("ncmec")
    bad = await syncer.sync("ncmec")
    assert not bad.ok and metric(metrics, "bank_sync_errors_total", bank="ncmec", reason="data") == 1
    good = await syncer.sync("ncmec")
    assert good.ok, good.error
    assert bank_set.match_md5(recs[7].fingerprints["md5"]) == []
    assert bank_set.sizes()["ncmec"]["pdq"] == 130 - 1 + 60


async def test_a_stale_checkpoint_refetches_everything_and_swaps_only_when_complete(
        standin: ExchangeStandIn) -> None:
    old = [random_hash("pdq") for _ in range(60)]
    for i, h in enumerate(old):
        standin.add("stopncii", Record(str(i), now() - 500 + i, {"pdq": h}))
    syncer, bank_set, stores, _ = make(standin, [exchange_bank(standin, "stopncii")])
    assert (await syncer.sync("stopncii")).ok
    # Upstream forgot record 0 entirely (no deletion record: it fell out of the retention window).
    with standin._lock:
        standin.feeds["stopncii"].records = [r for r in standin.feeds["stopncii"].records if r.id != "0"]
        standin.feeds["stopncii"].reindex()
    state = await stores.banksync.bank_sync_state("stopncii")
    assert state is not None
    stale = {**state.checkpoint, "last_fetch_time": now() - 40 * 86400}
    await stores.banksync.apply_bank_delta("stopncii", [], [], stale)
    seen_during: list[bool] = []
    result = await syncer.sync("stopncii", progress=lambda n, size: seen_during.append(old[0] in hashes(bank_set,
                                                                                                        "stopncii")))
    assert result.ok and result.full
    assert seen_during and all(seen_during)  # matching kept the old content while the full list came in
    assert old[0] not in hashes(bank_set, "stopncii") and set(old[1:]) <= hashes(bank_set, "stopncii")
    assert old[0] not in {r.hash for r in await stores.banksync.bank_hashes("stopncii")}


async def test_a_restart_loads_the_stored_bank_without_refetching(standin: ExchangeStandIn, tmp_path: Path) -> None:
    pdqs = [random_hash("pdq") for _ in range(20)]
    for i, h in enumerate(pdqs):
        standin.add("tcap", Record(str(i + 1), now() - 100 + i, {"pdq": h}))
    path = str(tmp_path / "db.sqlite3")
    stores = sqlite_stores(path)
    await stores.open()
    try:
        syncer, _, _, _ = make(standin, [exchange_bank(standin, "tcap")], stores)
        assert (await syncer.sync("tcap")).ok
    finally:
        await stores.close()
    before = standin.requests["tcap"]
    stores = sqlite_stores(path)
    await stores.open()
    try:
        syncer, bank_set, _, _ = make(standin, [exchange_bank(standin, "tcap")], stores)
        deltas: list[BankDelta] = []
        bank_set.subscribe(deltas.append)
        await syncer.load()
        assert hashes(bank_set, "tcap") == set(pdqs) and standin.requests["tcap"] == before and not deltas
        standin.add("tcap", Record("99", now(), {"pdq": (new := random_hash("pdq"))}))
        result = await syncer.sync("tcap")  # continues from the stored checkpoint
        assert result.ok and not result.full and result.added == 1 and new in hashes(bank_set, "tcap")
        assert [len(d.added) for d in deltas] == [1]
    finally:
        await stores.close()


async def test_url_bank_etag_auth_header_and_allowlist(standin: ExchangeStandIn) -> None:
    rows = [json.dumps({"hash": random_hash("sha1"), "category": "", "source": "curated", "id": f"c{i}"})
            for i in range(5)]
    standin.set_list("list.jsonl", "\n".join(rows).encode())
    bank = BankSection(name="curated", url=standin.url("lists") + "/list.jsonl", category="child-protection",
                       auth=Secret(env="LIST_TOKEN"))
    syncer, bank_set, _, _ = make(standin, [bank])
    first = await syncer.sync("curated")
    assert first.ok and first.added == 5 and bank_set.sizes()["curated"]["sha1"] == 5
    assert standin.list_requests[-1]["Authorization"] == "Bearer list-secret"
    second = await syncer.sync("curated")
    assert second.ok and second.added == second.removed == 0
    assert standin.list_requests[-1].get("If-None-Match")  # answered 304
    standin.set_list("list.jsonl", "\n".join(rows[1:]).encode())
    third = await syncer.sync("curated")
    assert third.ok and (third.added, third.removed) == (0, 1) and bank_set.sizes()["curated"]["sha1"] == 4

    # A host not in banks.allowed_hosts is never contacted.
    cfg = BanksSection(list=(bank,), allowed_hosts=("hashes.example.org",))
    metrics = Metrics()
    refused = BankSyncer(cfg, BankSet(cfg, metrics), MemoryStore(), metrics)
    count = len(standin.list_requests)
    result = await refused.sync("curated")
    assert not result.ok and "allowed_hosts" in (result.error or "") and len(standin.list_requests) == count
    assert metric(metrics, "bank_sync_errors_total", bank="curated", reason="refused") == 1


def test_config_accepts_exchange_and_url_banks_and_keeps_path_banks(tmp_path: Path) -> None:
    from service.config import ConfigFileError, config_from_dict

    (tmp_path / "b.csv").write_text("hash,category,source,id\n")
    base = {"service": {"user_agent": "mm-test/0.1 (ts@example.org)"},
            "wikis": [{"id": "w", "api_url": "https://w.example/api.php"}],
            "actions": {"notify": {"enabled": False}}}
    banks = {"allowed_hosts": ["hashes.example.org"], "list": [
        {"name": "local", "path": "b.csv", "category": "child-protection"},
        {"name": "ncmec", "category": "child-protection", "interval": 600,
         "exchange": {"type": "ncmec", "credentials": {"env": "NCMEC_CREDENTIALS"}, "environment": "NGO",
                      "categories": [{"label": "A1", "category": "child-protection"}]}},
        {"name": "list", "category": "terrorism", "url": "https://hashes.example.org/l.csv",
         "auth": {"file": "/run/secrets/list"}},
    ]}
    cfg = config_from_dict({**base, "banks": banks}, base=tmp_path)
    assert [b.kind for b in cfg.banks.list] == ["file", "exchange", "url"]
    assert cfg.banks.list[1].exchange is not None and cfg.banks.list[1].exchange.environment == "NGO"
    banks["list"][2]["url"] = "https://elsewhere.example.org/l.csv"
    banks["list"][1]["exchange"]["environment"] = "Nowhere"
    with pytest.raises(ConfigFileError) as info:
        config_from_dict({**base, "banks": banks}, base=tmp_path)
    problems = dict(info.value.problems)
    assert "not in banks.allowed_hosts" in problems["banks.list[2].url"]
    assert "must be one of" in problems["banks.list[1].exchange.environment"]


class _IdleSource(SourceBase):
    name = "idle"
    connected = True

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        await stop.wait()

    async def commit(self, position: Any) -> None:
        pass


async def test_the_service_syncs_each_bank_in_its_own_task_and_reports_a_failing_one_as_degraded(
        standin: ExchangeStandIn, tmp_path: Path) -> None:
    from service.app import Service
    from service.config import config_from_dict

    pdq = random_hash("pdq")
    standin.add("tcap", Record("1", now() - 10, {"pdq": pdq}))
    standin.fail_next("stopncii", 401, count=1000)
    cfg = config_from_dict({
        "service": {"user_agent": "mm-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "w", "api_url": "https://w.example/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "http": {"port": 0},
        "pipeline": {"cpu_pool": "thread"},
        "store": {"path": str(tmp_path / "db.sqlite3")},
        "banks": {"allowed_hosts": [f"127.0.0.1:{standin.port}"], "retry_delay": 0.05, "list": [
            {"name": "tcap", "category": "terrorism", "exchange": {
                "type": "tcap", "credentials": {"env": "TCAP_CREDENTIALS"}, "base_url": standin.url("tcap")}},
            {"name": "stopncii", "category": "ncii", "exchange": {
                "type": "stopncii", "credentials": {"env": "STOPNCII_KEYS"}, "base_url": standin.url("stopncii")}},
        ]},
    }, base=tmp_path)
    service = Service(cfg, source=_IdleSource())
    task = asyncio.create_task(service.run())
    try:
        await until(service.started, timeout=30)
        await until(lambda: pdq in hashes(service.banks, "tcap"), timeout=30, what="tcap synced")
        await until(lambda: standin.requests["stopncii"] >= 3, timeout=30, what="stopncii retried with backoff")
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{service.http_port}/healthz/pipeline") as r:
            body = await r.json()
        assert r.status == 200, body  # degraded, not unready
        sync = body["details"]["bank_sync"]
        assert sync["tcap"] == {"state": "ok"} and sync["stopncii"]["state"] == "degraded"
        assert service.supervisor.problem() is None
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)


async def test_a_sync_by_another_process_is_loaded_before_the_next_delta(standin: ExchangeStandIn) -> None:
    first = [random_hash("pdq") for _ in range(5)]
    for i, h in enumerate(first):
        standin.add("stopncii", Record(str(i), now() - 100 + i, {"pdq": h}))
    bank = exchange_bank(standin, "stopncii")
    service, service_banks, stores, _ = make(standin, [bank])
    await service.load()  # the service starts with an empty store
    cli, _, _, _ = make(standin, [bank], stores)  # `bank sync` in another process, same store
    assert (await cli.sync("stopncii")).ok
    later = random_hash("pdq")
    standin.add("stopncii", Record("later", now(), {"pdq": later}))
    assert (await service.sync("stopncii")).ok
    assert hashes(service_banks, "stopncii") == {*first, later}


async def test_threatexchange_privacy_group_tags_deletions_and_resume(standin: ExchangeStandIn) -> None:
    t0 = now() - 1000
    pdqs = [random_hash("pdq") for _ in range(120)]
    for i, h in enumerate(pdqs):
        standin.add("te", Record(str(i), t0 + i, {"pdq": h}, label="gifct_category_x" if i % 2 else "other"))
    standin.add("te", Record("1000", t0, {"md5": random_hash("md5")}))
    standin.add("te", Record("1001", t0, {"tmk": "00ff"}))
    rules = (LabelCategory(label="GIFCT_category_x", category="terrorism"),)
    bank = exchange_bank(standin, "threatexchange", privacy_group=TE_PRIVACY_GROUP, categories=rules)
    syncer, bank_set, _, metrics = make(standin, [bank])
    result = await syncer.sync("threatexchange")
    assert result.ok, result.error
    assert bank_set.sizes()["threatexchange"] == {"sha1": 0, "md5": 1, "pdq": 120}
    assert metric(metrics, "bank_sync_skipped_signals_total", bank="threatexchange", signal_type="HASH_TMK") == 1
    by_hash = {e.hash: e.category for e in bank_set.bank("threatexchange").entries()}  # type: ignore[union-attr]
    assert by_hash[pdqs[1]] == "terrorism" and by_hash[pdqs[2]] == "child-protection"
    before = standin.requests["te"]
    standin.delete("te", "5", at=now())
    assert (await syncer.sync("threatexchange")).ok
    assert pdqs[5] not in hashes(bank_set, "threatexchange") and standin.requests["te"] - before == 1
