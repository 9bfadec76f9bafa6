"""What the service knows about a case, in the structure of the CyberTipline Reporting API.

The draft holds two request bodies of that API, as nested dictionaries in its element order: ``report``
(the Report endpoint: ``incidentSummary``, ``internetDetails/webPageIncident``, ``reporter``,
``personOrUserReported``, ``additionalInfo``) and one ``fileDetails`` per upload (the Submit File
Details endpoint, without the ``reportId`` / ``fileId`` NCMEC assigns on submission), plus ``todo``:
what staff must complete.  Values the service does not know are left out, never invented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.config import Config
from service.errors import ServiceError
from service.links import page_url
from service.store.base import Preservation, ReviewStore, ScanStore, WorkflowStore

INCIDENT_TYPE = "Child Pornography (possession, manufacture, and distribution)"
CHILD_PROTECTION = "child-protection"
REPORTABLE_STATES = ("confirmed", "removed")

TODO = (
    "reporter.reportingPerson: the name, email and phone of the person submitting the report",
    "fileDetails.fileViewedByEsp / exifViewedByEsp: whether staff viewed the file (the service cannot tell)",
    "personOrUserReported: anything the wiki knows beyond the user name (e.g. a CheckUser IP, the account's email)"
    " - only through the wiki's own procedures",
    "incidentSummary.escalateToHighPriority: only if a child is at immediate risk",
    "the file itself: upload it to NCMEC from the wiki's deleted-file archive; the service never holds it",
)


class DraftError(ServiceError):
    """No draft can be made for this case (unknown, not confirmed, not child-protection)."""

    reason = "report-draft"


@dataclass(frozen=True)
class ReportDraft:
    sha1: str
    report: dict[str, Any]
    files: list[dict[str, Any]]
    todo: list[str] = field(default_factory=lambda: list(TODO))
    generated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"submitted": False, "generatedAt": self.generated_at, "caseSha1": self.sha1,
                "report": self.report, "fileDetails": self.files, "toComplete": self.todo}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _upload_iso(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC).isoformat().replace("+00:00", "Z")
    except ValueError:
        return text


def _drop_empty(value: Any) -> Any:
    """Leave out what the service does not know (None, empty strings, lists and mappings)."""
    if isinstance(value, Mapping):
        out = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_drop_empty(v) for v in value) if v not in (None, "", [], {})]
    return value


def build_draft(
    *, sha1: str, state: str, rows: Sequence[Mapping[str, Any]], md5: str | None, pdq: str | None,
    preserved: Sequence[Preservation], takedowns: Mapping[tuple[str, str], float], cfg: Config,
    now: float, confirmed_by: str | None = None,
) -> ReportDraft:
    """The draft from a case's match rows (newest first), scan hashes and preservation records.

    ``takedowns`` maps (wiki, title) to when the takedown of that upload completed.
    """
    uploads: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        uploads.setdefault((row["wiki"], row["title"]), []).append(row)
    keep = {(p.wiki, p.title): p for p in preserved}
    times = [t for t in (_upload_iso(r.get("upload_time")) for r in rows) if t]
    incident = min(times) if times else _iso(min((float(r["created_at"]) for r in rows), default=now))
    urls: list[str] = []
    files: list[dict[str, Any]] = []
    uploaders: list[tuple[str, str]] = []
    for (wiki_id, title), matches in uploads.items():
        wiki = cfg.wiki(wiki_id)
        url = page_url(wiki, title) if wiki is not None else None
        if url:
            urls.append(url)
        first = matches[-1]
        if first.get("uploader") and (wiki_id, first["uploader"]) not in uploaders:
            uploaders.append((wiki_id, str(first["uploader"])))
        p = keep.get((wiki_id, title))
        removed = takedowns.get((wiki_id, title), p.removed_at if p else None)
        hash_details = [{"name": "PDQ", "value": pdq}] if pdq else []
        for m in matches:
            hash_details.append({"name": f"Matched {m['matcher']} hash list entry",
                                 "value": f"bank {m['bank']}, id {m['hash_id'] or m['hash_value']}"
                                          + (f", source {m['source']}" if m.get("source") else "")
                                          + (f", distance {m['distance']}" if m.get("distance") is not None else "")})
            tracking = (m.get("details") or {}).get("tracking_id") if isinstance(m.get("details"), Mapping) else None
            if tracking:
                hash_details.append({"name": "PhotoDNA TrackingId", "value": str(tracking)})
        info = [f"Uploaded to {wiki_id} at {_upload_iso(first.get('upload_time')) or 'unknown time'} "
                f"({first.get('log_action') or 'upload'}).",
                f"Matched by the service at {_iso(float(first['created_at']))}."]
        if removed is not None:
            info.append(f"Removed from public view at {_iso(removed)}.")
        if p is not None:
            ids = ", ".join(map(str, p.filearchive_ids)) or "none found"
            info.append(f"Preserved in the wiki's deleted-file archive: filearchive id(s) {ids}"
                        f"{' (suppressed)' if p.suppressed else ''}; keep until {_iso(p.preserve_until)}.")
        files.append(_drop_empty({
            "fileName": title.split(":", 1)[-1],
            "originalFileName": title.split(":", 1)[-1],
            "locationOfFile": url,
            "publiclyAvailable": True,
            "fileRelevance": "Reported",
            "originalFileHash": [{"hashType": "SHA1", "value": sha1}]
                                + ([{"hashType": "MD5", "value": md5}] if md5 else []),
            "details": [{"type": "HASH", "nameValuePair": hash_details}],
            "additionalInfo": info,
        }))
    sources = sorted({f"{r['bank']}:{r['hash_id'] or r['hash_value']}"
                      + (f" ({r['source']})" if r.get("source") else "") for r in rows})
    summary = [f"An upload to a wiki matched a known child sexual abuse material hash ({', '.join(sources)}).",
               "The case was "
               f"{'confirmed by reviewer ' + confirmed_by if state == 'confirmed' and confirmed_by else state}"
               " in the service's review queue."]
    removed_all = sorted(t for t in takedowns.values())
    if removed_all:
        summary.append(f"Takedown completed at {_iso(removed_all[0])}.")
    wiki_ids = sorted({w for w, _ in uploads})
    reported: dict[str, Any] = {}
    if uploaders:
        wiki_id, user = uploaders[0]
        wiki = cfg.wiki(wiki_id)
        reported = {
            "screenName": user,
            "espService": ", ".join(wiki_ids),
            "profileUrl": [page_url(wiki, f"User:{user}")] if wiki is not None else [],
            "additionalInfo": ("Other uploaders of the same content: "
                               + ", ".join(f"{u} ({w})" for w, u in uploaders[1:])) if len(uploaders) > 1 else None,
        }
    parts: dict[str, Any] = {
        "incidentSummary": _drop_empty({
            "incidentType": INCIDENT_TYPE,
            "incidentDateTime": incident,
            "incidentDateTimeDescription": "upload time of the earliest matching upload (the wiki's upload log)",
        }),
        "internetDetails": _drop_empty([{"webPageIncident": {"url": urls,
                                                             "additionalInfo": "file page(s) on the wiki"}}]),
        "reporter": {"reportingPerson": {}},  # required by the API: staff complete it
        "personOrUserReported": _drop_empty(reported),
        "additionalInfo": " ".join(summary),
    }
    report = {k: v for k, v in parts.items() if k == "reporter" or v not in (None, "", [], {})}
    return ReportDraft(sha1=sha1, report=report, files=files, generated_at=_iso(now) or "")


async def draft_for_case(sha1: str, *, review: ReviewStore, scans: ScanStore, workflow: WorkflowStore, cfg: Config,
                         now: float) -> ReportDraft:
    """Gather a case's facts from the store and build its draft; :class:`DraftError` when not reportable."""
    case = await review.review_case(sha1)
    if case is None:
        raise DraftError(f"no case for SHA-1 {sha1}")
    if CHILD_PROTECTION not in case.categories:
        raise DraftError(f"case {sha1} is not a child-protection case ({', '.join(case.categories) or 'no category'})")
    if case.state not in REPORTABLE_STATES:
        raise DraftError(f"case {sha1} is {case.state}: a draft is made once the case is confirmed (or removed "
                         "automatically)")
    rows = await review.case_matches(sha1)
    scan = await scans.get_scan(sha1)
    takedowns: dict[tuple[str, str], float] = {}
    for entry in await review.list_audit(500, sha1=sha1):
        if entry.action == "takedown" and entry.wiki and entry.title:
            key = (entry.wiki, entry.title)
            takedowns[key] = min(takedowns.get(key, entry.at), entry.at)
    return build_draft(sha1=sha1, state=case.state, rows=rows, md5=scan.md5 if scan else None,
                       pdq=scan.pdq if scan else None, preserved=await workflow.preservation(sha1),
                       takedowns=takedowns, cfg=cfg, now=now, confirmed_by=case.decided_by)
