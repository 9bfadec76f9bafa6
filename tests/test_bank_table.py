"""Banks kept compactly and changed incrementally: BankTable and BankSet.apply_delta / set_entries."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.config import BankSection, BanksSection
from service.matchers.bank_table import BankEntry, BankTable, entry_key
from service.matchers.banks import BankDelta, BankSet
from service.metrics import Metrics
from service.models import PdqSignal
from tests.helpers import until

RNG = np.random.default_rng(2026)


def pdq_hex(rng: np.random.Generator = RNG) -> str:
    return rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()


def entries(n: int, kind: str = "pdq", *, prefix: str = "e", category: str = "terrorism") -> list[BankEntry]:
    size = {"sha1": 20, "md5": 16, "pdq": 32}[kind]
    rng = np.random.default_rng(abs(hash((n, kind, prefix))) % 2**32)
    return [BankEntry(hash=rng.integers(0, 256, size, dtype=np.uint8).tobytes().hex(), category=category,
                      source=f"src-{i % 3}", id=f"{prefix}-{i}") for i in range(n)]


def exchange_set() -> tuple[BankSet, Metrics]:
    metrics = Metrics()
    cfg = BanksSection(list=[BankSection(name="x", category="child-protection",
                                         url="https://lists.example/x.csv")])
    return BankSet(cfg, metrics), metrics


def sig(*hexes: str) -> PdqSignal:
    """A signal whose first variants are ``hexes``, the others unrelated."""
    rng = np.random.default_rng(5)
    pad = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(8 - len(hexes))]
    return PdqSignal(hashes=(*(bytes.fromhex(h) for h in hexes), *pad), quality=100)


def test_metadata_round_trip_without_objects_per_hash() -> None:
    table = BankTable()
    items = [*entries(50), *entries(30, "sha1"), *entries(20, "md5"),
             BankEntry(hash="ab" * 32, category="c", source="", id=""),
             BankEntry(hash="cd" * 20, category="c", source="ünïcode", id="id with ✓")]
    table.replace(items)
    assert set(table.entries()) == set(items)
    assert table.sizes() == {"sha1": 31, "md5": 20, "pdq": 51}
    rows = table.state.rows["pdq"]
    # packed columns, string codes into one small table
    assert rows.hashes.dtype == np.uint8 and rows.category.dtype == np.uint32 and isinstance(rows.blob, bytes)
    assert len(table.strings) == len({"", "terrorism", "c", "src-0", "src-1", "src-2", "ünïcode"})
    assert table.category_sizes() == {("pdq", "terrorism"): 50, ("pdq", "c"): 1, ("sha1", "terrorism"): 30,
                                      ("sha1", "c"): 1, ("md5", "terrorism"): 20}


def test_identical_entries_are_kept_once() -> None:
    table = BankTable()
    e = entries(3)
    table.replace([*e, e[0]])
    assert table.sizes()["pdq"] == 3


def test_apply_adds_removes_and_both() -> None:
    banks, metrics = exchange_set()
    base = entries(100)
    assert banks.apply_delta("x", base, []) is not None
    v1 = banks.version
    new = entries(10, prefix="new")
    delta = banks.apply_delta("x", new, base[:5])
    assert delta is not None and isinstance(delta, BankDelta)
    assert set(delta.added) == set(new) and set(delta.removed) == set(base[:5])
    assert banks.version != v1
    assert banks.sizes()["x"]["pdq"] == 105
    assert metrics.registry.get_sample_value("mediamoderation_bank_hashes", {"bank": "x", "kind": "pdq"}) == 105
    for e in new:
        assert [m.hash_id for m in banks.match_pdq(sig(e.hash))] == [e.id]
    for e in base[:5]:
        assert banks.match_pdq(sig(e.hash)) == []
    # an entry both removed and added stays; unknown removals and present additions change nothing
    v2 = banks.version
    assert banks.apply_delta("x", [base[10], base[11]], [base[10], *entries(3, prefix="never")]) is None
    assert banks.version == v2
    assert [m.hash_id for m in banks.match_pdq(sig(base[10].hash))] == [base[10].id]
    # removing everything, then adding back the same content, gives the same version again
    banks.set_entries("x", [], digest="empty")
    assert banks.sizes()["x"] == {"sha1": 0, "md5": 0, "pdq": 0}
    banks.set_entries("x", [*base[5:], *new], digest="again")
    assert banks.version == v2


def test_set_entries_publishes_the_difference() -> None:
    banks, _ = exchange_set()
    old = [*entries(20), *entries(5, "sha1")]
    banks.set_entries("x", old, digest="1", publish=False)
    changed = [*old[2:], BankEntry(hash=old[0].hash, category="other", source="s", id="moved")]
    delta = banks.set_entries("x", changed, digest="2")
    assert delta is not None
    assert delta.added == (changed[-1],)
    assert set(delta.removed) == set(old[:2])
    sha1 = old[-1].hash
    assert [(m.bank, m.category, m.hash_id, m.hash_value, m.source) for m in banks.match_sha1(sha1.upper())] == [
        ("x", "terrorism", old[-1].id, sha1, old[-1].source)]


def test_exact_lookups_return_every_entry_of_a_hash() -> None:
    banks, _ = exchange_set()
    h = "9e107d9d372bb6826bd81d3542a419d6"
    banks.apply_delta("x", [BankEntry(h, "a", "s1", "one"), BankEntry(h, "b", "s2", "two")], [])
    assert sorted(m.hash_id for m in banks.match_md5(h)) == ["one", "two"]
    assert banks.match_md5("not hex") == [] and banks.match_sha1(h) == []


def test_version_is_stable_across_processes() -> None:
    # the version goes into stored scan results: entry keys are BLAKE2b, not Python's salted hash()
    assert entry_key("ab" * 32, "c", "s", "i") == 0x701EC46BADEB24A9
    a, _ = exchange_set()
    b, _ = exchange_set()
    items = entries(40)
    a.apply_delta("x", items, [])
    b.apply_delta("x", items[20:], [])
    b.apply_delta("x", items[:20], [])
    assert a.version == b.version


def test_lookups_during_a_concurrent_apply_see_either_state() -> None:
    """A delta that replaces every entry's id and removes some: a lookup sees all the old or all the new."""
    banks, _ = exchange_set()
    hashes = [pdq_hex() for _ in range(40)]
    old = [BankEntry(h, "c", "s", f"old-{i}") for i, h in enumerate(hashes)]
    new = [BankEntry(h, "c", "s", f"new-{i}") for i, h in enumerate(hashes[:30])]
    stays = BankEntry(pdq_hex(), "c", "s", "stays")
    banks.set_entries("x", [*old, stays], digest="old")
    probe = sig(hashes[0], hashes[35], stays.hash)  # one lookup: one state
    stop = threading.Event()
    seen: set[tuple[str, ...]] = set()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            ids = tuple(sorted(m.hash_id for m in banks.match_pdq(probe)))
            seen.add(ids)
            if "stays" not in ids:
                problems.append("an entry that stays was missed")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            banks.apply_delta("x", new, old)
            banks.apply_delta("x", old, new)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems
    assert seen <= {("old-0", "old-35", "stays"), ("new-0", "stays")}, seen
    assert len(seen) == 2  # the readers ran during the changes


