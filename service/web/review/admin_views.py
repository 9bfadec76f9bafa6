"""HTML of the admin pages: the allowlist (negative bank) with undo, the reviewers, the sign-in log."""

from __future__ import annotations

from collections.abc import Sequence

from service.config import ReviewerSection
from service.store.base import ANY_BANK, AllowlistEntry, Reviewer, SignIn
from service.web.review.views import BASE, e, hidden, layout, when


def _table(caption: str, head: Sequence[str], rows: Sequence[str]) -> str:
    if not rows:
        return "<p>Empty.</p>"
    th = "".join(f'<th scope="col">{e(h)}</th>' for h in head)
    return (f'<div class="scroll"><table class="admin"><caption class="sr">{e(caption)}</caption><thead><tr>{th}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def allowlist_page(entries: Sequence[AllowlistEntry], banks: Sequence[str], *, distance: int, flash: str | None,
                   user: str, csrf: str) -> str:
    rows = []
    for a in entries:
        bank = "every bank" if a.bank == ANY_BANK else a.bank
        rows.append(
            f'<tr><td class="mono"><a href="{BASE}/matches/{e(a.sha1)}">{e(a.sha1)}</a></td><td>{e(bank)}</td>'
            f'<td class="mono">{e(a.pdq or "-")}</td><td>{e(a.added_by)}</td><td>{when(a.added_at)}</td>'
            f'<td>{e(a.note) or "-"}</td><td><form method="post" action="{BASE}/allowlist/undo">{hidden("csrf", csrf)}'
            f'{hidden("sha1", a.sha1)}{hidden("bank", a.bank)}'
            f'<button type="submit" aria-label="Undo: remove {e(a.sha1[:12])} ({e(bank)}) from the allowlist">Undo'
            "</button></form></td></tr>")
    options = "".join(f'<option value="{e(b)}">{e(b)}</option>' for b in banks)
    add = f"""<form class="filters" method="post" action="{BASE}/allowlist/add" aria-label="Add to the allowlist">
{hidden("csrf", csrf)}
<label>SHA-1 of the content <input name="sha1" required pattern="[0-9a-fA-F]{{40}}" maxlength="40"></label>
<label>PDQ (64 hex digits; optional: taken from the scan cache when known)
<input name="pdq" pattern="[0-9a-fA-F]{{64}}" maxlength="64"></label>
<label>Bank <select name="bank"><option value="{ANY_BANK}">every bank</option>{options}</select></label>
<label>Why (required) <input name="note" required maxlength="2000"></label>
<button type="submit">Add</button></form>"""
    note = f'<p class="notice" role="status">{e(flash)}</p>' if flash else ""
    body = (f"<h1>Allowlist (negative bank)</h1>{note}<p>Matches of these contents never alert and are never taken "
            f"down, for the bank named; neither are near copies (PDQ distance up to {distance}, "
            "<code>review.allowlist_pdq_distance</code>). Dismiss adds rows; Undo removes one. Both are in the audit "
            f"log.</p>{add}"
            + _table("Allowlist, newest first", ["SHA-1", "Bank", "PDQ", "Added by", "When", "Why", ""], rows))
    return layout("Allowlist", body, user=user, csrf=csrf, active="allowlist", admin=True)


def reviewers_page(stored: Sequence[Reviewer], from_config: Sequence[ReviewerSection], *, user: str,
                   csrf: str) -> str:
    rows = [f"<tr><td>{e(r.name)}</td><td>{e(r.role)}</td><td>{'active' if r.active else 'disabled'}</td>"
            f"<td>{when(r.created_at)}</td><td>{when(r.updated_at)}</td></tr>" for r in stored]
    legacy = "".join(f"<li>{e(r.name)}</li>" for r in from_config)
    deprecated = (f'<p class="notice" role="alert">Deprecated: these reviewers come from the config file '
                  f"(<code>review.reviewers</code>) and sign in as admins. Add them to the store with "
                  f"<code>mediamoderation reviewer add</code>, then remove them from the config.</p><ul>{legacy}</ul>"
                  if legacy else "")
    body = ("<h1>Reviewers</h1><p>Managed with <code>mediamoderation reviewer add | list | disable | passwd | role"
            "</code>; changes apply at the next request, without a restart.</p>"
            + _table("Reviewers", ["Name", "Role", "State", "Added", "Changed"], rows) + deprecated)
    return layout("Reviewers", body, user=user, csrf=csrf, active="reviewers", admin=True)


def signins_page(entries: Sequence[SignIn], *, next_before: int | None, user: str, csrf: str) -> str:
    rows = [f"<tr><td>{when(x.at)}</td><td>{e(x.name)}</td><td>{e(x.address)}</td>"
            f'<td class="{"ok" if x.result == "ok" else "bad"}">{e(x.result)}</td></tr>' for x in entries]
    more = f'<p><a rel="next" href="{BASE}/signins?before={next_before}">Older →</a></p>' if next_before else ""
    body = ("<h1>Sign-ins</h1><p>Every sign-in attempt, newest first. Failed ones also drive the sign-in throttle "
            "that every replica shares.</p>"
            + _table("Sign-ins, newest first", ["Time", "Name", "Address", "Result"], rows) + more)
    return layout("Sign-ins", body, user=user, csrf=csrf, active="signins", admin=True)
