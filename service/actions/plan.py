"""Planners decide which effects a match gets.  Each returns outbox entries with idempotency keys.

The key names the upload version (wiki, title, SHA-1), so replays, restarts and duplicate events
never produce a second effect; a re-upload of the same content under another title is a new upload
and is reported again.  Takedown (its own issue) adds a planner here without touching the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from service.actions.notify import notification_payload
from service.config import NotifySection
from service.models import Match, UploadEvent
from service.pipeline import Planner
from service.store.base import NewAction


def action_key(kind: str, event: UploadEvent, sha1: str) -> str:
    return f"{kind}:{event.wiki}:{event.title}:{sha1}"


def notify_planner(cfg: NotifySection, *, done: Sequence[str] = ()) -> Planner:
    done_list = list(done) or ["match recorded off-wiki", "no automatic takedown (report-only mode)"]

    def plan(event: UploadEvent, sha1: str, matches: Sequence[Match]) -> list[NewAction]:
        if sha1 and event.sha1 != sha1:
            event = dataclasses.replace(event, sha1=sha1)
        payload = notification_payload(event, matches, done=done_list, review_url=cfg.review_url)
        return [NewAction(key=action_key("notify", event, sha1), kind="notify", payload=payload)]

    return plan
