"""docs/notifications.md and docs/reporting.md name only config keys, metrics, alerts and commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.cli import build_parser
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "notifications.md", ROOT / "docs" / "reporting.md"]


def config_keys() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    return set(re.findall(r"^\| `([^`]+)`", text, flags=re.M))


def metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_real_things(doc: Path) -> None:
    text = doc.read_text()
    keys = config_keys()
    for key in set(re.findall(r"`(actions\.[\w.\[\]]+)`", text)):
        assert key in keys or f"{key}[]" in keys, f"{doc.name}: no config key {key}"
    metrics = metric_names()
    for name in set(re.findall(r"`(mediamoderation_\w+)", text)):
        assert name in metrics, f"{doc.name}: no metric {name}"
    rules = (ROOT / "helm" / "mediamoderation" / "templates" / "prometheusrule.yaml").read_text()
    for alert in set(re.findall(r"`(Mediamoderation\w+)`", text)):
        assert f"- alert: {alert}" in rules, f"{doc.name}: no alert {alert}"
    parser = build_parser()
    for command in set(re.findall(r"`mediamoderation ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", text)):
        args = command.split()
        extra = ["0" * 40] if args[:2] == ["report", "draft"] else []
        parser.parse_args([*args, *extra])  # exits on an unknown command
