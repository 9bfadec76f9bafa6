from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from service import events as ev
from service.errors import MalformedEvent
from service.models import UploadEvent

REAL = {
    "$schema": "/mediawiki/recentchange/1.0.0",
    "meta": {
        "uri": "https://commons.wikimedia.org/wiki/File:Wissensturm_Linz,_Eingangsbereich_-_Panorama_(06).jpg",
        "request_id": "ed385c0d-116e-4a58-b31e-e60ea995db48",
        "id": "c118d26b-d9a7-45bf-a25a-32a6821adf66",
        "dt": "2023-05-25T14:10:53Z",
        "domain": "commons.wikimedia.org",
        "stream": "mediawiki.recentchange",
        "topic": "eqiad.mediawiki.recentchange",
        "partition": 0,
        "offset": 4654334057,
    },
    "id": 2202323770,
    "type": "log",
    "namespace": 6,
    "title": "File:Wissensturm Linz, Eingangsbereich - Panorama (06).jpg",
    "comment": "...",
    "timestamp": 1685023853,
    "user": "1971markus",
    "bot": False,
    "log_id": 339161257,
    "log_type": "upload",
    "log_action": "upload",
    "log_params": {"img_sha1": "n7p91uyt4hcqqq8s0snqrsfdfc75xfx", "img_timestamp": "20230525141053"},
    "server_url": "https://commons.wikimedia.org",
    "server_name": "commons.wikimedia.org",
    "server_script_path": "/w",
    "wiki": "commonswiki",
}
WIKIS = {"commonswiki"}


def variant(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(REAL)
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def test_real_event_parses() -> None:
    up = ev.classify(REAL, WIKIS, position="pos")
    assert isinstance(up, UploadEvent)
    assert up.sha1 == "c6bafc12cb88488369fad574226e2b6d72617f8d"
    assert up.event_id == "c118d26b-d9a7-45bf-a25a-32a6821adf66"
    assert up.uploader == "1971markus"
    assert up.log_action == "upload"
    assert up.upload_time.isoformat() == "2023-05-25T14:10:53+00:00"
    assert up.page_url.startswith("https://commons.wikimedia.org/wiki/File:Wissensturm")
    assert up.position == "pos"


def test_base36_round_trip_and_padding() -> None:
    assert ev.sha1_to_base36("c6bafc12cb88488369fad574226e2b6d72617f8d") == "n7p91uyt4hcqqq8s0snqrsfdfc75xfx"
    assert ev.sha1_from_base36("1") == "0" * 39 + "1"
    with pytest.raises(ValueError):
        ev.sha1_from_base36("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")
    with pytest.raises(ValueError):
        ev.sha1_from_base36("not base36!")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (variant(meta={**REAL["meta"], "domain": "canary"}), "canary"),
        (variant(type="edit"), "not-upload"),
        (variant(log_type="delete"), "not-upload"),
        (variant(log_action="revert-ish"), "not-upload"),
        (variant(wiki="enwiki"), "wiki-not-configured"),
    ],
)
def test_skips(obj: dict[str, Any], reason: str) -> None:
    assert ev.classify(obj, WIKIS) == ev.Skip(reason)


@pytest.mark.parametrize("action", ["upload", "overwrite", "revert"])
def test_log_actions(action: str) -> None:
    up = ev.classify(variant(log_action=action), WIKIS)
    assert isinstance(up, UploadEvent) and up.log_action == action


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        (variant(meta=...), "missing-field"),
        (variant(meta={**REAL["meta"], "id": 5}), "wrong-type"),
        (variant(title=...), "missing-field"),
        (variant(title=["x"]), "wrong-type"),
        (variant(title="File:" + "x" * 5000), "wrong-type"),
        (variant(server_url="javascript:alert(1)"), "wrong-type"),
        (variant(log_params={"img_sha1": 12}), "wrong-type"),
        (variant(log_params={"img_sha1": "!!"}), "bad-sha1"),
        (variant(log_params="str"), "wrong-type"),
        (variant(timestamp=..., log_params={"img_sha1": "1"}), "missing-field"),
        (variant(user=True), "wrong-type"),
    ],
)
def test_malformed(obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        ev.classify(obj, WIKIS)
    assert getattr(info.value, "problem", None) == problem


def test_decode_rejects_bad_json_non_objects_and_huge_events() -> None:
    for data, problem in [("{not json", "bad-json"), ("[1,2]", "not-an-object"), (b"\xff\xfe", "bad-utf8"),
                          ("x" * (ev.MAX_EVENT_BYTES + 1), "too-large")]:
        with pytest.raises(MalformedEvent) as info:
            ev.decode(data)
        assert getattr(info.value, "problem", None) == problem
    assert ev.decode(json.dumps(REAL))["wiki"] == "commonswiki"


def test_missing_sha1_and_empty_params_list() -> None:
    up = ev.classify(variant(log_params=[]), WIKIS)
    assert isinstance(up, UploadEvent) and up.sha1 is None
    assert up.upload_time.timestamp() == REAL["timestamp"]


def test_event_time() -> None:
    assert ev.event_time(REAL) == 1685023853.0
    assert ev.event_time({"timestamp": 5}) == 5.0
    assert ev.event_time({}) is None
