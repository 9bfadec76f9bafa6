"""Links to a wiki's pages, built only from the configured wiki, and the check of an event's own links.

Events are attacker-controllable (a forged or replayed event, a broken upstream): their ``server_url``
and ``meta.uri`` are never put in an email or a review page.  Every link to a file page is
``wiki.server`` + ``wiki.article_path`` with the title encoded the way MediaWiki encodes it
(``wfUrlencode`` of the DB key: spaces become underscores, everything outside ``;@$!*(),/~:`` and the
unreserved characters is percent-encoded).  An event whose links point anywhere but its configured wiki
(scheme, host and port) is reported by :func:`foreign_links` so that the intake can count and log it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from service.config import WikiSection
from service.metrics import Metrics
from service.models import UploadEvent

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MW_SAFE = ";@$!*(),/~:"  # what wfUrlencode() leaves unencoded besides letters, digits and -_.

Origin = tuple[str, str, int]


def origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit; None when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def title_path(title: str) -> str:
    """A page title as MediaWiki puts it in a URL path."""
    # errors="replace": a title that is not valid Unicode (a lone surrogate) still gets a link, never an exception.
    return quote(title.strip().replace(" ", "_"), safe=_MW_SAFE, errors="replace")


def page_url(wiki: WikiSection, title: str) -> str:
    """The file page of ``title`` on ``wiki``, from the configuration alone."""
    return wiki.server + wiki.article_path.replace("$1", title_path(title))


def foreign_links(event: UploadEvent, wiki: WikiSection) -> list[str]:
    """The event fields whose URL is not on ``wiki`` (by scheme, host and port): [] when all agree."""
    own = origin(wiki.server)
    return [name for name, url in (("server_url", event.server_url), ("meta.uri", event.page_url))
            if origin(url) != own]


def with_configured_links(event: UploadEvent, wiki: WikiSection) -> UploadEvent:
    """``event`` with its server and page URL replaced by the configured wiki's."""
    return dataclasses.replace(event, server_url=wiki.server, page_url=page_url(wiki, event.title))


class MismatchLogLimit:
    """At most one ``event_link_mismatch`` warning per wiki per ``interval`` seconds.

    A forged or broken stream can send such events by the thousand; the counter counts every one, the log
    gets one line per wiki per interval that says how many were left out since the previous line.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, wiki: str) -> int | None:
        """None when this event's line is suppressed; otherwise how many were suppressed since the last line."""
        now = self._clock()
        last = self._last.get(wiki)
        if last is not None and now - last < self.interval:
            self._suppressed[wiki] = self._suppressed.get(wiki, 0) + 1
            return None
        self._last[wiki] = now
        return self._suppressed.pop(wiki, 0)


def configured_links(event: UploadEvent, wiki: WikiSection, metrics: Metrics,
                     limit: MismatchLogLimit | None = None) -> UploadEvent:
    """The intake's check: links come from ``wiki``; an event pointing elsewhere is counted and logged.

    Such an event is still scanned (a broken upstream must not hide an upload), only its links are dropped.
    Every one is counted; the warning is rate-limited per wiki by ``limit`` (none: every event is logged).
    """
    foreign = foreign_links(event, wiki)
    if foreign:
        metrics.event_link_mismatch.labels(event.wiki).inc()
        suppressed = limit.admit(event.wiki) if limit is not None else 0
        if suppressed is not None:
            more = (f" ({suppressed} more such events on {event.wiki} since the last line were not logged)"
                    if suppressed else "")
            log.warning("event %s: %s not on the configured wiki %s; scanning it with the configured links%s",
                        event.event_id, " and ".join(foreign), wiki.id, more,
                        extra={"event_id": event.event_id, "wiki": event.wiki, "fields": ",".join(foreign),
                               "server_url": event.server_url[:300], "uri": event.page_url[:300],
                               "suppressed": suppressed})
    return with_configured_links(event, wiki)
