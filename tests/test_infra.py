"""The test infrastructure itself works: real MediaWiki, the EventStreams look-alike and SMTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiohttp
import aiosmtplib
import pytest
import requests
from PIL import Image, ImageDraw, ImageFilter

from tests.infra.mediawiki import MediaWikiApiError, MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import RECENTCHANGE_TOPICS, EventStreamsServer

UA = "mediamoderation-tests/0.1 (https://example.invalid; infra test) aiohttp"


def structured_image(seed: int, size: tuple[int, int] = (1200, 900), fmt: str = "JPEG") -> bytes:
    """A gradient with random shapes and a light blur: structured, unlike flat fills or noise."""
    rng = random.Random(seed)
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(20, width // 3), rng.randrange(20, height // 3)
        color = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice((draw.ellipse, draw.rectangle))
        shape((x, y, x + w, y + h), fill=color, outline=(0, 0, 0))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    out = io.BytesIO()
    image.save(out, fmt, quality=90) if fmt == "JPEG" else image.save(out, fmt)
    return out.getvalue()


def unique_name(ext: str = "jpg") -> str:
    return f"Infra test {uuid.uuid4().hex[:12]}.{ext}"


# -- MediaWiki -------------------------------------------------------------------------------------

@pytest.mark.wiki
def test_wiki_thumbnail_is_rendered_at_requested_width(mediawiki: MediaWikiServer) -> None:
    data = structured_image(1)
    name = unique_name()
    result = mediawiki.upload(name, data, comment="infra")
    assert result["result"] == "Success"
    assert result["imageinfo"]["sha1"] == hashlib.sha1(data).hexdigest()

    page = mediawiki.imageinfo(name, width=330)
    info = page["imageinfo"][0]
    assert info["thumburl"].startswith(f"{mediawiki.base_url}/thumb.php?")
    assert info["thumbwidth"] == 330
    thumb = requests.get(info["thumburl"], timeout=30)
    assert thumb.status_code == 200, thumb.text[:300]
    assert thumb.headers["Content-Type"].startswith("image/")
    decoded = Image.open(io.BytesIO(thumb.content))
    decoded.load()
    assert decoded.size == (330, info["thumbheight"])

    original = requests.get(info["url"], timeout=30)
    assert original.status_code == 200
    assert original.content == data


@pytest.mark.wiki
def test_wiki_recentchange_event_points_at_the_upload(mediawiki: MediaWikiServer) -> None:
    name = unique_name("png")
    first, second = structured_image(2, (640, 480), "PNG"), structured_image(3, (640, 480), "PNG")
    mediawiki.upload(name, first)
    event = mediawiki.recentchange_event(name)

    assert event["$schema"] == "/mediawiki/recentchange/1.0.0"
    assert set(event["meta"]) == {"uri", "request_id", "id", "dt", "domain", "stream", "topic",
                                  "partition", "offset"}
    uuid.UUID(event["meta"]["id"])
    assert event["meta"]["stream"] == "mediawiki.recentchange"
    assert event["meta"]["domain"] == mediawiki.host
    assert (event["type"], event["namespace"], event["title"]) == ("log", 6, f"File:{name}")
    assert (event["log_type"], event["log_action"]) == ("upload", "upload")
    assert isinstance(event["id"], int) and isinstance(event["log_id"], int)
    assert isinstance(event["timestamp"], int) and event["user"] == mediawiki.admin_user
    assert len(event["log_params"]["img_timestamp"]) == 14
    assert event["wiki"] == mediawiki.wiki_id == "wiki"
    assert event["server_url"] == mediawiki.base_url
    assert event["server_name"] == mediawiki.host and event["server_script_path"] == ""
    sha1_hex = format(int(event["log_params"]["img_sha1"], 36), "040x")
    assert sha1_hex == hashlib.sha1(first).hexdigest() == mediawiki.imageinfo(name)["imageinfo"][0]["sha1"]

    mediawiki.upload(name, second, comment="new version")
    overwrite = mediawiki.recentchange_event(name)
    assert overwrite["log_action"] == "overwrite"
    assert overwrite["log_id"] > event["log_id"]
    assert format(int(overwrite["log_params"]["img_sha1"], 36), "040x") == hashlib.sha1(second).hexdigest()
    assert overwrite["meta"]["id"] != event["meta"]["id"]


@pytest.mark.wiki
def test_wiki_delete_needs_the_right_and_makes_the_file_missing(mediawiki: MediaWikiServer) -> None:
    name = unique_name()
    mediawiki.upload(name, structured_image(4, (400, 300)))
    url = mediawiki.imageinfo(name)["imageinfo"][0]["url"]

    weak = mediawiki.new_client(mediawiki.nodelete_user, mediawiki.nodelete_password)
    with pytest.raises(MediaWikiApiError) as denied:
        weak.delete(name)
    assert denied.value.code == "permissiondenied"
    assert "missing" not in mediawiki.imageinfo(name)

    mediawiki.delete(name, reason="infra test")
    page = mediawiki.imageinfo(name, width=330)
    assert page.get("missing") or page.get("filemissing")
    assert "imageinfo" not in page
    assert requests.get(url, timeout=30).status_code == 404


# -- EventStreams look-alike -----------------------------------------------------------------------

@dataclass
class Received:
    status: int
    headers: dict[str, str]
    first_line: str = ""
    events: list[dict[str, str]] = field(default_factory=list)
    comments: int = 0
    ended: bool = False


async def read_sse(url: str, *, headers: dict[str, str] | None = None, events: int = 1 << 30,
                   comments: int = 1 << 30, within: float = 10.0) -> Received:
    """Read a stream until ``events`` events or ``comments`` comment blocks arrived, or it ended."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        async with session.get(url, headers={"User-Agent": UA, **(headers or {})}) as response:
            got = Received(response.status, dict(response.headers))
            if response.status != 200:
                got.first_line = await response.text()
                return got
            got.first_line = (await response.content.readline()).decode().rstrip("\n")
            fields: dict[str, str] = {}
            while len(got.events) < events and got.comments < comments:
                raw = await response.content.readline()
                if not raw:
                    got.ended = True
                    break
                line = raw.decode().rstrip("\n")
                if line == "":
                    if fields:
                        got.events.append(fields)
                    fields = {}
                elif line.startswith(":"):
                    got.comments += 1
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = fields[name] + "\n" + value if name in fields else value
            return got


