"""Report drafts (issue 13): a confirmed child-protection case gives a CyberTipline-structured draft with every field
the service knows, as XML and JSON, with no media; the CLI prints it; unreportable cases are refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import config_from_dict
from service.models import Match, UploadEvent
from service.reporting import DraftError, draft_for_case, to_json, to_xml
from service.store import Stores, sqlite_stores
from service.store.base import Decision, Preservation, ScanRecord
from tests.infra import images

REPO = Path(__file__).resolve().parent.parent
MEDIA = images.jpeg_bytes(images.photo(9101))
SHA1 = hashlib.sha1(MEDIA).hexdigest()
MD5 = hashlib.md5(MEDIA).hexdigest()
PDQ = "a5" * 32
UPLOADED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
REMOVED = 1_772_600_000.0


def config_data(tmp_path: Path) -> dict[str, Any]:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "https://wiki.example.org/w/api.php"}],
        "banks": {"list": [{"name": "cp-test", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }


async def confirmed_case(stores: Stores, *, category: str = "child-protection", state: str = "confirmed") -> None:
    event = UploadEvent(event_id="ev-1", wiki="testwiki", title="File:Holiday snap.jpg",
                        server_url="https://wiki.example.org", page_url="https://evil.example/forged",
                        uploader="Mallory", upload_time=UPLOADED, log_action="upload", sha1=SHA1)
    match = Match(matcher="pdq", bank="cp-test", category=category, hash_id="known-42", hash_value=PDQ, distance=6,
                  source="industry-list", details={"tracking_id": "TRK-1"})
    await stores.pipeline.record_matches(event, SHA1, [match], [])
    await stores.scans.put_scan(ScanRecord(sha1=SHA1, outcome="match", bank_version="v1", scanned_at=1.0, pdq=PDQ,
                                           pdq_quality=90, md5=MD5, matches=(match,)))
    await stores.review.record_decision(Decision(sha1=SHA1, state=state, reviewer="alice", action="confirm"))
    await stores.review.append_audit("system", "takedown", sha1=SHA1, wiki="testwiki", title=event.title,
                                     note="deleted", detail={})
    await stores.workflow.record_preservation(Preservation(
        wiki="testwiki", title=event.title, sha1=SHA1, filearchive_ids=(31, 32), suppressed=True,
        removed_at=REMOVED, preserve_until=REMOVED + 365 * 86400))


async def test_draft_has_every_known_field_in_the_cybertipline_structure(tmp_path: Path) -> None:
    cfg = config_from_dict(config_data(tmp_path), base=tmp_path)
    stores = sqlite_stores(cfg.store.path)
    await stores.open()
    try:
        await confirmed_case(stores)
        draft = await draft_for_case(SHA1, review=stores.review, scans=stores.scans, workflow=stores.workflow,
                                     cfg=cfg, now=REMOVED + 60)
    finally:
        await stores.close()

    xml = to_xml(draft)
    root = ET.fromstring(xml.encode("utf-8"))  # well-formed XML
    assert root.tag == "reportDraft" and root.get("submitted") == "false"
    assert [child.tag for child in root] == ["report", "fileDetails", "toComplete"]
    report = root.find("report")
    assert report is not None
    assert [c.tag for c in report] == ["incidentSummary", "internetDetails", "reporter", "personOrUserReported",
                                       "additionalInfo"]  # the API's element order
    assert report.findtext("incidentSummary/incidentType") == \
        "Child Pornography (possession, manufacture, and distribution)"
    assert report.findtext("incidentSummary/incidentDateTime") == "2026-03-04T05:06:07Z"  # the upload time
    page = "https://wiki.example.org/wiki/File:Holiday_snap.jpg"  # from the config, not the event's forged URL
    assert report.findtext("internetDetails/webPageIncident/url") == page
    assert report.findtext("personOrUserReported/screenName") == "Mallory"
    assert report.findtext("personOrUserReported/profileUrl") == "https://wiki.example.org/wiki/User:Mallory"
    info = report.findtext("additionalInfo") or ""
    assert "cp-test:known-42 (industry-list)" in info and "confirmed by reviewer alice" in info
    assert "Takedown completed at" in info
    files = root.find("fileDetails")
    assert files is not None
    assert files.findtext("fileName") == "Holiday snap.jpg" and files.findtext("locationOfFile") == page
    hashes = {h.get("hashType"): h.text for h in files.findall("originalFileHash")}
    assert hashes == {"SHA1": SHA1, "MD5": MD5}
    pairs = {p.findtext("name"): p.findtext("value") for p in files.findall("details[@type='HASH']/nameValuePair")}
    assert pairs["PDQ"] == PDQ
    assert pairs["Matched pdq hash list entry"] == "bank cp-test, id known-42, source industry-list, distance 6"
    assert pairs["PhotoDNA TrackingId"] == "TRK-1"
    notes = " ".join(a.text or "" for a in files.findall("additionalInfo"))
    assert "Uploaded to testwiki at 2026-03-04T05:06:07Z" in notes
    assert "Removed from public view at" in notes
    assert "filearchive id(s) 31, 32 (suppressed)" in notes and "keep until 2027-" in notes

    # JSON: the same content.
    data = json.loads(to_json(draft))
    assert data["submitted"] is False and data["report"]["personOrUserReported"]["screenName"] == "Mallory"
    assert data["fileDetails"][0]["originalFileHash"][0] == {"hashType": "SHA1", "value": SHA1}

    # Never media: no bytes of the file, no media URL, nothing long and opaque.
    for text in (xml, to_json(draft)):
        assert MEDIA[:64].hex() not in text and "/images/" not in text and "base64" not in text.lower()
        assert max(len(w) for w in text.split()) < 200


@pytest.mark.parametrize(("category", "state", "problem"), [
    ("terrorism", "confirmed", "not a child-protection case"),
    ("child-protection", "dismissed", "is dismissed"),
])
async def test_unreportable_cases_are_refused(tmp_path: Path, category: str, state: str, problem: str) -> None:
    cfg = config_from_dict(config_data(tmp_path), base=tmp_path)
    stores = sqlite_stores(cfg.store.path)
    await stores.open()
    try:
        await confirmed_case(stores, category=category, state=state)
        with pytest.raises(DraftError, match=problem):
            await draft_for_case(SHA1, review=stores.review, scans=stores.scans, workflow=stores.workflow, cfg=cfg,
                                 now=0.0)
        with pytest.raises(DraftError, match="no case"):
            await draft_for_case("0" * 40, review=stores.review, scans=stores.scans, workflow=stores.workflow,
                                 cfg=cfg, now=0.0)
    finally:
        await stores.close()


async def test_cli_prints_the_draft(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    cfg = config_from_dict(data, base=tmp_path)
    stores = sqlite_stores(cfg.store.path)
    await stores.open()
    await confirmed_case(stores)
    await stores.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service", "report", "draft", "-c", str(config), *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    xml = run(SHA1)
    assert xml.returncode == 0, xml.stderr
    assert ET.fromstring(xml.stdout.encode()).findtext("report/personOrUserReported/screenName") == "Mallory"
    out = tmp_path / "draft.json"
    written = run(SHA1, "--format", "json", "-o", str(out))
    assert written.returncode == 0 and "not submitted" in written.stderr
    assert json.loads(out.read_text())["caseSha1"] == SHA1
    unknown = run("f" * 40)
    assert unknown.returncode == 2 and "no case" in unknown.stderr
