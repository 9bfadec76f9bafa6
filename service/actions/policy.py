"""Takedown policy: what happens to a match of given categories in the configured mode.

=========  =====================================================================================
mode       effect
=========  =====================================================================================
off        nothing is ever deleted by the service (the review queue still records decisions)
review     (default) nothing is deleted until a reviewer confirms in the review queue
dry-run    for ``categories``: record and email what would have been deleted; delete nothing
auto       for ``categories`` (default child-protection): delete at once, concurrently with the
           email; other categories (terrorism unless listed explicitly) wait for review
=========  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from service.config import TakedownSection

Plan = Literal["delete", "dry-run", "review", "none"]


class TakedownPolicy:
    def __init__(self, cfg: TakedownSection) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        self.automatic_categories = frozenset(cfg.categories)

    def plan(self, categories: Iterable[str]) -> Plan:
        """What happens right when a match of these categories is recorded."""
        if self.mode == "off":
            return "none"
        automatic = bool(self.automatic_categories.intersection(categories))
        if self.mode == "auto" and automatic:
            return "delete"
        if self.mode == "dry-run" and automatic:
            return "dry-run"
        return "review"

    @property
    def confirm_kind(self) -> str | None:
        """The outbox key prefix a reviewer's Confirm creates: a real takedown, a dry run, or nothing."""
        return {"off": None, "dry-run": "dryrun"}.get(self.mode, "takedown")

    def describe(self, categories: Iterable[str]) -> list[str]:
        """The "what was done" lines of the notification email."""
        cats = sorted(set(categories))
        listed = ", ".join(cats) or "unknown"
        plan = self.plan(cats)
        lines = ["match recorded off-wiki"]
        if plan == "delete":
            lines.append(f"automatic takedown started together with this email (auto mode, {listed}); "
                         "the review page shows the result")
        elif plan == "dry-run":
            lines.append("dry-run: this file would have been deleted automatically; nothing was deleted")
        elif plan == "review":
            if self.mode == "auto":
                lines.append(f"no automatic takedown for {listed}: nothing is removed until a reviewer confirms")
            else:
                lines.append("waiting for review: nothing is removed until a reviewer confirms")
        else:
            lines.append("takedown is off: the service will not remove this file")
        return lines
