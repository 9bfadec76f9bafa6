"""A report draft as XML (the CyberTipline API's element names and order) or JSON.

XML: one document, root ``reportDraft`` (``submitted="false"``), holding the ``report`` body and one
``fileDetails`` body per upload exactly as the API's XML would nest them, then ``toComplete``.
``originalFileHash`` becomes ``<originalFileHash hashType="SHA1">…</originalFileHash>`` and
``details`` becomes ``<details type="HASH"><nameValuePair>…`` as in the API.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from service.reporting.draft import ReportDraft

XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA = "https://report.cybertip.org/ispws/xsd"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _add(parent: ET.Element, name: str, value: Any) -> None:
    if isinstance(value, list):
        for v in value:
            _add(parent, name, v)
        return
    el = ET.SubElement(parent, name)
    if name == "originalFileHash" and isinstance(value, Mapping):
        el.set("hashType", _text(value["hashType"]))
        el.text = _text(value["value"])
    elif name == "details" and isinstance(value, Mapping):
        el.set("type", _text(value["type"]))
        for pair in value.get("nameValuePair") or []:
            nv = ET.SubElement(el, "nameValuePair")
            ET.SubElement(nv, "name").text = _text(pair["name"])
            ET.SubElement(nv, "value").text = _text(pair["value"])
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _add(el, k, v)
    else:
        el.text = _text(value)


def _body(name: str, content: Mapping[str, Any]) -> ET.Element:
    el = ET.Element(name)
    for k, v in content.items():
        _add(el, k, v)
    return el


def to_xml(draft: ReportDraft) -> str:
    ET.register_namespace("xsi", XSI)
    root = ET.Element("reportDraft", {"submitted": "false", "generatedAt": draft.generated_at,
                                      "caseSha1": draft.sha1, f"{{{XSI}}}noNamespaceSchemaLocation": SCHEMA})
    root.append(_body("report", draft.report))
    for f in draft.files:
        root.append(_body("fileDetails", f))
    todo = ET.SubElement(root, "toComplete")
    for item in draft.todo:
        ET.SubElement(todo, "item").text = item
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_json(draft: ReportDraft) -> str:
    return json.dumps(draft.as_dict(), indent=2, ensure_ascii=False) + "\n"
