"""Planners decide which effects a match gets.  Each returns outbox entries with idempotency keys.

The key names the upload version (wiki, title, SHA-1), so replays, restarts and duplicate events
never produce a second effect; a re-upload of the same content under another title is a new upload
and is reported again.  The notification and the takedown of one upload are separate outbox items:
they run concurrently and the failure of one never holds up the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from service.actions.notify import notification_payload
from service.actions.policy import TakedownPolicy
from service.config import Config, NotifySection
from service.models import Match, UploadEvent
from service.pipeline import Planner
from service.store.base import NewAction


def action_key(kind: str, event: UploadEvent, sha1: str) -> str:
    return f"{kind}:{event.wiki}:{event.title}:{sha1}"


def upload_key(kind: str, wiki: str, title: str, sha1: str) -> str:
    return f"{kind}:{wiki}:{title}:{sha1}"


def recipients_for(cfg: NotifySection, categories: Iterable[str]) -> list[str]:
    """The union of each category's recipients; a category without its own list gets the default list."""
    routes = {r.category: r.recipients for r in cfg.categories}
    out: list[str] = []
    for category in sorted(set(categories)) or [""]:
        for r in routes.get(category, cfg.recipients):
            if r not in out:
                out.append(r)
    return out


def _with_sha1(event: UploadEvent, sha1: str) -> UploadEvent:
    return dataclasses.replace(event, sha1=sha1) if sha1 and event.sha1 != sha1 else event


def notify_planner(cfg: NotifySection, *, done: Sequence[str] = (), policy: TakedownPolicy | None = None) -> Planner:
    fixed = list(done) or ["match recorded off-wiki", "no automatic takedown (report-only mode)"]

    def plan(event: UploadEvent, sha1: str, matches: Sequence[Match]) -> list[NewAction]:
        event = _with_sha1(event, sha1)
        categories = {m.category for m in matches}
        lines = policy.describe(categories, matches) if policy is not None and not done else fixed
        payload = notification_payload(event, matches, done=lines, review_url=cfg.review_url)
        if cfg.categories:
            payload["recipients"] = recipients_for(cfg, categories)
        return [NewAction(key=action_key("notify", event, sha1), kind="notify", payload=payload)]

    return plan


def takedown_payload(base: dict[str, object], *, dry_run: bool, requested_by: str) -> dict[str, object]:
    """A takedown item carries the notification's facts too, so a failure alert can be written from it."""
    return {**base, "dry_run": dry_run, "requested_by": requested_by}


def takedown_planner(policy: TakedownPolicy, cfg: NotifySection) -> Planner:
    """Auto mode: a takedown item next to the notification; dry-run: a dry-run item; else nothing."""

    def plan(event: UploadEvent, sha1: str, matches: Sequence[Match]) -> list[NewAction]:
        decision = policy.decide(matches).plan
        if decision not in ("delete", "dry-run"):
            return []
        event = _with_sha1(event, sha1)
        base = notification_payload(event, matches, done=[], review_url=cfg.review_url)
        dry = decision == "dry-run"
        kind = "dryrun" if dry else "takedown"
        return [NewAction(key=action_key(kind, event, sha1), kind="takedown",
                          payload=takedown_payload(base, dry_run=dry, requested_by="auto"))]

    return plan


def build_planners(cfg: Config) -> list[Planner]:
    policy = TakedownPolicy(cfg.actions.takedown)
    notify = cfg.actions.notify
    planners: list[Planner] = []
    if notify.enabled:
        planners.append(notify_planner(notify, policy=policy))
    planners.append(takedown_planner(policy, notify))
    return planners
