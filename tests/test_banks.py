"""service.matchers.banks: strict parsing, exact and PDQ lookups, versions and reloading."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from service.config import BankSection, BanksSection, PdqViewsSection, ThumbnailSection
from service.errors import BankError
from service.matchers.banks import BankSet, parse_bank, pdq_scan, pdq_words
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import PdqSignal
from tests.infra import images

ROOT = Path(__file__).resolve().parent.parent
HEADER = "hash,category,source,id\n"
SHA1 = "3f786850e387550fdab836ed7e6dc881de23001b"
MD5 = "9e107d9d372bb6826bd81d3542a419d6"
RNG = np.random.default_rng(1234)
PDQ_A = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
PDQ_B = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()


def flip(h: bytes, n: int, start: int = 0) -> bytes:
    """``h`` with ``n`` bits flipped (bits start .. start+n-1, counted from the most significant)."""
    value = int.from_bytes(h, "big")
    for i in range(start, start + n):
        value ^= 1 << (255 - i)
    return value.to_bytes(32, "big")


def signal(*hashes: bytes, quality: int = 100) -> PdqSignal:
    """A signal whose eight variants are ``hashes`` padded with unrelated random hashes."""
    rng = np.random.default_rng(99)
    pad = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(8 - len(hashes))]
    return PdqSignal(hashes=(*hashes, *pad), quality=quality)


def write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def bank_cfg(
    path: Path, name: str = "test", category: str = "child-protection", threshold: int = 31
) -> BankSection:
    return BankSection(name=name, path=str(path), category=category, pdq_threshold=threshold)


def make(*banks: BankSection, quality_min: int = 50) -> tuple[BankSet, Metrics]:
    metrics = Metrics()
    return BankSet(BanksSection(pdq_quality_min=quality_min, list=banks), metrics), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"mediamoderation_{name}", labels)


# --------------------------------------------------------------------------- parsing


def test_parses_all_kinds(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [
        f"{SHA1.upper()},,ncmec,n-1",
        f"{MD5},terrorism,tcap,",
        f"{PDQ_A.hex().upper()},,gifct,g-7",
        "",
        f"{PDQ_B.hex()},other,,",
    ])
    banks, metrics = make(bank_cfg(path))
    assert banks.sizes() == {"test": {"sha1": 1, "md5": 1, "pdq": 2}}
    assert banks.pdq_count == 2
    assert sample(metrics, "bank_hashes", bank="test", kind="pdq") == 2
    assert sample(metrics, "bank_reloads_total", bank="test", result="loaded") == 1

    (m,) = banks.match_sha1(SHA1)  # stored lower-case
    assert (m.matcher, m.bank, m.category, m.hash_id, m.hash_value, m.source) == (
        "sha1", "test", "child-protection", "n-1", SHA1, "ncmec")
    (m,) = banks.match_md5(MD5.upper())
    assert (m.category, m.hash_id, m.source) == ("terrorism", MD5, "tcap")  # empty id: the hash
    assert banks.match_sha1(MD5) == [] and banks.match_md5(SHA1) == []
    assert banks.match_sha1("0" * 40) == []


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("", None, "empty file"),
        ("hash,category,id\n", 1, "header"),
        (HEADER + f"{SHA1},,src,1\n{SHA1},,src\n", 3, "expected 4 fields, got 3"),
        (HEADER + f"{SHA1},,src,1,extra\n", 2, "got 5"),
        (HEADER + f"{SHA1[:-1]}x,,src,1\n", 2, "hex digits"),
        (HEADER + f"{SHA1}00,,src,1\n", 2, "hex digits"),
        (HEADER + "\n\n" + "abc,,src,1\n", 4, "hex digits"),
        (HEADER + f'{SHA1},"unterminated,src,1\n', 2, None),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, content: str, line: int | None,
                                            words: str | None) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BankError) as info:
        make(bank_cfg(path))
    message = str(info.value)
    assert str(path) in message
    if line is not None:
        assert f"{path}:{line}:" in message
    if words:
        assert words in message


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + f"{SHA1},caf\xe9,src,1\n".encode("latin-1"))
    with pytest.raises(BankError, match="not UTF-8"):
        make(bank_cfg(path))
    with pytest.raises(BankError, match=r"missing\.csv"):
        make(bank_cfg(tmp_path / "missing.csv"))


def test_parse_bank_accepts_bom_and_crlf() -> None:
    data = ("\ufeff" + HEADER + f"{SHA1},,src,1\r\n").replace("\n", "\r\n").encode()
    bank = parse_bank(BankSection(name="x", category="c"), data)
    assert bank.sizes() == {"sha1": 1, "md5": 0, "pdq": 0}


# --------------------------------------------------------------------------- PDQ


def test_pdq_thresholds_are_per_bank(tmp_path: Path) -> None:
    loose = write(tmp_path / "loose.csv", [f"{PDQ_A.hex()},,src,a"])
    strict = write(tmp_path / "strict.csv", [f"{PDQ_A.hex()},,src,a"])
    banks, _ = make(bank_cfg(loose, "loose", threshold=31), bank_cfg(strict, "strict", threshold=10))
    assert [m.bank for m in banks.match_pdq(signal(flip(PDQ_A, 10)))] == ["loose", "strict"]
    (m,) = banks.match_pdq(signal(flip(PDQ_A, 11)))
    assert (m.bank, m.distance, m.details["threshold"]) == ("loose", 11, 31)
    assert [m.bank for m in banks.match_pdq(signal(flip(PDQ_A, 31)))] == ["loose"]  # <= threshold
    assert banks.match_pdq(signal(flip(PDQ_A, 32))) == []


def test_all_variants_are_compared_and_the_best_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [f"{PDQ_A.hex()},,src,a", f"{PDQ_B.hex()},,src,b"])
    banks, _ = make(bank_cfg(path))
    # A is near variants 3 (5 bits) and 6 (20 bits); B is near variant 7 (2 bits)
    query = signal(PDQ_A[::-1], PDQ_A[::-1], PDQ_A[::-1], flip(PDQ_A, 5), PDQ_A[::-1], PDQ_A[::-1],
                   flip(PDQ_A, 20, 100), flip(PDQ_B, 2, 40))
    matches = banks.match_pdq(query)
    assert [(m.hash_id, m.distance, m.details["variant"]) for m in matches] == [
        ("b", 2, "flip-minus1"), ("a", 5, "rotate270")]  # sorted by distance
    assert matches[0].hash_value == PDQ_B.hex() and matches[0].details["quality"] == 100


def test_lookups_are_timed_per_upload_and_kind(tmp_path: Path) -> None:
    """``index_query_seconds`` counts one observation per upload lookup (all banks, all variants), by kind."""
    one = write(tmp_path / "one.csv", [f"{PDQ_A.hex()},,src,a"])
    two = write(tmp_path / "two.csv", [f"{PDQ_B.hex()},,src,b"])
    banks, metrics = make(bank_cfg(one, "one"), bank_cfg(two, "two"))
    banks.match_pdq(signal(flip(PDQ_A, 3)), signal(PDQ_B))
    banks.match_pdq(signal(PDQ_B))
    banks.match_sha1("0" * 40)
    assert sample(metrics, "index_query_seconds_count", kind="pdq") == 2
    assert sample(metrics, "index_query_seconds_count", kind="sha1") == 1
    assert sample(metrics, "index_query_seconds_count", kind="md5") is None
    pdq_time = sample(metrics, "index_query_seconds_sum", kind="pdq")
    assert pdq_time is not None and 0 < pdq_time < 5


def test_low_quality_signals_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [f"{PDQ_A.hex()},,src,a"])
    banks, _ = make(bank_cfg(path), quality_min=50)
    assert banks.match_pdq(signal(PDQ_A, quality=49)) == []
    assert len(banks.match_pdq(signal(PDQ_A, quality=50))) == 1


def test_scan_agrees_with_brute_force() -> None:
    rng = np.random.default_rng(7)
    bank = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    base = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    # plant near copies of the query variants at known distances
    for i, (v, n_bits) in enumerate([(0, 3), (2, 25), (5, 31), (7, 32), (1, 60), (4, 100)]):
        row = np.unpackbits(base[v])
        row[rng.choice(256, n_bits, replace=False)] ^= 1
        bank[100 + i] = np.packbits(row)
    words = np.ascontiguousarray(np.frombuffer(bank.tobytes(), dtype=np.uint64).reshape(-1, 4).T)
    query = pdq_words(PdqSignal(hashes=tuple(r.tobytes() for r in base), quality=100))
    bits = np.unpackbits(bank, axis=1)
    qbits = np.unpackbits(base, axis=1)
    brute = (bits[:, None, :] != qbits[None, :, :]).sum(axis=2)  # (N, 8)
    for threshold in (0, 31, 60, 100, 128, 256):
        expected = {i: int(brute[i].min()) for i in range(len(bank)) if brute[i].min() <= threshold}
        got = pdq_scan(words, query, threshold)
        assert {i: d for i, (d, _) in got.items()} == expected, threshold
        for i, (d, v) in got.items():
            assert brute[i, v] == d


def test_empty_banks_match_nothing(tmp_path: Path) -> None:
    banks, _ = make(bank_cfg(write(tmp_path / "b.csv", [])))
    assert banks.match_pdq(signal(PDQ_A)) == []
    assert banks.sizes() == {"test": {"sha1": 0, "md5": 0, "pdq": 0}}
    assert make()[0].match_pdq(signal(PDQ_A)) == []


def test_a_single_hash_bank_matches() -> None:
    """threatexchange's FAISS index misses when it holds a single hash; a linear scan does not."""
    bank = parse_bank(BankSection(name="x", category="c"), (HEADER + f"{PDQ_A.hex()},,s,1\n").encode())
    assert pdq_scan(bank.pdq_words, pdq_words(signal(flip(PDQ_A, 7))), 31) == {0: (7, 0)}


