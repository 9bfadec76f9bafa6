"""The ``takedown`` action: delete a matched file on the wiki, optionally suppress it, verify, record.

One outbox item per upload version (key ``takedown:<wiki>:<title>:<sha1>``, or ``dryrun:…``), written
by the auto-mode planner next to the notification or by a reviewer's Confirm.  Performing it:

1. list the file's versions (``prop=imageinfo&iilimit=max``);
2. if the current version has the matched SHA-1, ``action=delete`` the page (every version goes);
   otherwise ``action=delete&oldimage=…`` each old version with that SHA-1 (the current one stays);
   a file already gone counts as done;
3. with ``suppress``: ``list=filearchive`` for the deleted versions' ids, then
   ``action=revisiondelete&type=filearchive&hide=content|comment|user&suppress=yes``;
4. verify through the API: no version with the SHA-1 is visible any more (``missing`` / no such
   version), and with ``suppress`` every one of those archive rows is hidden and suppressed;
5. record the result (outbox result, audit log, metrics).

Every step is idempotent, so a retry after a crash never deletes twice.  A permission problem (no
``delete`` right or grant, no ``suppressrevision``, refused login) is not retried: the item fails with
a clear error, ``mediamoderation_takedowns_total{result="permission-denied"}`` counts it and an alert
email goes to Trust & Safety.  Transient trouble (connection, maxlag, read-only) is retried by the
dispatcher with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from service.actions.base import OutboxDispatcher
from service.config import Config, ReportingSection, TakedownSection, WikiSection
from service.errors import ServiceError
from service.mediawiki import FileVersion, WikiApi, WikiApiError
from service.metrics import Metrics
from service.net import Proxies
from service.store.base import AuditStore, NewAction, Outbox, OutboxItem, Preservation, PreservationStore


class TakedownStore(Outbox, Protocol):
    """What takedowns need from the store (and an AuditStore, when it has the review tables)."""

log = logging.getLogger(__name__)

ApiFactory = Callable[[WikiSection], WikiApi]


class TakedownError(ServiceError):
    """A takedown did not complete, and trying again will not help."""

    reason = "failed"
    permission: bool = False


class TransientTakedownError(TakedownError):
    """A takedown did not complete for now (the wiki lagged or was unreachable, verification lagged)."""

    retriable = True


class TakedownPermissionError(TakedownError):
    """The account may not do it (no right, grant or credentials): a human must fix the account first."""

    reason = "permission-denied"
    permission = True


def _versions_text(delete_page: bool, old: list[FileVersion], total: int) -> str:
    if delete_page:
        return f"the whole page ({total} version{'s' if total != 1 else ''})"
    return f"{len(old)} old version(s) ({', '.join(v.archivename or '?' for v in old)}); the current version stays"


class TakedownAction:
    name = "takedown"

    def __init__(
        self,
        cfg: TakedownSection,
        wikis: tuple[WikiSection, ...],
        user_agent: str,
        metrics: Metrics,
        *,
        audit: AuditStore | None,
        outbox: Outbox,
        kick_notify: Callable[[], None] = lambda: None,
        api_factory: ApiFactory | None = None,
        clock: Callable[[], float] = time.time,
        proxies: Proxies | None = None,
        preserve: PreservationStore | None = None,
        reporting: ReportingSection | None = None,
    ) -> None:
        self._cfg = cfg
        self._preserve = preserve  # where the deleted-file archive entry of a removed file is recorded
        self._reporting = reporting or ReportingSection()
        self._wikis = {w.id: w for w in wikis}
        self._metrics = metrics
        self._audit = audit
        self._outbox = outbox
        self._kick_notify = kick_notify
        self._clock = clock
        auth = cfg.auth
        if api_factory is None and auth is not None:
            def api_factory(wiki: WikiSection) -> WikiApi:
                return WikiApi(wiki, auth, user_agent, metrics, timeout=cfg.timeout, maxlag=cfg.maxlag,
                               proxies=proxies)
        self._factory = api_factory
        self._apis: dict[str, WikiApi] = {}

    def _api(self, wiki_id: str) -> WikiApi:
        api = self._apis.get(wiki_id)
        if api is None:
            wiki = self._wikis.get(wiki_id)
            if wiki is None:
                raise TakedownError(f"wiki {wiki_id!r} is not configured", reason="no-wiki")
            if self._factory is None:
                raise TakedownPermissionError("actions.takedown.auth is not configured: no account to delete with",
                                              reason="no-credentials")
            api = self._apis[wiki_id] = self._factory(wiki)
        return api

    async def aclose(self) -> None:
        apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            await api.aclose()

    # ------------------------------------------------------------------ the action

    async def perform(self, item: OutboxItem) -> str:
        p = item.payload
        wiki_id, title, sha1 = str(p.get("wiki") or ""), str(p.get("title") or ""), str(p.get("sha1") or "")
        started = time.monotonic()
        try:
            if p.get("dry_run"):
                result = await self._dry_run(wiki_id, title, sha1)
                outcome = "dry-run"
            else:
                result, outcome = await self._takedown(wiki_id, title, sha1)
        except TakedownError as exc:
            await self._failed(item, exc)
            raise
        except WikiApiError as exc:
            auth = exc.code.startswith("login-") or exc.code == "no-credentials"
            cls = (TakedownPermissionError if exc.permission else
                   TransientTakedownError if exc.retriable else TakedownError)
            err = cls(f"{title}: {exc}", reason="auth-failed" if auth else cls.reason)
            await self._failed(item, err)
            raise err from exc
        finally:
            self._metrics.takedown_duration.observe(time.monotonic() - started)
        self._metrics.takedowns.labels(outcome).inc()
        requested_by = str(p.get("requested_by") or "auto")
        if self._audit is not None:
            await self._audit.append_audit(
                "system", "takedown-dry-run" if p.get("dry_run") else "takedown", sha1=sha1 or None, wiki=wiki_id,
                title=title, note=result, detail={"key": item.key, "requested_by": requested_by, "result": outcome})
            if requested_by == "auto" and not p.get("dry_run") and sha1:
                await self._audit.mark_removed(sha1, self._clock())
        if not p.get("dry_run"):
            await self._after_removal(item, result, requested_by)
        log.info("takedown %s: %s", item.key, result)
        return result

    async def _after_removal(self, item: OutboxItem, result: str, requested_by: str) -> None:
        """Record what the wiki keeps (deleted-file archive) and until when, report the takedown, schedule the
        preservation reminder.  Trouble here never undoes or repeats the takedown: it is logged."""
        p = item.payload
        wiki_id, title, sha1 = str(p.get("wiki") or ""), str(p.get("title") or ""), str(p.get("sha1") or "")
        now = self._clock()
        until = now + self._reporting.preservation_days * 86400
        ids: tuple[int, ...] = ()
        suppressed = False
        try:
            rows = [r for r in await self._api(wiki_id).filearchive(title) if not sha1 or r.sha1 in (sha1, None)]
            ids, suppressed = tuple(sorted(r.id for r in rows)), bool(rows) and all(r.suppressed for r in rows)
        except (ServiceError, WikiApiError) as exc:
            log.warning("takedown %s: could not read the deleted-file archive: %s", item.key, exc)
        base = {k: v for k, v in p.items() if k not in ("dry_run", "requested_by", "alert", "subject_prefix")}
        archive = f"filearchive id(s) {', '.join(map(str, ids))}" if ids else "no filearchive entry found"
        until_text = time.strftime("%Y-%m-%d", time.gmtime(until))
        actions = [NewAction(key=f"report:{item.key}", kind="notify", payload={
            **base, "subject_prefix": "Takedown done:",
            "done": ["match recorded off-wiki", f"takedown done (requested by {requested_by}): {result}",
                     f"preserved by the wiki: {archive}{' (suppressed)' if suppressed else ''}; "
                     f"keep until {until_text}"],
        })]
        if sha1:
            actions.append(NewAction(
                key=f"preservation:{wiki_id}:{title}:{sha1}", kind="reminder",
                not_before=until - self._reporting.reminder_days * 86400, payload={
                    **base, "subject_prefix": "Preservation reminder:",
                    "alert": f"The preservation period of this removed file ends on {until_text} ({archive}). "
                             "If a report was made, check whether the provider must keep it longer; otherwise "
                             "it may be purged after that date.",
                    "done": [f"removed on {time.strftime('%Y-%m-%d', time.gmtime(now))}", archive]}))
        try:
            if self._preserve is not None and sha1:
                await self._preserve.record_preservation(Preservation(
                    wiki=wiki_id, title=title, sha1=sha1, filearchive_ids=ids, suppressed=suppressed,
                    removed_at=now, preserve_until=until))
            await self._outbox.add_actions(actions)
            self._kick_notify()
        except ServiceError:
            log.exception("could not record the preservation state of takedown %s", item.key)

    async def _dry_run(self, wiki_id: str, title: str, sha1: str) -> str:
        if self._factory is None:
            return f"dry-run: would delete {title}; nothing deleted (no wiki account configured to check with)"
        api = self._api(wiki_id)
        versions = await api.file_versions(title)
        account = await api.account()
        can = "delete" in account.rights
        if versions is None:
            what = "nothing (the file is already gone)"
        else:
            matching = [v for v in versions if not sha1 or v.sha1 == sha1]
            if not matching:
                what = f"nothing (no version with SHA-1 {sha1} is left)"
            else:
                current = versions[0].archivename is None and versions[0] in matching
                what = _versions_text(current, [v for v in matching if v.archivename], len(versions))
        return (f"dry-run: would delete {what} of {title}; nothing deleted; account {account.name or '?'} "
                f"{'has' if can else 'LACKS'} the delete right")

    async def _takedown(self, wiki_id: str, title: str, sha1: str) -> tuple[str, str]:
        api = self._api(wiki_id)
        cfg = self._cfg
        versions = await api.file_versions(title)
        matching = [v for v in versions or [] if not sha1 or v.sha1 == sha1]
        parts: list[str] = []
        if not matching:
            outcome = "already-gone"
            parts.append(f"already gone: {title} has no visible version"
                         + (f" with SHA-1 {sha1}" if sha1 and versions else ""))
        else:
            assert versions is not None
            delete_page = versions[0] in matching
            old = [v for v in matching if v.archivename]
            try:
                if delete_page:
                    deleted = await api.delete(title, reason=cfg.reason, tags=cfg.tags)
                else:
                    deleted = False
                    for v in old:
                        deleted = await api.delete(title, reason=cfg.reason, tags=cfg.tags,
                                                   oldimage=v.archivename) or deleted
            except WikiApiError as exc:
                if exc.permission:
                    raise await self._explain(api, exc, "delete", "the 'delete' right (administrators) and the "
                                                                  "'delete' grant on the bot password or consumer"
                                              ) from exc
                raise
            outcome = "deleted" if deleted else "already-gone"
            parts.append(f"deleted {_versions_text(delete_page, old, len(versions))} of {title}" if deleted
                         else f"already gone: {title} was deleted meanwhile")
        if cfg.suppress:
            parts.append(await self._suppress(api, title, sha1))
        # Verify through the API: no visible version with this content is left.
        after = await api.file_versions(title)
        left = [v for v in after or [] if not sha1 or v.sha1 == sha1]
        if left:
            self._metrics.takedowns.labels("verify-failed").inc()
            raise TransientTakedownError(f"{title}: verification failed: {len(left)} version(s) with SHA-1 {sha1} "
                                         "still visible after the delete", reason="verify-failed")
        parts.append("verified: file missing" if after is None else "verified: no version with this content left")
        return "; ".join(parts), outcome

    async def _suppress(self, api: WikiApi, title: str, sha1: str) -> str:
        try:
            rows = await api.filearchive(title)
            targets = [r for r in rows if (not sha1 or r.sha1 == sha1) and not r.suppressed]
            if targets:
                await api.suppress_archived(title, [r.id for r in targets], reason=self._cfg.reason,
                                            tags=self._cfg.tags)
        except WikiApiError as exc:
            if exc.permission:
                self._metrics.suppressions.labels("permission-denied").inc()
                raise await self._explain(api, exc, "suppress",
                                          "the 'suppressrevision' right (suppress group) and the 'oversight' "
                                          "grant; the deletion itself is done") from exc
            raise
        ids = {r.id for r in targets}
        check = {r.id: r for r in await api.filearchive(title) if r.id in ids}
        hidden = [r for r in check.values() if r.file_hidden and r.comment_hidden and r.user_hidden and r.suppressed]
        if len(hidden) != len(ids):
            self._metrics.takedowns.labels("verify-failed").inc()
            raise TransientTakedownError(f"{title}: verification failed: {len(ids) - len(hidden)} archived "
                                         "version(s) are not hidden after suppression", reason="verify-failed")
        if ids:
            self._metrics.suppressions.labels("suppressed").inc()
        already = sum(1 for r in rows if r.suppressed and (not sha1 or r.sha1 in (sha1, None)))
        return (f"suppressed {len(ids)} archived version(s) (ids {', '.join(map(str, sorted(ids)))}); verified hidden"
                if ids else f"suppression: nothing left to hide ({already} already suppressed)")

    async def _explain(self, api: WikiApi, exc: WikiApiError, what: str, needs: str) -> TakedownError:
        """A permission error that says which account lacks what."""
        detail = ""
        try:
            account = await api.account()
            detail = f" (account {account.name!r}, groups {', '.join(account.groups) or '-'})"
        except WikiApiError:
            pass
        return TakedownPermissionError(f"{api.wiki.id}: the wiki account {api.account_label!r} may not "
                                       f"{what}{detail}: {exc.code}. It needs {needs}.")

    async def _failed(self, item: OutboxItem, exc: TakedownError) -> None:
        p = item.payload
        if exc.reason != "verify-failed":
            self._metrics.takedowns.labels(
                exc.reason if exc.permission else ("failed" if exc.retriable else "error")).inc()
        if exc.retriable:
            return
        # Not retried: say so loudly, once (the alert's key derives from the item's key).
        log.error("takedown %s failed and needs a human: %s", item.key, exc)
        try:
            if self._audit is not None:
                await self._audit.append_audit("system", "takedown-failed", sha1=p.get("sha1") or None,
                                               wiki=p.get("wiki"), title=p.get("title"), note=str(exc),
                                               detail={"key": item.key, "reason": exc.reason})
            await self._outbox.add_actions([NewAction(key=f"alert:{item.key}:{item.attempts}", kind="notify",
                                                      payload=alert_payload(p, exc))])
            self._kick_notify()
        except ServiceError:
            log.exception("could not record the failure of takedown %s", item.key)


def alert_payload(payload: Mapping[str, Any], exc: TakedownError) -> dict[str, Any]:
    what = "TAKEDOWN FAILED" if not payload.get("dry_run") else "DRY-RUN TAKEDOWN CHECK FAILED"
    out = {k: v for k, v in payload.items() if k not in ("dry_run", "requested_by")}
    out["alert"] = f"{what}: {exc} The file is still visible until this is fixed; then confirm it again " \
                   "on the review page."
    out["subject_prefix"] = "ALERT takedown failed:"
    out["done"] = ["match recorded off-wiki", f"takedown failed: {exc.reason}"]
    return out


class Takedowns:
    """The takedown action with its own outbox dispatcher: emails and takedowns never queue behind each other."""

    def __init__(self, cfg: Config, store: TakedownStore, metrics: Metrics, *, kick_notify: Callable[[], None],
                 audit: AuditStore | None, api_factory: ApiFactory | None = None,
                 preserve: PreservationStore | None = None) -> None:
        t = cfg.actions.takedown
        self.action = TakedownAction(t, cfg.wikis, cfg.service.user_agent, metrics, audit=audit, outbox=store,
                                     kick_notify=kick_notify, api_factory=api_factory,
                                     proxies=Proxies.for_config(cfg.network), preserve=preserve,
                                     reporting=cfg.actions.reporting)
        self.dispatcher = OutboxDispatcher(store, {"takedown": self.action}, t.retry, metrics,
                                           concurrency=t.concurrency)

    def kick(self) -> None:
        self.dispatcher.kick()

    async def run(self, stop: asyncio.Event) -> None:
        await self.dispatcher.run(stop)

    async def drain(self, timeout: float) -> int:
        return await self.dispatcher.drain(timeout)

    async def aclose(self) -> None:
        await self.action.aclose()
