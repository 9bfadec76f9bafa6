"""Report drafts for the NCMEC CyberTipline, built from a confirmed child-protection case.

The service never submits a report: staff download the draft (``mediamoderation report draft`` or the
case page's link), complete what only they know, and submit it themselves.  A draft never contains
media: only facts the service recorded (times, links, names, hashes, matches, takedown, preservation).
"""

from service.reporting.draft import DraftError, ReportDraft, build_draft, draft_for_case
from service.reporting.export import to_json, to_xml

__all__ = ["DraftError", "ReportDraft", "build_draft", "draft_for_case", "to_json", "to_xml"]