def test_example_bank_matches_the_generated_images() -> None:
    path = ROOT / "banks" / "example.csv"
    banks, _ = make(bank_cfg(path, "example", category="test"))
    assert banks.sizes() == {"example": {"sha1": 3, "md5": 3, "pdq": 3}}
    data = images.jpeg_bytes(images.photo(9002))
    media = prepare(data, "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    assert [m.hash_id for m in banks.match_pdq(media.pdq)] == ["example-9002"]
    rotated = prepare(images.variants(images.photo(9003))["rotated"], "0" * 40, ThumbnailSection())
    assert rotated.pdq is not None
    assert [m.hash_id for m in banks.match_pdq(rotated.pdq)] == ["example-9003"]
    assert all(m.category == "test" for m in banks.match_pdq(media.pdq))


# --------------------------------------------------------------------------- versions and reloads


def test_version_tracks_content_and_config(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [f"{SHA1},,src,1"])
    v1 = make(bank_cfg(path))[0].version
    assert v1 == make(bank_cfg(path))[0].version  # stable
    assert v1 != make(bank_cfg(path, threshold=20))[0].version
    assert v1 != make(bank_cfg(path, category="terrorism"))[0].version
    assert v1 != make(bank_cfg(path, name="other"))[0].version
    write(path, [f"{SHA1},,src,2"])
    assert v1 != make(bank_cfg(path))[0].version


def test_version_changes_with_the_views_hashed(tmp_path: Path) -> None:
    """Files scanned clean before the derived views changed (e.g. new uncrop margins) are matched again."""
    path = write(tmp_path / "b.csv", [f"{SHA1},,src,1"])

    def version(views: PdqViewsSection) -> str:
        return BankSet(BanksSection(list=(bank_cfg(path),)), Metrics(), views=views).version

    default = version(PdqViewsSection())
    assert default == version(PdqViewsSection())
    assert default != version(PdqViewsSection(uncrop=(0.025, 0.05)))
    assert default != version(PdqViewsSection(trim_caption=False))


def bump_mtime(path: Path) -> None:
    """Make sure a rewrite is visible to the stat check even on coarse-mtime filesystems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_on_change(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [f"{SHA1},,src,1"])
    banks, metrics = make(bank_cfg(path))
    v1 = banks.version
    assert banks.reload_if_changed() is False

    new_pdq = flip(PDQ_A, 0)
    write(path, [f"{SHA1},,src,1", f"{MD5},,src,2", f"{new_pdq.hex()},,src,3"])
    bump_mtime(path)
    assert banks.reload_if_changed() is True
    assert banks.version != v1
    assert [m.hash_id for m in banks.match_md5(MD5)] == ["2"]
    assert [m.hash_id for m in banks.match_pdq(signal(new_pdq))] == ["3"]
    assert sample(metrics, "bank_reloads_total", bank="test", result="reloaded") == 1
    assert sample(metrics, "bank_hashes", bank="test", kind="md5") == 1
    assert banks.reload_if_changed() is False

    # touched with the same content: no reload, same version
    v2 = banks.version
    bump_mtime(path)
    assert banks.reload_if_changed() is False
    assert banks.version == v2


def test_broken_update_keeps_the_old_bank(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "b.csv", [f"{SHA1},,src,1"])
    banks, metrics = make(bank_cfg(path))
    v1 = banks.version
    write(path, [f"{MD5},,src,2", "not-a-hash,,src,3"])
    bump_mtime(path)
    with caplog.at_level(logging.ERROR, logger="service.matchers.banks"):
        assert banks.reload_if_changed() is False
    assert f"{path}:3:" in caplog.text
    assert banks.version == v1
    assert len(banks.match_sha1(SHA1)) == 1 and banks.match_md5(MD5) == []
    assert sample(metrics, "bank_reloads_total", bank="test", result="error") == 1

    # the same broken file is reported once, not on every check
    assert banks.reload_if_changed() is False
    assert sample(metrics, "bank_reloads_total", bank="test", result="error") == 1

    # repaired: loads
    write(path, [f"{MD5},,src,2"])
    bump_mtime(path)
    assert banks.reload_if_changed() is True
    assert banks.match_sha1(SHA1) == [] and len(banks.match_md5(MD5)) == 1


def test_deleted_file_keeps_the_old_bank(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [f"{SHA1},,src,1"])
    other = write(tmp_path / "c.csv", [f"{MD5},,src,1"])
    banks, metrics = make(bank_cfg(path), bank_cfg(other, "other"))
    path.unlink()
    write(other, [f"{MD5},,src,1", f"{SHA1},,src,9"])
    bump_mtime(other)
    assert banks.reload_if_changed() is True  # the other bank still reloads
    assert sorted(m.bank for m in banks.match_sha1(SHA1)) == ["other", "test"]
    assert sample(metrics, "bank_reloads_total", bank="test", result="error") == 1
    assert banks.reload_if_changed() is False
    assert sample(metrics, "bank_reloads_total", bank="test", result="error") == 1


async def test_watch_reloads_until_stopped(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", [f"{SHA1},,src,1"])
    banks, _ = make(bank_cfg(path))
    loop = asyncio.get_running_loop()
    reloaded = asyncio.Event()
    reload = banks.reload_if_changed

    def spy() -> bool:  # runs in the watcher's worker thread
        changed = reload()
        if changed:
            loop.call_soon_threadsafe(reloaded.set)
        return changed

    banks.reload_if_changed = spy  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(banks.watch(0.01, stop))
    write(path, [f"{MD5},,src,2"])
    bump_mtime(path)
    await asyncio.wait_for(reloaded.wait(), timeout=5)
    assert len(banks.match_md5(MD5)) == 1
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert task.result() is None


async def test_watch_disabled_returns_at_once(tmp_path: Path) -> None:
    banks, _ = make(bank_cfg(write(tmp_path / "b.csv", [])))
    await asyncio.wait_for(banks.watch(0, asyncio.Event()), timeout=1)


def test_reload_publishes_what_was_added_and_removed(tmp_path: Path) -> None:
    from service.matchers.banks import BankDelta

    path = tmp_path / "b.csv"
    path.write_text("hash,category,source,id\n" + "a" * 40 + ",,s,one\n" + "b" * 64 + ",,s,two\n")
    banks, _ = make(BankSection(name="b", path=str(path), category="terrorism"))
    seen: list[BankDelta] = []
    banks.subscribe(seen.append)
    banks.subscribe(lambda d: 1 / 0)  # a failing listener does not stop the others
    path.write_text("hash,category,source,id\n" + "b" * 64 + ",,s,two\n" + "c" * 32 + ",,s,three\n")
    assert banks.reload_if_changed()
    assert len(seen) == 1
    delta = seen[0]
    assert delta.bank == "b"
    assert [(e.hash, e.kind, e.category) for e in delta.added] == [("c" * 32, "md5", "terrorism")]
    assert [(e.hash, e.kind) for e in delta.removed] == [("a" * 40, "sha1")]
