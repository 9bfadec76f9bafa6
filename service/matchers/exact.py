"""Exact matching against the banks' SHA-1 and MD5 hashes."""

from __future__ import annotations

from service.matchers.banks import BankSet
from service.models import Match, PreparedMedia


class ExactMatcher:
    """SHA-1 matches come from the upload event (checked before anything is downloaded, see
    :meth:`match_sha1`); :meth:`match` adds MD5 matches when the original's MD5 is known."""

    name = "exact"

    def __init__(self, banks: BankSet) -> None:
        self._banks = banks

    def match_sha1(self, sha1: str) -> list[Match]:
        return self._banks.match_sha1(sha1)

    async def match(self, media: PreparedMedia) -> list[Match]:
        return self._banks.match_md5(media.md5) if media.md5 else []

    async def aclose(self) -> None:
        return None
