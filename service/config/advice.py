"""Non-fatal advice about a valid configuration, printed by ``check-config`` and logged by ``run``."""

from __future__ import annotations

from service.config.root import Config


def warnings_for(cfg: Config) -> list[str]:
    """Non-fatal advice printed by ``check-config`` and logged by ``run``."""
    out: list[str] = []
    n = cfg.actions.notify
    if n.enabled and n.smtp is None:
        out.append(f"actions.notify.smtp is not set: notifications are written as .eml files to {n.outbox_dir}")
    if not cfg.banks.list and not cfg.photodna.enabled:
        out.append("banks.list is empty: nothing can match")
    p = cfg.photodna
    if p.enabled and not p.key.get():
        out.append(f"photodna.key: no key is available from {p.key!r} right now; PhotoDNA stays not-ready "
                   "until it is")
    pl, budget = cfg.pipeline, cfg.thumbnail.max_decoded_bytes
    if pl.cpu_pool == "process" and pl.decode_memory_limit and budget * 9 // 4 + (200 << 20) > pl.decode_memory_limit:
        out.append(f"thumbnail.max_decoded_bytes ({budget}) is large for pipeline.decode_memory_limit "
                   f"({pl.decode_memory_limit}): images near the budget may end unscannable:decoder-memory")
    out += _takedown_review_warnings(cfg)
    return out


def _takedown_review_warnings(cfg: Config) -> list[str]:
    out: list[str] = []
    t = cfg.actions.takedown
    produced = produced_categories(cfg)
    never = [c for c in t.categories if c not in produced]
    if t.mode != "off" and never:
        out.append(f"actions.takedown.categories: no bank produces {', '.join(map(repr, never))}, so "
                   f"{'auto-takedown' if t.mode == 'auto' else 'takedown'} never applies to it (categories produced: "
                   f"{', '.join(sorted(produced)) or 'none'})")
    if "terrorism" in t.categories:
        out.append(f"actions.takedown.categories includes terrorism: in {t.mode} mode terrorism matches are "
                   "taken down without a human review")
    if t.auth is None and t.mode in ("review", "dry-run"):
        out.append("actions.takedown.auth is not set: " + (
            "confirmed takedowns cannot run" if t.mode == "review" else "dry-run records without asking the wiki"))
    r = cfg.review
    ui = r.enabled and cfg.http.enabled
    if t.mode == "review" and not ui:
        out.append("actions.takedown.mode is review but the review UI is off (review.enabled / http.enabled): "
                   "nothing will be taken down")
    if ui and not r.reviewers and r.proxy_auth.header is None:
        out.append("review.reviewers is empty and review.proxy_auth is off: only reviewers in the store can sign in "
                   "(add them with `mediamoderation reviewer add NAME`)")
    if ui and r.reviewers:
        out.append("review.reviewers is deprecated (removed in the next release): add each reviewer to the store with "
                   "`mediamoderation reviewer add NAME [--role admin]`, then remove them from the config (config-file "
                   "reviewers sign in as admins meanwhile)")
    if ui and cfg.actions.notify.review_url is None:
        out.append("actions.notify.review_url is not set: emails will not link to the review page")
    if ui and not r.escalate_recipients:
        out.append("review.escalate_recipients is empty: Escalate emails actions.notify.recipients")
    if ui and not r.secure_cookies:
        out.append("review.secure_cookies is off: session cookies are sent over plain HTTP")
    return out


def produced_categories(cfg: Config) -> set[str]:
    """The categories a match can have: the banks' and, when PhotoDNA is on, its rules' and default."""
    found = {b.category for b in cfg.banks.list}
    if cfg.photodna.enabled:
        found |= {cfg.photodna.default_category, *(r.category for r in cfg.photodna.categories)}
    return found
