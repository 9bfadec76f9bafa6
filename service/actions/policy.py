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

Takedown confidence: in ``auto`` and ``dry-run`` a match deletes automatically only when it is
confident by its category's rule (``auto_max_distance`` for PDQ, ``auto_exact`` for SHA-1 / MD5,
``auto_photodna``); anything else goes to review, and :meth:`TakedownPolicy.decide` says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from service.config import TakedownSection
from service.models import Match

Plan = Literal["delete", "dry-run", "review", "none"]

EXACT_MATCHERS = ("sha1", "md5")


@dataclass(frozen=True, slots=True)
class ConfidenceRule:
    """The effective rule for one category."""

    category: str
    max_distance: int
    exact: bool
    photodna: bool

    def confident(self, m: Match) -> bool:
        if m.matcher in EXACT_MATCHERS:
            return self.exact
        if m.matcher == "photodna":
            return self.photodna
        if m.matcher == "pdq":
            return m.distance is not None and m.distance <= self.max_distance
        return False

    def why_not(self, m: Match) -> str:
        if m.matcher in EXACT_MATCHERS or m.matcher == "photodna":
            key = "auto_exact" if m.matcher in EXACT_MATCHERS else "auto_photodna"
            return f"{m.matcher} matches of {self.category} are not deleted automatically ({key} is off)"
        if m.matcher == "pdq":
            return (f"PDQ distance {m.distance} is above auto_max_distance {self.max_distance} for {self.category}: "
                    "not confident enough for an automatic takedown")
        return f"{m.matcher} matches are never deleted automatically"

    def explain(self) -> str:
        parts = [f"PDQ at distance <= {self.max_distance}"]
        parts.append("exact SHA-1/MD5" if self.exact else "not exact SHA-1/MD5")
        parts.append("PhotoDNA" if self.photodna else "not PhotoDNA")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Verdict:
    plan: Plan
    reason: str | None = None  # why an automatic category went to review instead


class TakedownPolicy:
    def __init__(self, cfg: TakedownSection) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        self.automatic_categories = frozenset(cfg.categories)
        self._rules = {r.category: r for r in cfg.rules}

    def rule(self, category: str) -> ConfidenceRule:
        r = self._rules.get(category)
        cfg = self.cfg
        return ConfidenceRule(
            category=category,
            max_distance=cfg.auto_max_distance if r is None or r.auto_max_distance is None else r.auto_max_distance,
            exact=cfg.auto_exact if r is None or r.auto_exact is None else r.auto_exact,
            photodna=cfg.auto_photodna if r is None or r.auto_photodna is None else r.auto_photodna,
        )

    def plan(self, categories: Iterable[str]) -> Plan:
        """What the mode does with these categories, before looking at how confident the matches are."""
        if self.mode == "off":
            return "none"
        automatic = bool(self.automatic_categories.intersection(categories))
        if self.mode == "auto" and automatic:
            return "delete"
        if self.mode == "dry-run" and automatic:
            return "dry-run"
        return "review"

    def decide(self, matches: Sequence[Match]) -> Verdict:
        """What happens right when these matches of one upload are recorded."""
        plan = self.plan(m.category for m in matches)
        if plan not in ("delete", "dry-run"):
            return Verdict(plan)
        auto = [m for m in matches if m.category in self.automatic_categories]
        if any(self.rule(m.category).confident(m) for m in auto):
            return Verdict(plan)
        reasons = sorted({self.rule(m.category).why_not(m) for m in auto})
        return Verdict("review", "; ".join(reasons))

    @property
    def confirm_kind(self) -> str | None:
        """The outbox key prefix a reviewer's Confirm creates: a real takedown, a dry run, or nothing."""
        return {"off": None, "dry-run": "dryrun"}.get(self.mode, "takedown")

    def explain(self, categories: Iterable[str]) -> list[str]:
        """The effective rule per category, for ``check-config``."""
        out = [f"actions.takedown.mode: {self.mode}"]
        for category in sorted(set(categories) | self.automatic_categories):
            if self.mode == "off":
                rule = "never deleted by the service"
            elif category not in self.automatic_categories or self.mode == "review":
                rule = "deleted only when a reviewer confirms"
            else:
                verb = "deleted automatically" if self.mode == "auto" else "recorded as a dry run"
                rule = f"{verb} for {self.rule(category).explain()}; anything else goes to review"
            out.append(f"  {category}: {rule}")
        return out

    def describe(self, categories: Iterable[str], matches: Sequence[Match] | None = None) -> list[str]:
        """The "what was done" lines of the notification email."""
        cats = sorted(set(categories))
        listed = ", ".join(cats) or "unknown"
        verdict = self.decide(matches) if matches is not None else Verdict(self.plan(cats))
        plan = verdict.plan
        lines = ["match recorded off-wiki"]
        if plan == "delete":
            lines.append(f"automatic takedown started together with this email (auto mode, {listed}); "
                         "the review page shows the result")
        elif plan == "dry-run":
            lines.append("dry-run: this file would have been deleted automatically; nothing was deleted")
        elif plan == "review":
            if verdict.reason:
                lines.append(f"automatic takedown refused by policy: {verdict.reason}; "
                             "nothing is removed until a reviewer confirms")
            elif self.mode == "auto":
                lines.append(f"no automatic takedown for {listed}: nothing is removed until a reviewer confirms")
            else:
                lines.append("waiting for review: nothing is removed until a reviewer confirms")
        else:
            lines.append("takedown is off: the service will not remove this file")
        return lines