def rc_event(n: int) -> dict:
    return {"$schema": "/mediawiki/recentchange/1.0.0", "meta": {"id": str(uuid.uuid4()), "domain": "x"},
            "type": "log", "title": f"File:E{n}.jpg", "n": n}


async def test_sse_protocol_ids_and_history(sse_server: EventStreamsServer) -> None:
    sent = [sse_server.publish(rc_event(i), ts_ms=1_700_000_000_000 + i) for i in range(2)]
    got = await read_sse(sse_server.stream_url() + "?since=0", events=2)
    assert got.status == 200 and got.headers["Content-Type"].startswith("text/event-stream")
    assert got.first_line == ":ok"
    assert [e["event"] for e in got.events] == ["message", "message"]
    data = [json.loads(e["data"]) for e in got.events]
    assert [d["n"] for d in data] == [0, 1]
    meta = data[1]["meta"]
    assert (meta["topic"], meta["partition"], meta["offset"]) == (RECENTCHANGE_TOPICS[0], 0, 1)
    last_id = json.loads(got.events[1]["id"])
    assert last_id == [
        {"topic": RECENTCHANGE_TOPICS[0], "partition": 0, "timestamp": sent[1].ts_ms + 1},
        {"topic": RECENTCHANGE_TOPICS[1], "partition": 0, "offset": -1},
    ]
    assert got.events[1]["id"] == json.dumps(last_id, separators=(",", ":"))


async def test_sse_unknown_stream_and_bad_since_are_400(sse_server: EventStreamsServer) -> None:
    got = await read_sse(sse_server.stream_url("mediawiki.recentchange,nope"))
    assert got.status == 400
    assert json.loads(got.first_line)["detail"] == "Invalid streams: nope"
    got = await read_sse(sse_server.stream_url() + "?since=yesterday-ish")
    assert got.status == 400 and json.loads(got.first_line)["type"] == "invalid_timestamp"


