"""The PhotoDNA client and matcher against the stand-in server: every status code path, the key, the
shared rate limit, the budget and the circuit breaker; and the stand-in's own contract checks."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from service.config import BackoffSection, CircuitSection, PhotoDnaSection, Secret, ThumbnailSection
from service.errors import Unscannable
from service.matchers.photodna import (
    PhotoDnaClient,
    PhotoDnaError,
    PhotoDnaMatcher,
    PhotoDnaUnauthorized,
    build_matcher,
    parse_answer,
)
from service.matchers.photodna_probe import probe_jpeg
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import PreparedMedia
from service.ratelimit import BudgetExhausted
from service.store import Stores
from tests.infra import images
from tests.infra.photodna_server import DENIED_INVALID, DENIED_MISSING, PhotoDnaServer, sniff

KEY = "good-key"
KNOWN = images.photo(8001)
THUMB = ThumbnailSection(make_jpeg=True)


def media_of(data: bytes) -> PreparedMedia:
    return prepare(data, "0" * 40, THUMB)


@pytest.fixture
def server(photodna_server: Callable[..., PhotoDnaServer]) -> PhotoDnaServer:
    s = photodna_server(keys=[KEY])
    s.add_known(images.jpeg_bytes(KNOWN), source="Test", violations=("A1", "B2"), match_id="7469692")
    return s


class Harness:
    def __init__(self, matcher: PhotoDnaMatcher, metrics: Metrics, recovered: list[bool]) -> None:
        self.matcher = matcher
        self.client: PhotoDnaClient = matcher.client
        self.metrics = metrics
        self.recovered = recovered
        self.recovered_event = asyncio.Event()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def make(server: PhotoDnaServer, stores: Stores, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    made: list[Harness] = []
    monkeypatch.setenv("TEST_PHOTODNA_KEY", KEY)

    async def build(*, probe: bool = False, **overrides: Any) -> Harness:
        """The matcher, its client started; with ``probe``, started as the service does (the key probe runs)."""
        cfg = PhotoDnaSection(
            enabled=True, url=server.url, key=Secret(env="TEST_PHOTODNA_KEY"), rate=200, timeout=0.5, retries=3,
            backoff=BackoffSection(initial_delay=0.01, max_delay=0.05), auth_retry_interval=0.3,
            circuit=CircuitSection(failures=50, open_seconds=0.3, max_open_seconds=1.0),
        )
        cfg = dataclasses.replace(cfg, **overrides)
        metrics = Metrics()
        recovered: list[bool] = []
        event = asyncio.Event()

        def on_recover() -> None:
            recovered.append(True)
            event.set()

        matcher = build_matcher(cfg, user_agent="mm-test/0 (ts@example.org)", store=stores.budget, metrics=metrics,
                                on_recover=on_recover)
        await (matcher.start() if probe else matcher.client.start())
        h = Harness(matcher, metrics, recovered)
        h.recovered_event = event
        made.append(h)
        return h

    yield build
    for h in made:
        await h.matcher.aclose()


# --------------------------------------------------------------------------- results


async def test_match_carries_every_field_and_sends_the_jpeg_as_jpeg(make: Any, server: PhotoDnaServer) -> None:
    h = await make()
    variant = media_of(images.variants(KNOWN)["resized"])
    assert variant.jpeg is not None
    [m] = await h.matcher.match(variant)
    assert (m.matcher, m.bank, m.category, m.hash_id) == ("photodna", "photodna:Test", "child-protection", "7469692")
    assert m.distance is not None and m.distance <= 31
    tracking = m.details["tracking_id"]
    assert tracking.startswith("STANDIN_")
    assert m.details["violations"] == ["A1", "B2"] and m.details["status_code"] == 3000
    assert m.source == "Test" and m.details["tracking_id"] == tracking  # the email's Details column shows both
    [req] = server.records
    assert req.key == KEY and req.content_type == "image/jpeg" and req.enhance == "false"
    assert req.size == len(variant.jpeg) and sniff(variant.jpeg) == "image/jpeg"
    assert await h.matcher.match(media_of(images.jpeg_bytes(images.photo(8002)))) == []
    assert h.sample("mediamoderation_photodna_requests_total", http_status="200", code="3000") == 2
    assert h.sample("mediamoderation_photodna_request_duration_seconds_count") == 2
    assert h.sample("mediamoderation_photodna_budget_used") == 2


async def test_enhance_and_category_mapping(make: Any, server: PhotoDnaServer) -> None:
    from service.config import CategoryRule

    h = await make(enhance=True, categories=(CategoryRule(category="terrorism", source="other"),
                                             CategoryRule(category="csam-a", violations=("B2",))))
    [m] = await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert m.category == "csam-a"
    assert server.records[0].enhance == "true"


def test_parse_answer_reads_the_documented_example() -> None:
    body = ('{"Status":{"Code":3000,"Description":"OK","Exception":null},"ContentId":null,"IsMatch":true,'
            '"MatchDetails":{"AdvancedInfo":[],"MatchFlags":[{"AdvancedInfo":[{"Key":"MatchId","Value":"7469692"}],'
            '"Source":"Test","Violations":["A1"],"MatchDistance":179}]},"XPartnerCustomerId":null,'
            '"TrackingId":"WUS_12c0","EvaluateResponse":null}')
    r = parse_answer(body)
    assert (r.code, r.is_match, r.tracking_id) == (3000, True, "WUS_12c0")
    [f] = r.flags
    assert (f.source, f.violations, f.distance, f.match_id) == ("Test", ("A1",), 179, "7469692")


# --------------------------------------------------------------------------- status codes


async def test_3002_is_an_error_and_not_retried(make: Any, server: PhotoDnaServer) -> None:
    h = await make()
    server.script("3002")
    with pytest.raises(PhotoDnaError) as info:
        await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert info.value.reason == "photodna-invalid-request" and not info.value.retriable
    assert info.value.tracking_id and info.value.tracking_id in str(info.value)
    assert len(server.records) == 1


@pytest.mark.parametrize("answer", ["3004", "500", "503", "429", "malformed", "hang"])
async def test_transient_answers_are_retried(make: Any, server: PhotoDnaServer, answer: str) -> None:
    h = await make(timeout=0.3)
    server.script(answer, answer)
    [m] = await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert m.hash_id == "7469692"
    assert [r.kind for r in server.records] == [answer, answer, "match"]


async def test_retries_exhausted_end_in_an_error(make: Any, server: PhotoDnaServer) -> None:
    h = await make(retries=2)
    server.script("503", "3004", "500", "match-never-reached")
    with pytest.raises(PhotoDnaError) as info:
        await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert info.value.reason == "photodna" and info.value.retriable
    assert len(server.records) == 3
    assert h.sample("mediamoderation_photodna_requests_total", http_status="503", code="none") == 1
    assert h.sample("mediamoderation_photodna_requests_total", http_status="200", code="3004") == 1
    assert h.sample("mediamoderation_photodna_failures_total", reason="retries-exhausted") == 1


async def test_retry_after_is_honoured(make: Any, server: PhotoDnaServer) -> None:
    h = await make()
    server.script("429:0.4")
    await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    first, second = server.records
    assert second.t - first.t >= 0.4 - 0.01


async def test_3206_is_unscannable(make: Any, server: PhotoDnaServer) -> None:
    h = await make()
    server.script("3206")
    with pytest.raises(Unscannable) as info:
        await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert info.value.reason == "photodna-not-an-image"
    assert len(server.records) == 1


@pytest.mark.parametrize(("code", "reason"), [("3208", "photodna-image-size"), ("3209", "photodna-request-size")])
async def test_size_refusals_are_refitted_once(make: Any, server: PhotoDnaServer, code: str, reason: str) -> None:
    h = await make()
    small = media_of(images.jpeg_bytes(images.photo(8001, (200, 170))))
    server.script(code)
    [m] = await h.matcher.match(small)  # re-encoded bigger, sent again, still matches
    assert m.hash_id == "7469692"
    first, second = server.records
    assert second.content_type == "image/jpeg" and second.size != first.size
    server.clear()
    server.script(code, code)
    with pytest.raises(Unscannable) as info:
        await h.matcher.match(small)
    assert info.value.reason == reason
    assert len(server.records) == 2


async def test_no_jpeg_is_unscannable_without_a_request(make: Any, server: PhotoDnaServer) -> None:
    h = await make()
    media = dataclasses.replace(media_of(images.jpeg_bytes(KNOWN)), jpeg=None)
    with pytest.raises(Unscannable, match="photodna-no-jpeg"):
        await h.matcher.match(media)
    assert server.records == []


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize("answer", ["401", "403"])
async def test_a_refused_key_stops_calls_until_a_probe_passes(make: Any, server: PhotoDnaServer,
                                                              answer: str) -> None:
    h = await make(auth_retry_interval=0.3)
    media = media_of(images.jpeg_bytes(KNOWN))
    server.script(answer)
    with pytest.raises(PhotoDnaUnauthorized):
        await h.matcher.match(media)
    assert h.matcher.ready_reason() is not None and f"HTTP {answer}" in h.matcher.ready_reason()
    assert h.sample("mediamoderation_photodna_unauthorized") == 1
    for _ in range(5):  # refused at once: no request, no budget
        with pytest.raises(PhotoDnaUnauthorized):
            await h.matcher.match(media)
    assert len(server.records) == 1 and not h.matcher.can_send()
    await asyncio.sleep(0.3)  # the probe interval itself is what is tested here
    assert h.matcher.can_send()
    [m] = await h.matcher.match(media)  # the probe goes out; the key works again
    assert m.hash_id == "7469692"
    assert h.matcher.ready_reason() is None and h.recovered == [True]
    assert h.sample("mediamoderation_photodna_unauthorized") == 0
    assert h.sample("mediamoderation_photodna_budget_used") == 2


async def test_the_probe_goes_out_on_its_own_every_interval_until_the_key_works(
        make: Any, server: PhotoDnaServer) -> None:
    """No upload, no rescan: the matcher's own probe task finds out that the key works again."""
    h = await make(probe=True, auth_retry_interval=0.3)
    server.script("401", "403")  # the upload, then the first probe
    with pytest.raises(PhotoDnaUnauthorized):
        await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    await asyncio.wait_for(h.recovered_event.wait(), 10)  # nothing else calls the client meanwhile
    upload, refused, accepted = server.records
    assert (upload.kind, refused.kind, accepted.kind) == ("401", "403", "no-match")
    # Each probe an interval after the refusal before it, never sooner; the tiny generated image, as JPEG.
    assert 0.3 * 0.95 <= refused.t - upload.t < 0.3 + 2.0
    assert 0.3 * 0.95 <= accepted.t - refused.t < 0.3 + 2.0
    assert accepted.dims == (160, 160) and accepted.content_type == "image/jpeg"
    assert refused.size == accepted.size == len(probe_jpeg())
    assert h.matcher.ready_reason() is None and h.recovered == [True]
    assert h.sample("mediamoderation_photodna_unauthorized") == 0
    assert h.sample("mediamoderation_photodna_budget_used") == 3  # probes count against the budget
    assert h.client.probe_due_in() is None  # accepted: the probe task only waits now
    [m] = await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert m.hash_id == "7469692"


