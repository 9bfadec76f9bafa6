"""The Matcher interface: turn one prepared media item into matches.

A matcher is constructed with what it needs (banks, an HTTP session, ...), is called concurrently by
the match stage and closed once at shutdown.  It returns ``[]`` for "no match", raises
:class:`~service.errors.Unscannable` when it cannot judge this item (e.g. no JPEG for a remote
service) and another :class:`~service.errors.ServiceError` (``retriable`` on its class) when it failed.

A :class:`RemoteMatcher` (PhotoDNA) is a matcher behind a metered, rate-limited remote service: it
can say whether a request may be sent now, whether it is authorised, and take background work
(rescans) at a lower priority.  This is the one place these protocols are declared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from service.models import Match, PreparedMedia


@runtime_checkable
class Matcher(Protocol):
    name: str

    async def match(self, media: PreparedMedia) -> list[Match]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class VersionedMatcher(Matcher, Protocol):
    """A local matcher with content of its own (vPDQ banks): ``version`` changes whenever what it matches
    against changes, and is part of the scan version (a stored clean result is reused only under it)."""

    @property
    def version(self) -> str: ...


@runtime_checkable
class RemoteMatcher(Matcher, Protocol):
    async def match(self, media: PreparedMedia, *, background: bool = False) -> list[Match]: ...

    def can_send(self) -> bool: ...

    @property
    def authorized(self) -> bool: ...


class StaticMatcher:
    """An in-memory matcher for tests.

    Returns ``by_sha1[media.sha1]`` when present, else ``default``; or raises ``error`` (an exception,
    or a callable of the media returning one or None) instead.  Records every item it saw.
    """

    def __init__(
        self,
        name: str = "static",
        *,
        by_sha1: Mapping[str, Sequence[Match]] | None = None,
        default: Sequence[Match] = (),
        error: BaseException | Callable[[PreparedMedia], BaseException | None] | None = None,
    ) -> None:
        self.name = name
        self.by_sha1 = dict(by_sha1 or {})
        self.default = list(default)
        self.error = error
        self.seen: list[PreparedMedia] = []
        self.closed = False

    async def match(self, media: PreparedMedia) -> list[Match]:
        self.seen.append(media)
        err = self.error(media) if callable(self.error) else self.error
        if err is not None:
            raise err
        return list(self.by_sha1.get(media.sha1, self.default))

    async def aclose(self) -> None:
        self.closed = True