async def test_sse_live_events_reach_an_open_connection(sse_server: EventStreamsServer) -> None:
    sse_server.publish(rc_event(0))  # before the connection: not delivered (starts at latest)
    reader = asyncio.create_task(read_sse(sse_server.stream_url("recentchange"), events=1))
    await sse_server.wait_for_connections(1)
    await sse_server.wait_for(lambda: sse_server.connections[0].status == 200)
    sse_server.publish(rc_event(1))
    got = await reader
    assert [json.loads(e["data"])["n"] for e in got.events] == [1]
    assert sse_server.connections[0].user_agent == UA


async def test_sse_resume_with_last_event_id_after_disconnect(sse_server: EventStreamsServer) -> None:
    for i in range(5):
        sse_server.publish(rc_event(i), ts_ms=1_000_000 + 10 * i)
    sse_server.disconnect_after = 2
    first = await read_sse(sse_server.stream_url() + "?since=0")
    assert first.ended and [json.loads(e["data"])["n"] for e in first.events] == [0, 1]

    last_id = first.events[-1]["id"]
    # since is ignored when Last-Event-ID is given
    second = await read_sse(sse_server.stream_url() + "?since=0", headers={"Last-Event-ID": last_id})
    assert [json.loads(e["data"])["n"] for e in second.events] == [2, 3]
    third = await read_sse(sse_server.stream_url(), headers={"Last-Event-ID": second.events[-1]["id"]},
                           events=1)
    assert [json.loads(e["data"])["n"] for e in third.events] == [4]

    records = sse_server.connections
    assert [r.last_event_id for r in records] == [None, last_id, second.events[-1]["id"]]
    assert records[1].query == {"since": "0"} and records[0].user_agent == UA
    assert [len(r.sent) for r in records] == [2, 2, 1]


async def test_sse_same_millisecond_events_on_resume(sse_server: EventStreamsServer) -> None:
    """Timestamp ids resume at time + 1 ms: the rest of that millisecond is skipped (as KafkaSSE does)."""
    for i in range(3):
        sse_server.publish(rc_event(i), ts_ms=5_000)
    sse_server.publish(rc_event(3), ts_ms=5_001)
    sse_server.disconnect_after = 1
    first = await read_sse(sse_server.stream_url() + "?since=0")
    sse_server.disconnect_after = None
    resumed = await read_sse(sse_server.stream_url(), headers={"Last-Event-ID": first.events[0]["id"]},
                             events=1)
    assert [json.loads(e["data"])["n"] for e in resumed.events] == [3]

    # Rewinding the timestamp by 1 ms replays the whole millisecond (duplicates: de-duplicate on meta.id).
    rewound = json.loads(first.events[0]["id"])
    rewound[0]["timestamp"] -= 1
    replay = await read_sse(sse_server.stream_url(), headers={"Last-Event-ID": json.dumps(rewound)}, events=4)
    assert [json.loads(e["data"])["n"] for e in replay.events] == [0, 1, 2, 3]


async def test_sse_offsets_mode_resumes_exactly() -> None:
    async with EventStreamsServer(offsets=True) as server:
        for i in range(3):
            server.publish(rc_event(i), ts_ms=5_000)
        server.disconnect_after = 1
        first = await read_sse(server.stream_url() + "?since=0")
        assert json.loads(first.events[0]["id"])[0] == {"topic": RECENTCHANGE_TOPICS[0], "partition": 0,
                                                        "offset": 1}
        server.disconnect_after = None
        resumed = await read_sse(server.stream_url(), headers={"Last-Event-ID": first.events[0]["id"]},
                                 events=2)
        assert [json.loads(e["data"])["n"] for e in resumed.events] == [1, 2]


