"""File operations for takedowns, as one logged-in account on one wiki: versions, delete, suppression.

Built on :class:`~service.mediawiki.client.MediaWikiClient`, which does the login (bot password or
OAuth 2), the CSRF tokens (fetched again once on ``badtoken``), ``maxlag`` and the error classes:
:class:`~service.errors.WikiApiError` with ``code`` (MediaWiki's error code), ``retriable`` and
``permission`` (the account lacks a right or a grant: a human must fix it, retrying will not help).
Transport failures are not retried here: the outbox dispatcher retries the whole takedown later.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from service.config import WikiAuthSection, WikiSection
from service.errors import WikiApiRefused, WikiApiTransient
from service.mediawiki.client import MediaWikiClient, RetryPolicy, Sleep
from service.mediawiki.transport import Transport
from service.metrics import Metrics
from service.net import Proxies


@dataclass(frozen=True, slots=True)
class FileVersion:
    sha1: str
    timestamp: str
    archivename: str | None  # None for the current version


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One ``list=filearchive`` row: a deleted version."""

    id: int
    sha1: str | None  # hidden from accounts without viewsuppressed once suppressed
    timestamp: str
    file_hidden: bool
    comment_hidden: bool
    user_hidden: bool
    suppressed: bool


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    groups: tuple[str, ...]
    rights: frozenset[str]


def db_key(title: str) -> str:
    """``File:A b.jpg`` → ``A_b.jpg`` (the name as filearchive stores it)."""
    name = title.split(":", 1)[1] if title.startswith("File:") else title
    return name.replace(" ", "_")


class WikiApi:
    """One logged-in account on one wiki.  Create, use, ``await aclose()``."""

    def __init__(
        self,
        wiki: WikiSection,
        auth: WikiAuthSection,
        user_agent: str,
        metrics: Metrics,
        *,
        timeout: float = 30.0,
        maxlag: int = 5,
        maxlag_retries: int = 3,
        maxlag_min_wait: float = 5.0,
        sleep: Sleep = asyncio.sleep,
        transport: Transport | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self.wiki = wiki
        counter = metrics.wiki_api_requests
        self.client = MediaWikiClient(
            wiki, user_agent=user_agent, transport=transport, proxies=proxies, timeout=timeout, maxlag=maxlag,
            auth=auth,
            policy=RetryPolicy(retries=0, maxlag_retries=maxlag_retries, maxlag_min_wait=maxlag_min_wait),
            observe=lambda what, result: counter.labels(what, result).inc(), sleep=sleep)

    @property
    def account_label(self) -> str:
        return self.client.account_label

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, method: str, params: dict[str, str], *, write: bool = False) -> dict[str, Any]:
        """Logged-in call; ``write`` adds a CSRF token (refreshed once on badtoken)."""
        return await self.client.call(params, method=method, write=write)

    async def account(self) -> Account:
        data = await self.call("GET", {"action": "query", "meta": "userinfo", "uiprop": "rights|groups"})
        info = data.get("query", {}).get("userinfo", {})
        return Account(name=str(info.get("name", "")), groups=tuple(info.get("groups") or ()),
                       rights=frozenset(info.get("rights") or ()))

    async def file_versions(self, title: str) -> list[FileVersion] | None:
        """Every version of a file, newest (current) first; None when the file page does not exist."""
        data = await self.call("GET", {"action": "query", "prop": "imageinfo", "titles": title,
                                       "iiprop": "sha1|timestamp|archivename", "iilimit": "max"})
        pages = data.get("query", {}).get("pages") or []
        page = pages[0] if pages and isinstance(pages[0], dict) else {}
        if page.get("invalid"):
            raise WikiApiRefused(f"{self.wiki.id}: invalid title {title!r}", code="invalidtitle")
        infos = page.get("imageinfo") or []
        if page.get("missing") or not infos:
            return None
        return [FileVersion(sha1=str(i.get("sha1", "")).lower(), timestamp=str(i.get("timestamp", "")),
                            archivename=i.get("archivename") or None) for i in infos if not i.get("filemissing")]

    async def delete(self, title: str, *, reason: str, tags: tuple[str, ...] = (),
                     oldimage: str | None = None) -> bool:
        """Delete the file page (every version), or one old version; False when it was already gone."""
        params = {"action": "delete", "title": title, "reason": reason}
        if tags:
            params["tags"] = "|".join(tags)
        if oldimage:
            params["oldimage"] = oldimage
        try:
            await self.call("POST", params, write=True)
        except WikiApiRefused as exc:
            if exc.code in ("missingtitle", "nodeleteablefile", "filedeleteerror-missing"):
                return False
            raise
        return True

    async def filearchive(self, title: str) -> list[ArchivedFile]:
        """Deleted versions of exactly this file (``faprefix`` matches prefixes; others are dropped)."""
        name = db_key(title)
        out: list[ArchivedFile] = []
        params = {"list": "filearchive", "faprefix": name, "faprop": "sha1|timestamp", "falimit": "max"}
        async for page in self.client.pages(params, what="query", authenticated=True):
            for row in page.data.get("query", {}).get("filearchive") or []:
                if str(row.get("name", "")) != name:
                    continue
                out.append(ArchivedFile(
                    id=int(row["id"]), sha1=str(row["sha1"]).lower() if row.get("sha1") else None,
                    timestamp=str(row.get("timestamp", "")), file_hidden=bool(row.get("filehidden")),
                    comment_hidden=bool(row.get("commenthidden")), user_hidden=bool(row.get("userhidden")),
                    suppressed=bool(row.get("suppressed"))))
        return out

    async def suppress_archived(self, title: str, ids: list[int], *, reason: str,
                                tags: tuple[str, ...] = ()) -> None:
        """Hide the deleted versions' content, comment and uploader from administrators too."""
        params = {"action": "revisiondelete", "type": "filearchive", "target": title,
                  "ids": "|".join(str(i) for i in ids), "hide": "content|comment|user", "suppress": "yes",
                  "reason": reason}
        if tags:
            params["tags"] = "|".join(tags)
        data = await self.call("POST", params, write=True)
        items = data.get("revisiondelete", {}).get("items") or []
        failed = [i for i in items if isinstance(i, dict) and i.get("status") != "Success"]
        if data.get("revisiondelete", {}).get("status") != "Success" or failed:
            raise WikiApiTransient(f"{self.wiki.id}: suppressing {title!r} ids {ids} did not succeed: "
                                   f"{json.dumps(data.get('revisiondelete'))[:300]}", code="revisiondelete-failed")