async def test_only_one_probe_is_in_flight_and_calls_meanwhile_are_refused_at_once(
        make: Any, server: PhotoDnaServer) -> None:
    h = await make(probe=True, auth_retry_interval=0.2, timeout=10.0)
    media = media_of(images.jpeg_bytes(KNOWN))
    server.script("401")
    with pytest.raises(PhotoDnaUnauthorized):
        await h.matcher.match(media)
    server.faults.latency = 3.0  # the probe's answer takes far longer than the probe interval
    await server.wait_for(lambda s: len(s.records) == 2, within=10)  # the probe has arrived: in flight
    assert h.client.probe_due_in() is None and not h.matcher.can_send()
    with pytest.raises(PhotoDnaUnauthorized):  # however due a probe would be, none goes out beside it
        await h.matcher.match(media)
    await asyncio.wait_for(h.recovered_event.wait(), 15)
    assert [r.kind for r in server.records] == ["401", "no-match"]


async def test_no_answer_does_not_prove_the_key(make: Any, server: PhotoDnaServer) -> None:
    """A probe that times out leaves the key refused; the next one goes out an interval later."""
    h = await make(probe=True, auth_retry_interval=0.2, timeout=0.3, retries=0)
    server.script("401", "hang", "401")  # the upload; probe 1 gets no answer, probe 2 is refused, 3 passes
    with pytest.raises(PhotoDnaUnauthorized):
        await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    await server.wait_for(lambda s: len(s.records) == 4, within=10)
    await asyncio.wait_for(h.recovered_event.wait(), 10)
    assert [r.kind for r in server.records] == ["401", "hang", "401", "no-match"]
    assert h.recovered == [True] and h.matcher.ready_reason() is None


