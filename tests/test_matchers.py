"""service.matchers: the Matcher protocol, the in-memory fake, and the exact and PDQ matchers."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import BankSection, BanksSection
from service.errors import Unscannable
from service.matchers.banks import BankSet
from service.matchers.base import Matcher, StaticMatcher
from service.matchers.exact import ExactMatcher
from service.matchers.pdq import PdqMatcher
from service.metrics import Metrics
from service.models import Match, PdqSignal, PreparedMedia

SHA1 = "3f786850e387550fdab836ed7e6dc881de23001b"
MD5 = "9e107d9d372bb6826bd81d3542a419d6"
PDQ = bytes(range(32))
OTHER = bytes(range(100, 132))


def media(*, sha1: str = SHA1, md5: str | None = None, pdq: PdqSignal | None = None) -> PreparedMedia:
    return PreparedMedia(sha1=sha1, md5=md5, pdq=pdq, jpeg=None, width=10, height=10)


@pytest.fixture
def banks(tmp_path: Path) -> BankSet:
    path = tmp_path / "bank.csv"
    path.write_text(f"hash,category,source,id\n{SHA1},,src,s\n{MD5},,src,m\n{PDQ.hex()},,src,p\n")
    cfg = BanksSection(list=(BankSection(name="b", path=str(path), category="terrorism"),))
    return BankSet(cfg, Metrics())


async def test_exact_matcher(banks: BankSet) -> None:
    matcher = ExactMatcher(banks)
    assert isinstance(matcher, Matcher)
    assert [m.hash_id for m in matcher.match_sha1(SHA1)] == ["s"]
    assert matcher.match_sha1("0" * 40) == []
    (m,) = await matcher.match(media(md5=MD5))
    assert (m.matcher, m.bank, m.category, m.hash_id) == ("md5", "b", "terrorism", "m")
    assert await matcher.match(media(md5=None)) == []  # SHA-1 is not repeated here
    await matcher.aclose()


@pytest.mark.parametrize("inline_max", [1_000_000, 0])  # inline, and through a worker thread
async def test_pdq_matcher(banks: BankSet, inline_max: int) -> None:
    matcher = PdqMatcher(banks, inline_max_hashes=inline_max)
    assert isinstance(matcher, Matcher)
    near = bytearray(PDQ)
    near[0] ^= 0b111
    (m,) = await matcher.match(media(pdq=PdqSignal(hashes=(OTHER, bytes(near)), quality=90)))
    assert (m.matcher, m.hash_id, m.distance, m.details["variant"]) == ("pdq", "p", 3, "rotate90")
    assert await matcher.match(media(pdq=PdqSignal(hashes=(OTHER,), quality=90))) == []
    assert await matcher.match(media(pdq=None)) == []
    await matcher.aclose()


async def test_static_matcher() -> None:
    hit = Match(matcher="fake", bank="b", category="c", hash_id="1", hash_value="x")
    matcher = StaticMatcher("fake", by_sha1={SHA1: [hit]})
    assert isinstance(matcher, Matcher)
    assert await matcher.match(media()) == [hit]
    assert await matcher.match(media(sha1="0" * 40)) == []
    assert [m.sha1 for m in matcher.seen] == [SHA1, "0" * 40]

    failing = StaticMatcher(error=lambda item: Unscannable("no-jpeg") if item.sha1 == SHA1 else None,
                            default=[hit])
    with pytest.raises(Unscannable):
        await failing.match(media())
    assert await failing.match(media(sha1="1" * 40)) == [hit]
    await failing.aclose()
    assert failing.closed
