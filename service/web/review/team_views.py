"""Pages of the team workflow: the confirmation step of a bulk decision, and the question before taking over a
case another reviewer holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from service.store.base import Claim, ReviewCase
from service.web.review.views import BASE, case_list, e, hidden, layout, when


def bulk_confirm_page(cases: Sequence[ReviewCase], choice: str, *, note: str,
                      titles: Mapping[str, list[tuple[str, str]]], held: Mapping[str, Claim],
                      kept: Mapping[str, str], mode: str, user: str, csrf: str, admin: bool = False) -> str:
    verb = {"confirm": "Confirm (dry-run takedown)" if mode == "dry-run" else "Confirm (take down)",
            "dismiss": "Dismiss as false positives", "escalate": "Escalate"}[choice]
    warn = (f'<p class="notice" role="alert">{len(held)} of these cases are claimed by another reviewer: acting '
            "on them takes them over.</p>") if held else ""
    effect = {"confirm": "Every upload of each file is deleted on the wiki.",
              "dismiss": "Each file (and near copies of it) goes on the allowlist and will not alert again.",
              "escalate": "The escalation list is emailed once per case."}[choice]
    fields = "".join(hidden("sha1", c.sha1) for c in cases)
    body = f"""<h1>{e(verb)}: {len(cases)} case(s)?</h1>{warn}
<p>{e(effect)}</p>{case_list(cases, titles, held)}
<form method="post" action="{BASE}/bulk" class="confirm">{hidden("csrf", csrf)}{hidden("decision", choice)}
{hidden("confirmed", "1")}{hidden("f", urlencode(dict(kept)))}{fields}
<label for="note">Note for the audit log (optional)</label>
<textarea id="note" name="note" rows="2" maxlength="2000">{e(note)}</textarea>
<div class="buttons"><button type="submit" class="danger" id="bulk-go">{e(verb)}: {len(cases)} case(s)</button>
<a href="{BASE}/?{e(urlencode(dict(kept)))}">Cancel</a></div></form>"""
    return layout("Confirm", body, user=user, csrf=csrf, admin=admin)


def take_over_page(held: Sequence[tuple[ReviewCase, Claim]], *, action: str, fields: Mapping[str, str], user: str,
                   csrf: str, admin: bool = False) -> str:
    case, claim = held[0]
    inputs = "".join(hidden(k, v) for k, v in fields.items())
    body = f"""<h1>Someone else is working on this case</h1>
<p class="notice" role="alert"><strong>{e(claim.reviewer)}</strong> claimed this case at {when(claim.claimed_at)}
(until {when(claim.expires_at)}). Act anyway?</p>
<form method="post" action="{e(action)}">{hidden("csrf", csrf)}{hidden("take_over", "1")}{inputs}
<div class="buttons"><button type="submit" class="danger" id="take-over">Yes, {e(fields.get("decision", "act"))} anyway
</button><a href="{BASE}/matches/{e(case.sha1)}">Back to the case</a></div></form>"""
    return layout("Claimed by another reviewer", body, user=user, csrf=csrf, admin=admin)