@pytest.mark.parametrize("rounds", [200])
def test_memory_does_not_grow_across_deltas(rounds: int) -> None:
    table = BankTable()
    table.replace(entries(2000))
    size = table.nbytes()
    for r in range(rounds):
        batch = entries(50, prefix=f"r{r}")
        table.apply(batch, [])
        table.apply([], batch)
    assert table.sizes()["pdq"] == 2000
    assert table.nbytes() <= size + (1 << 20) + 50 * 200  # the id blob is compacted


async def test_an_apply_waits_for_lookups_of_the_old_state_before_shrinking_the_index() -> None:
    table = BankTable()
    items = entries(5)
    table.replace(items)
    query = np.frombuffer(bytes.fromhex(items[0].hash), np.uint64).reshape(1, 4)
    with table.reading() as old:
        writer = threading.Thread(target=table.apply, args=([], items[:1]))
        writer.start()
        await until(lambda: table.state is not old, 10, what="the new state published")
        assert len(table.state.rows["pdq"]) == 4
        assert [slot for slot, _, _ in table.pdq.query(query, 0)] == [int(old.rows["pdq"].slots[0])]  # still there
        assert writer.is_alive()
    await until(lambda: not writer.is_alive(), 10, what="the writer done")
    assert table.pdq.query(query, 0) == []


def test_entries_by_id_for_record_updates() -> None:
    banks, _ = exchange_set()
    rec = [BankEntry(pdq_hex(), "c", "ncmec", "rec-1"), BankEntry("ab" * 20, "c", "ncmec", "rec-1"),
           BankEntry(pdq_hex(), "c", "ncmec", "rec-2")]
    banks.set_entries("x", [*rec, *entries(500)], digest="1")
    assert set(banks.entries_with_ids("x", ["rec-1", "nope"])) == set(rec[:2])
    # what a sync does with an updated record: its old entries out, its new ones in
    new = [BankEntry(pdq_hex(), "c", "ncmec", "rec-1")]
    delta = banks.apply_delta("x", new, banks.entries_with_ids("x", ["rec-1"]))
    assert delta is not None and set(delta.removed) == set(rec[:2]) and delta.added == tuple(new)
    assert banks.entries_with_ids("x", ["rec-1"]) == new


def test_an_upper_case_hash_is_the_same_entry_as_its_lower_case() -> None:
    table = BankTable()
    upper = BankEntry("AB" * 32, "c", "s", "rec")
    table.apply([upper], [])
    (stored,) = table.entries()
    assert stored.hash == "ab" * 32
    table.apply([], [stored])  # what a sync does with the entry it read back
    assert table.sizes()["pdq"] == 0 and table.state.xor == 0