async def test_wrong_or_missing_key_reads_the_azure_message(make: Any, server: PhotoDnaServer,
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("wrong-key\n")
    h = await make(key=Secret(file=str(key_file)))
    with pytest.raises(PhotoDnaUnauthorized, match="invalid subscription key"):
        await h.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert server.records[0].key == "wrong-key"

    monkeypatch.delenv("TEST_PHOTODNA_KEY")
    h2 = await make()
    assert "no PhotoDNA key" in (h2.matcher.ready_reason() or "")
    with pytest.raises(PhotoDnaUnauthorized):
        await h2.matcher.match(media_of(images.jpeg_bytes(KNOWN)))
    assert len(server.records) == 1  # nothing was sent without a key
    monkeypatch.setenv("TEST_PHOTODNA_KEY", KEY)  # the key is provided: ready again without a request
    assert h2.matcher.ready_reason() is None and h2.recovered == [True]
    assert len(await h2.matcher.match(media_of(images.jpeg_bytes(KNOWN)))) == 1


# --------------------------------------------------------------------------- limits


async def test_concurrent_calls_share_the_rate_limit(make: Any, server: PhotoDnaServer) -> None:
    h = await make(rate=25)
    media = [media_of(images.jpeg_bytes(images.photo(8100 + i, (240, 180)))) for i in range(8)]
    await asyncio.gather(*(h.matcher.match(media[i % 8]) for i in range(40)))
    assert len(server.records) == 40
    assert server.max_in_window(1.0) <= 25
    times = [r.t for r in server.records]
    assert times[-1] - times[0] >= 39 / 25 * 0.98
    assert h.sample("mediamoderation_photodna_ratelimit_wait_seconds_count", priority="live") == 40


async def test_the_monthly_budget_is_never_exceeded(make: Any, server: PhotoDnaServer) -> None:
    h = await make(monthly_budget=3)
    media = media_of(images.jpeg_bytes(KNOWN))
    results = await asyncio.gather(*(h.matcher.match(media) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 2
    assert len(server.records) == 3
    assert "budget" in (h.matcher.ready_reason() or "") and not h.matcher.can_send()
    h2 = await make(monthly_budget=3)  # a restart: the count is in the store
    with pytest.raises(BudgetExhausted):
        await h2.matcher.match(media)
    assert len(server.records) == 3


async def test_the_circuit_breaker_pauses_calls(make: Any, server: PhotoDnaServer) -> None:
    h = await make(retries=0, circuit=CircuitSection(failures=3, open_seconds=0.3, max_open_seconds=1.0))
    media = media_of(images.jpeg_bytes(KNOWN))
    server.script("500", "503", "500")
    for _ in range(3):
        with pytest.raises(PhotoDnaError):
            await h.matcher.match(media)
    assert h.sample("mediamoderation_photodna_circuit_state") == 2
    with pytest.raises(PhotoDnaError) as info:
        await h.matcher.match(media)
    assert info.value.reason == "photodna-unavailable"
    assert len(server.records) == 3 and not h.matcher.can_send()
    await asyncio.sleep(0.3)  # the open period itself is what is tested here
    [m] = await h.matcher.match(media)  # the trial request succeeds and closes the circuit
    assert m.hash_id == "7469692"
    assert h.sample("mediamoderation_photodna_circuit_state") == 0


# --------------------------------------------------------------------------- the stand-in's contract


async def test_stand_in_checks_key_content_type_and_size(server: PhotoDnaServer) -> None:
    jpeg = images.jpeg_bytes(KNOWN)
    png = images.png_bytes(KNOWN)

    async def post(data: bytes, ctype: str, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": ctype, **({"Ocp-Apim-Subscription-Key": key} if key else {})}
        async with aiohttp.ClientSession() as s, s.post(server.url, data=data, headers=headers) as r:
            return r.status, json.loads(await r.text())

    assert await post(jpeg, "image/jpeg", key=None) == (401, {"statusCode": 401, "message": DENIED_MISSING})
    assert await post(jpeg, "image/jpeg", key="nope") == (401, {"statusCode": 401, "message": DENIED_INVALID})
    status, body = await post(png, "image/jpeg")  # the MediaModeration bug: a type that is not the bytes'
    assert status == 200 and body["Status"]["Code"] == 3002
    status, body = await post(png, "image/png")
    assert body["Status"]["Code"] == 3000 and body["IsMatch"] is True
    assert body["MatchDetails"]["MatchFlags"][0]["AdvancedInfo"] == [{"Key": "MatchId", "Value": "7469692"}]
    assert (await post(b"not an image at all", "image/jpeg"))[1]["Status"]["Code"] == 3206
    assert (await post(images.jpeg_bytes(images.photo(1, (150, 400))), "image/jpeg"))[1]["Status"]["Code"] == 3208
    assert (await post(b"{}", "text/plain"))[1]["Status"]["Code"] == 3002


def test_refit_grows_small_images_past_the_minimum() -> None:
    from service.matchers.photodna import refit_jpeg

    out = refit_jpeg(images.jpeg_bytes(images.photo(3, (170, 160))))
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "JPEG" and min(img.size) >= 256


# --------------------------------------------------------------------------- the command


def write_config(tmp_path: Path, server: PhotoDnaServer, api_url: str = "http://127.0.0.1:1/api.php") -> Path:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    (tmp_path / "key").write_text(KEY)
    cfg = {
        "service": {"user_agent": "mm-test/0 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": api_url}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "photodna": {"enabled": True, "url": server.url, "key": {"file": str(tmp_path / "key")}, "retries": 0},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_photodna_check_command(tmp_path: Path, server: PhotoDnaServer, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    config = write_config(tmp_path, server)
    known = tmp_path / "known.png"
    known.write_bytes(images.png_bytes(KNOWN))
    other = tmp_path / "other.jpg"
    other.write_bytes(images.jpeg_bytes(images.photo(8003)))

    assert main(["photodna", "check", str(known), "-c", str(config)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["is_match"] is True and report["sent"]["content_type"] == "image/jpeg"
    assert report["match_flags"][0]["match_id"] == "7469692" and report["tracking_id"].startswith("STANDIN_")
    assert report["matches"][0]["category"] == "child-protection"
    assert server.records[-1].content_type == "image/jpeg"  # the PNG was converted, and labelled as such

    assert main(["photodna", "check", str(other), "--raw", "-c", str(config)]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["Status"] == {"Code": 3000, "Description": "OK", "Exception": None} and raw["IsMatch"] is False

    assert main(["photodna", "check", "https://elsewhere.example/x.jpg", "-c", str(config)]) == 4
    assert "host not in allowlist" in capsys.readouterr().err
    server.script("401")
    assert main(["photodna", "check", str(other), "-c", str(config)]) == 4
    assert "HTTP 401" in capsys.readouterr().err
    assert len(server.records) == 3  # the refused host was never contacted, the refused key once


def test_photodna_check_fetches_urls_from_the_wiki(tmp_path: Path, server: PhotoDnaServer, mediawiki: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    name = f"PhotoDNA check {time.time_ns()}.jpg"
    mediawiki.upload(name, images.variants(KNOWN)["recompressed"])
    url = mediawiki.imageinfo(f"File:{name}")["imageinfo"][0]["url"]
    config = write_config(tmp_path, server, api_url=mediawiki.api_url)
    assert main(["photodna", "check", url, "-c", str(config)]) == 1
    assert json.loads(capsys.readouterr().out)["is_match"] is True


def test_photodna_check_counts_against_the_configured_store(tmp_path: Path, server: PhotoDnaServer,
                                                             pg_database: Any, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    """Under PostgreSQL the request is counted in the shared budget, not in a SQLite file of its own."""
    from service.cli import main
    from service.ratelimit import month_of
    from service.store import postgres_stores

    config = write_config(tmp_path, server)
    cfg = json.loads(config.read_text())
    cfg["store"]["url"] = pg_database.url
    config.write_text(json.dumps(cfg))
    other = tmp_path / "other.jpg"
    other.write_bytes(images.jpeg_bytes(images.photo(8004)))
    assert main(["photodna", "check", str(other), "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["is_match"] is False

    async def used() -> int:
        stores = postgres_stores(pg_database.url)
        await stores.open()
        try:
            return await stores.budget.budget_used("photodna", month_of(time.time()))
        finally:
            await stores.close()

    assert asyncio.run(used()) == 1
    assert not (tmp_path / "db.sqlite3").exists()


@pytest.mark.parametrize(("size", "script"), [((100, 100), None), ((1600, 1200), None), ((400, 300), "3208")])
def test_photodna_check_reports_the_image_actually_sent(tmp_path: Path, server: PhotoDnaServer,
                                                        capsys: pytest.CaptureFixture[str],
                                                        size: tuple[int, int], script: str | None) -> None:
    """``sent`` describes the bytes PhotoDNA received (grown, shrunk or re-encoded after a 3208), ``input`` the
    file given; both are checked against what the stand-in decoded."""
    from service.cli import main

    config = write_config(tmp_path, server)
    picture = tmp_path / "input.png"
    data = images.png_bytes(images.photo(8010, size))
    picture.write_bytes(data)
    if script:
        server.script(script)
    assert main(["photodna", "check", str(picture), "-c", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    last = server.records[-1]
    assert last.dims is not None
    assert report["input"] == {"bytes": len(data), "width": size[0], "height": size[1]}
    assert report["sent"] == {"content_type": "image/jpeg", "bytes": last.size, "width": last.dims[0],
                              "height": last.dims[1]}
    assert last.dims != size  # grown to 160 px, shrunk by the thumbnail stage, or re-encoded after the 3208
    assert min(last.dims) >= 160 and len(server.records) == (2 if script else 1)
