from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from service import events as ev
from service.errors import MalformedEvent
from service.models import RawEvent, UploadEvent

REAL: dict[str, Any] = {
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


# ---------------------------------------------------------------- hostile events: only MalformedEvent


def raw(data: str | bytes, problem: str | None = None) -> RawEvent:
    return RawEvent(data=data, position="pos", label="test", problem=problem)


def problem_of(data: str | bytes | RawEvent, wikis: set[str] = WIKIS) -> str:
    with pytest.raises(MalformedEvent) as info:
        ev.parse(data if isinstance(data, RawEvent) else raw(data), wikis)
    return str(getattr(info.value, "problem", ""))


def with_meta(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(REAL)
    obj["meta"].update(changes)
    return obj


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("[" * 100_000, "too-deep"),  # RecursionError in json.loads before
        ('{"a":' * 60_000, "too-deep"),
        ('{"a":' * (ev.MAX_DEPTH + 1) + "1" + "}" * (ev.MAX_DEPTH + 1), "too-deep"),
        ("]" + "[" * 100, "bad-json"),
        ('{"meta": {}, "n": 1e999}', "bad-json"),
        ('{"meta": {}, "n": NaN}', "bad-json"),
        ('{"meta": {}, "n": -Infinity}', "bad-json"),
        ('{"meta": {}, "n": ' + "9" * 5000 + "}", "bad-json"),  # over Python's int digit limit
        (b'{"meta": {"id": "\xed\xa0\x80"}}', "bad-utf8"),  # a surrogate encoded as (invalid) UTF-8
        (b"\xef\xbb\xbf{}", "bad-json"),
        ('{"title": "\ud800"}', "bad-text"),  # text that holds a raw lone surrogate cannot be UTF-8
        ("x" * (ev.MAX_EVENT_BYTES + 1), "too-large"),
        ("\u00fc" * (ev.MAX_EVENT_BYTES // 2 + 1), "too-large"),  # counted in bytes, not characters
    ],
)
def test_decode_refuses_hostile_text(data: str | bytes, problem: str) -> None:
    assert problem_of(data) == problem


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine() -> None:
    deep = '{"a":' * ev.MAX_DEPTH + "1" + "}" * ev.MAX_DEPTH
    assert ev.decode(deep)["a"]["a"]
    obj = copy.deepcopy(REAL)
    obj["comment"] = "[{" * 50_000 + '\\"[' + "]}" * 10  # brackets (and an escaped quote) inside a string
    up = ev.parse(raw(json.dumps(obj)), WIKIS).result
    assert isinstance(up, UploadEvent)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        # No meta.dt, an integer timestamp of 10**400: OverflowError before.
        (variant(meta={k: v for k, v in REAL["meta"].items() if k != "dt"}, timestamp=10**400), "bad-timestamp"),
        (variant(timestamp=-1), "bad-timestamp"),
        (variant(timestamp=1 << 34), "bad-timestamp"),
        (variant(timestamp="1685023853"), "bad-timestamp"),
        (variant(timestamp=True), "bad-timestamp"),
        (with_meta(id="abc\ud800"), "bad-text"),
        (with_meta(id="abc\x00"), "bad-text"),
        (variant(title="File:A\ud800.jpg"), "bad-text"),
        (variant(title="File:A\x00.jpg"), "bad-text"),
        (variant(title="File:A\r.jpg"), "bad-text"),
        (variant(wiki="commonswiki\ud800"), None),  # not a configured wiki: skipped, never stored
        (variant(server_url="https://commons.wikimedia.org\ud800"), "bad-text"),
        (variant(log_params={"img_sha1": "n7p91uyt4hcqqq8s0snqrsfdfc75xf\ud800"}), "bad-sha1"),
        (variant(user="x" * (ev.MAX_USER_LEN + 1)), "wrong-type"),
    ],
)
def test_numbers_and_key_text_are_validated(obj: dict[str, Any], problem: str | None) -> None:
    data = json.dumps(obj)  # lone surrogates travel as \ud800 escapes, as EventStreams sends them
    if problem is None:
        assert ev.parse(raw(data), WIKIS).result == ev.Skip("wiki-not-configured")
    else:
        assert problem_of(data) == problem


def test_free_text_keeps_the_event_with_surrogates_replaced() -> None:
    read = ev.parse(raw(json.dumps(variant(user="Bad\udfffUser\x00"))), WIKIS)
    assert isinstance(read.result, UploadEvent)
    assert read.result.uploader == "Bad\ufffdUser\ufffd"
    read.result.uploader.encode("utf-8")  # storable and mailable
    assert read.time == ev.event_time(REAL)


def test_a_problem_found_by_the_source_is_the_same_error() -> None:
    assert problem_of(raw(b"", problem="too-large")) == "too-large"
    assert problem_of(RawEvent(data=None, position=1)) == "not-an-object"  # type: ignore[arg-type]  # a Kafka tombstone


def test_unsafe_page_uri_falls_back_to_one_built_from_the_title() -> None:
    up = ev.classify(with_meta(uri="https://commons.wikimedia.org/wiki/File:X\ud800"), WIKIS)
    assert isinstance(up, UploadEvent)
    assert up.page_url == "https://commons.wikimedia.org/wiki/File:Wissensturm_Linz,_Eingangsbereich_-_Panorama_(06).jpg"


@pytest.mark.parametrize("value", [10**400, -(10**400), float("inf"), "2023", None, [], {"x": 1}, True])
def test_event_time_never_raises(value: Any) -> None:
    assert ev.event_time({"timestamp": value}) is None
    assert ev.event_time({"meta": {"dt": "9999-99-99"}, "timestamp": value}) is None
    assert ev.event_time({"meta": {"dt": "2023-05-25T14:10:53"}}) == 1685023853.0


def test_fuzzed_events_raise_nothing_but_malformed() -> None:
    """Mutations of a real event (truncations, every field replaced by hostile values) never raise
    anything but MalformedEvent: the pipeline's only expectation of parse()."""
    rng = random.Random(9)
    hostile: list[Any] = [None, True, 0, -1, 10**400, 1.5, "", "\ud800", "\x00", "x" * 3000, [], {}, [[[]]],
                          {"a": {"b": {}}}, "File:\udfff", 2**63, "20230525141053", "zzzz"]
    text = json.dumps(REAL)
    cases: list[str | bytes] = [text[:n] for n in range(0, len(text), 7)]
    paths = [(k,) for k in REAL] + [("meta", k) for k in REAL["meta"]] + [
        ("log_params", k) for k in REAL["log_params"]]
    for _ in range(1500):
        obj = copy.deepcopy(REAL)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            target = obj
            for key in path[:-1]:
                target = target[key] if isinstance(target.get(key), dict) else target.setdefault(key, {})
                if not isinstance(target, dict):
                    break
            else:
                target[path[-1]] = rng.choice(hostile)
        cases.append(json.dumps(obj))
    cases += [bytes(rng.randrange(256) for _ in range(40)) for _ in range(200)]
    for data in cases:
        try:
            ev.parse(raw(data), WIKIS)
        except MalformedEvent as exc:
            assert getattr(exc, "problem", "unexpected") != "unexpected", data
