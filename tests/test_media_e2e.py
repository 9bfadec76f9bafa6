"""Issue 14 end to end: videos, audio, an animated GIF and a PDF uploaded to the real test MediaWiki and
scanned from stream events through the whole pipeline (decode pool of processes), between images.

The wiki has no video handler (no TimedMediaHandler), so it answers a video's thumbnail with the generic
file-type icon: the service must stream the original instead and never hash that icon.  PDF pages are
rendered by the wiki (PdfHandler with Debian's ghostscript), never by the service.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
import uuid
from pathlib import Path

import aiohttp
import pytest

from service.config import FetchSection, ThumbnailSection, WikiSection
from service.config.media import AnimationSection, VideoSection
from service.fetch import WikiClient
from service.media.download import TEMP_PREFIX
from service.media.frames import prepare_frames
from service.media.thumbnail import prepare
from service.media.video import prepare_video, vpdq_lines
from service.metrics import Metrics
from tests.infra import images, videos
from tests.infra.mediawiki import GHOSTSCRIPT, MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, metric, running_list, start, upload_and_publish

__all__ = ["running_list"]  # the fixture, shared with test_e2e

pytestmark = pytest.mark.wiki

KNOWN = 7301
MAX_VIDEO_BYTES = 1_500_000


def _leftover_files() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"))


def _signature(data: bytes) -> list[str]:
    with tempfile.NamedTemporaryFile(suffix=".webm") as f:
        f.write(data)
        f.flush()
        media = prepare_video(f.name, "0" * 40, None, VideoSection(), ThumbnailSection())
    return vpdq_lines(media.frames)


@pytest.mark.skipif(not Path(GHOSTSCRIPT).exists() or shutil.which("pdfinfo") is None,
                    reason="ghostscript and poppler-utils render PDF pages for the wiki (scripts/test.sh)")
async def test_media_kinds_through_the_pipeline(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    run = uuid.uuid4().hex[:8]
    known = images.photo(KNOWN)
    known_media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert known_media.pdq is not None
    tone = videos.wav(1.0, 440.0 + int(run[:4], 16) % 400)  # a new file each run (SHA-1s are per wiki)
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n"
                    f"{known_media.pdq.hex},,test,known-{KNOWN}\n"
                    f"{hashlib.md5(tone).hexdigest()},terrorism,test,tone-md5\n")
    known_video = videos.video(videos.with_known(known, seed=KNOWN + 100))
    vpdq = tmp_path / "vpdq.csv"
    vpdq.write_text("id,category,source,frame_number,quality,pdq,timestamp\n"
                    + "".join(f"known-video,,test,{line}\n" for line in _signature(known_video)))

    def image(seed: int) -> bytes:
        return images.jpeg_bytes(images.photo(seed + int(run[:4], 16)))

    uploads = {
        "img a.jpg": image(1),
        "known.webm": known_video,
        "img b.jpg": image(2),
        "corrupt.webm": videos.corrupt(videos.video(videos.moving(KNOWN + 200, 3))),
        "img c.jpg": image(3),
        "long.webm": videos.video(videos.moving(KNOWN + 300, 70, (64, 48)), fps=1, size=(64, 48)),
        "oversized.webm": videos.video(videos.moving(KNOWN + 400, 2)) + b"\0" * MAX_VIDEO_BYTES,
        "reencoded.webm": videos.video(videos.with_known(known, seed=KNOWN + 100), ext="vp8.webm", fps=25,
                                       size=(480, 360), bit_rate=800_000),
        "one frame.webm": videos.video([(images.photo(KNOWN + 500), 0.1)]),
        "clean.webm": videos.video(videos.moving(KNOWN + 600, 4)),
        "tone.wav": tone,
        "other tone.wav": videos.wav(0.5, 200.0 + int(run[:4], 16) % 400),
        "anim.gif": videos.animated_gif([images.photo(KNOWN + 700 + i) for i in range(4)] + [known]),
        "doc.pdf": videos.pdf([images.photo(KNOWN + 800), known]),
        "img d.jpg": image(4),
    }
    events = {}
    for name, data in uploads.items():
        events[name] = await upload_and_publish(mediawiki, sse_server, f"Media {run} {name}", data)

    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank,
                      pipeline={"cpu_pool": "process", "cpu_workers": 2, "event_deadline": 120},
                      media={"video": {"max_bytes": MAX_VIDEO_BYTES, "max_duration": 60,
                                       "vpdq_banks": [{"name": "vpdq-test", "path": str(vpdq),
                                                       "category": "child-protection"}]}})
    service = await start(cfg)
    running_list.append(service)
    await service.finished(len(events), timeout=240)

    ledger = service.service.stores.ledger
    outcomes = {name: await ledger.event_outcome(e["meta"]["id"]) for name, e in events.items()}
    assert outcomes == {
        "img a.jpg": "clean", "img b.jpg": "clean", "img c.jpg": "clean", "img d.jpg": "clean",
        "known.webm": "match", "reencoded.webm": "match",
        "corrupt.webm": "unscannable:undecodable", "long.webm": "unscannable:too-long",
        "oversized.webm": "unscannable:too-large",
        "one frame.webm": "clean", "clean.webm": "clean",
        "tone.wav": "match", "other tone.wav": "clean:exact-only",
        "anim.gif": "match", "doc.pdf": "match",
    }

    mails = await smtp_server.wait_for_async(5)
    bodies = {str(m.message["Subject"]): m.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
              for m in mails}
    video_mail = next(b for s, b in bodies.items() if "known.webm" in s)
    assert "video at 4.0 s, 5.0 s, 6.0 s (3 of 11 sampled frames)" in video_mail
    assert "vpdq" in video_mail
    assert "document page 2" in next(b for s, b in bodies.items() if "doc.pdf" in s)
    assert "image at 4.0 s" in next(b for s, b in bodies.items() if "anim.gif" in s)
    assert "md5" in next(b for s, b in bodies.items() if "tone.wav" in s)

    async with aiohttp.ClientSession() as http, http.get(service.base + "/metrics") as r:
        text = await r.text()
    assert metric(text, "mediamoderation_outcomes_total", outcome="clean:exact-only") == 1
    assert metric(text, "mediamoderation_matches_total", category="child-protection", matcher="vpdq") == 2
    assert metric(text, "mediamoderation_matches_total", category="terrorism", matcher="md5") == 1
    assert metric(text, "mediamoderation_media_scanned_total", kind="video") == 4  # known, reencoded, one, clean
    assert metric(text, "mediamoderation_media_scanned_total", kind="document") == 1
    assert metric(text, "mediamoderation_frames_hashed_total", kind="video") >= 11 + 11 + 1 + 4
    # The file-type icon the wiki shows for videos was never downloaded.
    assert metric(text, "mediamoderation_fetch_requests_total", kind="thumbnail", result="ok") == 4 + 2  # jpgs, pdf
    assert not _leftover_files()  # no temporary video left behind


async def test_apng_on_the_real_wiki_is_sampled_plain_png_keeps_its_thumbnail(mediawiki: MediaWikiServer) -> None:
    """MediaWiki 1.39 labels an APNG image/png; its metadata's frameCount makes the service fetch the original,
    whose 5th frame (a known photo) is then hashed like a GIF's."""
    run = uuid.uuid4().hex[:8]
    seed = int(run[:4], 16)
    known = images.photo(KNOWN + 900)
    anim = videos.apng([images.photo(KNOWN + 910 + seed + i) for i in range(4)] + [known], size=(640, 480))
    still = images.png_bytes(images.photo(KNOWN + 920 + seed, (640, 480)))
    mediawiki.upload(f"Anim {run}.png", anim)
    mediawiki.upload(f"Still {run}.png", still)
    wiki = WikiSection(id=mediawiki.wiki_id, api_url=mediawiki.api_url)
    client = WikiClient(FetchSection(), (wiki,), "mediamoderation-test/0.1 (ts@example.org)", Metrics(),
                        rng=random.Random(1))
    await client.start()
    try:
        got = await client.fetch(wiki, f"File:Anim {run}.png")
        plain = await client.fetch(wiki, f"File:Still {run}.png")
    finally:
        await client.aclose()
    assert got.data == anim and got.data_source == "original"
    assert plain.data_source == "thumbnail"
    media = prepare_frames(prepare, got.data, got.info.sha1, ThumbnailSection(), None, "original",
                           AnimationSection())
    assert media.frames_sampled == 5
    expected = prepare(images.png_bytes(known.resize((640, 480))), "0" * 40, ThumbnailSection())
    assert expected.pdq is not None
    assert images.hamming(media.frames[4].pdq, expected.pdq.hashes[0]) <= 31


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("ddjvu", "djvudump", "c44", "djvm")),
                    reason="djvulibre-bin renders DjVu pages for the wiki and makes the test file (scripts/test.sh)")
