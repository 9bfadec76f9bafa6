"""What a reviewer's Confirm, Dismiss or Escalate does to one case: the :class:`Decision` to record.

Used for one case (the detail page) and for many (bulk actions), so both do exactly the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from service.actions.notify import review_link
from service.actions.plan import takedown_payload, upload_key
from service.actions.policy import TakedownPolicy
from service.config import Config
from service.links import page_url
from service.store.base import Decision, NewAction, OutboxItem, ReviewCase, ReviewStore

CHOICES = ("confirm", "dismiss", "escalate")


class Refused(Exception):
    """The decision cannot be taken; ``status`` and a title/text for the reviewer."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status, self.title, self.text = status, title, text


def match_dict(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("matcher", "bank", "category", "hash_id", "hash_value", "distance", "source", "details")
    return {k: row.get(k) for k in keys}


def uploads_of(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per upload (wiki, title), most recently matched first."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        seen.setdefault((r["wiki"], r["title"]), r)
    return list(seen.values())


def file_deleted(case: ReviewCase, uploads: Sequence[dict[str, Any]], items: Sequence[OutboxItem]) -> bool:
    """Every upload of the content is already deleted on the wiki (a takedown done, not a dry run), or an automatic
    takedown removed it: there is nothing left to decide."""
    if case.state == "removed":
        return True
    done = {i.key for i in items if i.kind == "takedown" and i.state == "done" and i.key.startswith("takedown:")}
    return bool(uploads) and all(upload_key("takedown", u["wiki"], u["title"], case.sha1) in done for u in uploads)


def payload(sha1: str, upload: dict[str, Any], rows: Sequence[dict[str, Any]], link: str | None,
            page: str | None) -> dict[str, Any]:
    """A notification-shaped payload for one upload, from the stored match rows (``page``: from the config)."""
    mine = [r for r in rows if (r["wiki"], r["title"]) == (upload["wiki"], upload["title"])]
    return {
        "wiki": upload["wiki"], "title": upload["title"], "page_url": page,
        "uploader": upload["uploader"], "upload_time": upload["upload_time"], "log_action": upload["log_action"],
        "sha1": sha1, "event_id": upload["event_id"], "matches": [match_dict(r) for r in mine],
        "categories": sorted({r["category"] for r in mine}), "done": [], "review_url": link,
    }


def takedown_summary(items: Sequence[OutboxItem]) -> str:
    takedowns = [i for i in items if i.kind == "takedown"]
    if not takedowns:
        return "none"
    failed = sum(i.state == "failed" for i in takedowns)
    pending = sum(i.state == "pending" for i in takedowns)
    done = [i for i in takedowns if i.state == "done"]
    dry = sum(i.key.startswith("dryrun:") for i in done)
    parts = []
    if failed:
        parts.append(f"FAILED {failed}")
    if pending:
        parts.append(f"pending {pending}")
    if len(done) - dry:
        parts.append(f"deleted {len(done) - dry}")
    if dry:
        parts.append(f"dry-run {dry}")
    return ", ".join(parts)


class Decider:
    def __init__(self, cfg: Config, store: ReviewStore) -> None:
        self.cfg = cfg
        self.store = store
        self.policy = TakedownPolicy(cfg.actions.takedown)

    def page_url(self, wiki_id: str, title: str) -> str | None:
        """A page on a configured wiki, never a URL stored with the match (it came from the event)."""
        wiki = self.cfg.wiki(wiki_id)
        return page_url(wiki, title) if wiki is not None else None

    async def decide(self, case: ReviewCase, rows: Sequence[dict[str, Any]], choice: str, *, reviewer: str,
                     role: str, note: str, nonce: str) -> tuple[Decision, str]:
        """The decision to record and the flash to show; :class:`Refused` when it cannot be taken."""
        sha1 = case.sha1
        link = review_link(self.cfg.actions.notify.review_url, sha1)
        uploads = uploads_of(rows)
        items = await self.store.case_actions(sha1)
        if choice not in CHOICES:
            raise Refused(400, "Unknown decision", "Choose Confirm, Dismiss or Escalate.")
        if file_deleted(case, uploads, items):
            raise Refused(409, "File already deleted", "Every upload of this content was already deleted on the "
                          "wiki: there is nothing left to decide here.")
        if case.state == "escalated" and choice != "escalate" and role != "admin":
            raise Refused(403, "Escalated case", "An escalated case is decided by an admin.")
        flash = choice
        if choice == "confirm":
            kind = self.policy.confirm_kind
            if kind is None:
                raise Refused(409, "Takedown is off", "actions.takedown.mode is off: nothing can be deleted from here.")
            actions = tuple(
                NewAction(key=upload_key(kind, u["wiki"], u["title"], sha1), kind="takedown",
                          payload=takedown_payload(payload(sha1, u, rows, link, self.page_url(u["wiki"], u["title"])),
                                                   dry_run=kind == "dryrun", requested_by=reviewer))
                for u in uploads)
            decision = Decision(sha1=sha1, state="confirmed", reviewer=reviewer, action="confirm", note=note,
                                actions=actions, retry_keys=tuple(a.key for a in actions),
                                detail={"uploads": [f"{u['wiki']}:{u['title']}" for u in uploads], "kind": kind})
            flash = "confirm-dry" if kind == "dryrun" else "confirm"
        elif choice == "dismiss":
            pdq = await self.store.content_pdq(sha1)
            decision = Decision(sha1=sha1, state="dismissed", reviewer=reviewer, action="dismiss", note=note,
                                allowlist_banks=case.banks, allowlist_pdq=pdq,
                                detail={"banks": list(case.banks), "pdq": pdq})
            if any(i.key.startswith("takedown:") and i.state == "done" for i in items):
                flash = "dismiss-removed"
        else:
            latest = uploads[0]
            p = payload(sha1, latest, rows, link, self.page_url(latest["wiki"], latest["title"]))
            p["recipients"] = list(self.cfg.review.escalate_recipients or self.cfg.actions.notify.recipients)
            p["alert"] = f"ESCALATED by {reviewer}" + (f": {note}" if note else "")
            p["subject_prefix"] = "ESCALATED:"
            p["done"] = [f"escalated by reviewer {reviewer}"]
            decision = Decision(sha1=sha1, state="escalated", reviewer=reviewer, action="escalate", note=note,
                                actions=(NewAction(key=f"escalate:{sha1}:{nonce}", kind="notify", payload=p),))
        return dataclasses.replace(decision, title=uploads[0]["title"] if uploads else None), flash