async def test_sse_since_accepts_ms_and_iso(sse_server: EventStreamsServer) -> None:
    for i in range(3):
        sse_server.publish(rc_event(i), ts_ms=1000 * (i + 1))
    by_ms = await read_sse(sse_server.stream_url() + "?since=2000", events=2)
    by_iso = await read_sse(sse_server.stream_url() + "?since=1970-01-01T00:00:02Z", events=2)
    assert [json.loads(e["data"])["n"] for e in by_ms.events] == [1, 2]
    assert [json.loads(e["data"])["n"] for e in by_iso.events] == [1, 2]


async def test_sse_rejects_connections_with_429_and_503(sse_server: EventStreamsServer) -> None:
    sse_server.publish(rc_event(0), ts_ms=1)
    sse_server.reject_next(2, 429, retry_after=3)
    sse_server.reject_next(1, 503)
    url = sse_server.stream_url() + "?since=0"
    answers = [await read_sse(url, events=1) for _ in range(4)]
    assert [a.status for a in answers] == [429, 429, 503, 200]
    assert answers[0].headers["Retry-After"] == "3" and "Retry-After" not in answers[2].headers
    assert len(answers[3].events) == 1


async def test_sse_keepalives_and_malformed_data(sse_server: EventStreamsServer) -> None:
    sse_server.keepalive_interval = 0.05
    got = await read_sse(sse_server.stream_url(), comments=2)
    assert got.comments == 2 and got.events == []

    sse_server.keepalive_interval = None
    sse_server.publish_raw('{"meta": {"id": "truncated', ts_ms=10)
    sse_server.publish(rc_event(1), ts_ms=11)
    got = await read_sse(sse_server.stream_url() + "?since=0", events=2)
    assert got.events[0]["data"] == '{"meta": {"id": "truncated'
    with pytest.raises(json.JSONDecodeError):
        json.loads(got.events[0]["data"])
    assert json.loads(got.events[1]["data"])["n"] == 1


async def test_sse_abrupt_disconnect_breaks_the_connection(sse_server: EventStreamsServer) -> None:
    sse_server.publish(rc_event(0), ts_ms=1)
    sse_server.publish(rc_event(1), ts_ms=2)
    sse_server.disconnect_after, sse_server.abrupt_disconnect = 1, True
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_sse(sse_server.stream_url() + "?since=0")
    assert len(sse_server.connections[0].sent) == 1


# -- SMTP ------------------------------------------------------------------------------------------

def mail(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "bot@example.org", "tns@example.org", subject
    message.set_content("a match was found")
    return message


async def test_smtp_captures_messages(smtp_server: SmtpServer) -> None:
    await aiosmtplib.send(mail("one"), hostname=smtp_server.host, port=smtp_server.port,
                          recipients=["tns@example.org", "backup@example.org"])
    [captured] = await smtp_server.wait_for_async(1, within=5)
    assert captured.message["Subject"] == "one"
    assert captured.message.get_content().strip() == "a match was found"
    assert captured.mail_from == "bot@example.org"
    assert captured.rcpt_tos == ("tns@example.org", "backup@example.org")


async def test_smtp_outage_and_recovery_on_the_same_port(smtp_server: SmtpServer) -> None:
    port = smtp_server.port
    smtp_server.stop()
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.send(mail("lost"), hostname=smtp_server.host, port=port, timeout=5)
    smtp_server.start()
    assert smtp_server.port == port
    await aiosmtplib.send(mail("after"), hostname=smtp_server.host, port=port, timeout=5)
    assert [m.message["Subject"] for m in await smtp_server.wait_for_async(1, within=5)] == ["after"]


async def test_smtp_auth_is_required_when_configured() -> None:
    with SmtpServer(auth_user="notifier", auth_password="s3cret") as server:
        with pytest.raises(aiosmtplib.SMTPSenderRefused):
            await aiosmtplib.send(mail("anon"), hostname=server.host, port=server.port, timeout=5)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await aiosmtplib.send(mail("bad"), hostname=server.host, port=server.port, timeout=5,
                                  username="notifier", password="wrong")
        await aiosmtplib.send(mail("good"), hostname=server.host, port=server.port, timeout=5,
                              username="notifier", password="s3cret")
        [captured] = await server.wait_for_async(1, within=5)
        assert captured.auth_user == "notifier" and captured.message["Subject"] == "good"
        assert server.auth_failures >= 1