async def test_djvu_and_multipage_tiff_through_the_pipeline(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    """A DjVu whose 2nd page is a known image is matched through the wiki's page thumbnails (DjVuHandler with
    djvulibre-bin); a TIFF whose 2nd page is known is matched from its original (the wiki has no
    PagedTiffHandler: it reports no pages for a TIFF and fails to render a multi-page one); hostile TIFFs end
    unscannable within budget while the images around them are scanned."""
    run = uuid.uuid4().hex[:8]
    seed = int(run[:4], 16)
    known = images.photo(KNOWN + 1000)
    known_media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert known_media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{known_media.pdq.hex},,test,known-doc\n")
    workdir = tmp_path / "djvu"
    workdir.mkdir()

    def image(n: int) -> bytes:
        return images.jpeg_bytes(images.photo(KNOWN + 1100 + seed + n))

    uploads = {
        "img a.jpg": image(1),
        "doc.djvu": videos.djvu([images.photo(KNOWN + 1200 + seed), known, images.photo(KNOWN + 1201 + seed)],
                                str(workdir)),
        "clean.djvu": videos.djvu([images.photo(KNOWN + 1300 + seed + i) for i in range(3)], str(workdir)),
        "img b.jpg": image(2),
        "scan.tiff": videos.tiff([images.photo(KNOWN + 1400 + seed), known, images.photo(KNOWN + 1401 + seed)]),
        "clean.tiff": videos.tiff([images.photo(KNOWN + 1500 + seed + i) for i in range(3)]),
        "pages.tiff": videos.tiff_many_pages(5000 + seed % 100),
        "bomb.tiff": videos.tiff_bomb_page(images.photo(KNOWN + 1600 + seed)),
        "img c.jpg": image(3),
    }
    events = {}
    for name, data in uploads.items():
        events[name] = await upload_and_publish(mediawiki, sse_server, f"Doc {run} {name}", data)
    info = mediawiki.client.get(action="query", prop="imageinfo", titles=f"File:Doc {run} scan.tiff",
                                iiprop="size|mime|metadata")["query"]["pages"][0]["imageinfo"][0]
    assert "pagecount" not in info  # what the service works around: the wiki does not say a TIFF has pages

    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank,
                      pipeline={"cpu_pool": "process", "cpu_workers": 2, "event_deadline": 120},
                      media={"documents": {"extra_pages": 2, "tiff_max_pages": 1000, "tiff_decode_budget": 20}})
    service = await start(cfg)
    running_list.append(service)
    await service.finished(len(events), timeout=240)

    ledger = service.service.stores.ledger
    outcomes = {name: await ledger.event_outcome(e["meta"]["id"]) for name, e in events.items()}
    assert outcomes == {
        "img a.jpg": "clean", "img b.jpg": "clean", "img c.jpg": "clean",
        "doc.djvu": "match", "clean.djvu": "clean",
        "scan.tiff": "match", "clean.tiff": "clean",
        "pages.tiff": "unscannable:too-many-pages", "bomb.tiff": "unscannable:decompression-bomb",
    }
    mails = await smtp_server.wait_for_async(2)
    bodies = {str(m.message["Subject"]): m.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
              for m in mails}
    assert "document page 2" in next(b for s, b in bodies.items() if "doc.djvu" in s)
    assert "document page 2" in next(b for s, b in bodies.items() if "scan.tiff" in s)

    async with aiohttp.ClientSession() as http, http.get(service.base + "/metrics") as r:
        text = await r.text()
    assert metric(text, "mediamoderation_media_scanned_total", kind="document") == 4  # 2 DjVu, 2 TIFF
    # DjVu: the wiki's thumbnails of pages 1-3, never the original.
    assert metric(text, "mediamoderation_fetch_requests_total", kind="thumbnail", result="ok") == 3 + 2 * 3
