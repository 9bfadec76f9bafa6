"""Issue 14: video frames (PyAV), vPDQ signatures and banks, animations and document pages.

Videos are generated here with PyAV from generated photos (tests/infra/videos.py); a known photo
shown for 3 seconds in the middle must be found at the right offsets, also after re-encoding at
another size, frame rate and codec.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import main
from service.config import BankSection, BanksSection, Config, ThumbnailSection
from service.config.media import AnimationSection, VideoSection, VpdqBankSection
from service.errors import Unscannable
from service.matchers.banks import BankSet
from service.matchers.base import StaticMatcher
from service.matchers.frames import match_frames
from service.matchers.vpdq import VpdqMatcher, match_bank, parse_vpdq_bank
from service.media.frames import prepare_frames
from service.media.pool import ProcessPool
from service.media.thumbnail import prepare
from service.media.video import cpu_kill_timer, prepare_video, vpdq_lines
from service.metrics import Metrics
from service.models import FrameHash, Match, PreparedMedia
from service.pipeline_steps import remote_match
from tests.infra import images, videos

KNOWN_SEED = 7101


@pytest.fixture(scope="module")
def known_bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BankSet]:
    known = prepare(images.jpeg_bytes(images.photo(KNOWN_SEED)), "0" * 40, ThumbnailSection())
    assert known.pdq is not None
    path = tmp_path_factory.mktemp("bank") / "bank.csv"
    path.write_text(f"hash,category,source,id\n{known.pdq.hex},,test,known-{KNOWN_SEED}\n")
    yield BankSet(BanksSection(list=(BankSection(name="cp", path=str(path), category="child-protection"),)),
                  Metrics())


@pytest.fixture(scope="module")
def known_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of other photos, the known photo for 3 s (4.0-7.0 s), 4 s of other photos; VP9 WebM 320x240 10 fps."""
    path = tmp_path_factory.mktemp("video") / "known.webm"
    path.write_bytes(videos.video(videos.with_known(images.photo(KNOWN_SEED))))
    return path


def _hash(path: Path, **overrides: object) -> PreparedMedia:
    return prepare_video(str(path), "a" * 40, None, dataclasses.replace(VideoSection(), **overrides),
                         ThumbnailSection())


def test_known_image_in_the_middle_is_matched_with_offsets(known_video: Path, known_bank: BankSet) -> None:
    media = _hash(known_video)
    assert media.kind == "video" and media.frames_sampled == 11  # one frame per second, 0 .. 10 s
    assert [f.timestamp for f in media.frames] == [float(t) for t in range(11)]
    assert media.frames[0].frame_number == 0 and media.frames[1].frame_number == 10  # 10 fps
    [hit] = match_frames(known_bank, media)
    assert hit.matcher == "pdq" and hit.hash_id == f"known-{KNOWN_SEED}" and hit.category == "child-protection"
    assert hit.details["offsets"] == [4.0, 5.0, 6.0]
    assert hit.details["frames_matched"] == 3 and hit.details["frames_hashed"] == 11
    assert hit.details["media"] == "video"


def test_clean_video_is_not_matched(tmp_path: Path, known_bank: BankSet) -> None:
    path = tmp_path / "clean.webm"
    path.write_bytes(videos.video(videos.moving(8300, 5)))
    media = _hash(path)
    assert media.frames_sampled == 5
    assert match_frames(known_bank, media) == []


def test_reencoded_video_still_matches_frames_and_vpdq(tmp_path: Path, known_video: Path,
                                                      known_bank: BankSet) -> None:
    """The same timeline as MPEG-4 at 480x360 and 25 fps: the frames and the vPDQ signature still match."""
    other = tmp_path / "reencoded.mp4"
    other.write_bytes(videos.video(videos.with_known(images.photo(KNOWN_SEED)), ext="mp4", fps=25,
                                   size=(480, 360), bit_rate=1_000_000))
    media = _hash(other)
    [hit] = match_frames(known_bank, media)
    assert hit.details["offsets"] == [4.0, 5.0, 6.0]
    assert hit.details["frame_numbers"] == [100, 125, 150]  # 25 fps

    # A vPDQ bank built from the original's signature (reference line format, id/category/source prefixed).
    original = _hash(known_video)
    bank_file = tmp_path / "vpdq.csv"
    bank_file.write_text("id,category,source,frame_number,quality,pdq,timestamp\n" + "".join(
        f"vid-1,,test,{line}\n" for line in vpdq_lines(original.frames)))
    bank = parse_vpdq_bank(VpdqBankSection(name="v", path=str(bank_file), category="child-protection"),
                           bank_file.read_bytes())
    [vhit] = match_bank(bank, media.frames)
    assert vhit.matcher == "vpdq" and vhit.hash_id == "vid-1" and vhit.category == "child-protection"
    assert vhit.details["candidate_matched_pct"] >= 80 and vhit.details["query_matched_pct"] >= 80
    # A clean video shares no frames with it.
    clean = tmp_path / "clean.webm"
    clean.write_bytes(videos.video(videos.moving(8400, 4)))
    assert match_bank(bank, _hash(clean).frames) == []


def test_vpdq_rule_uses_both_percentages() -> None:
    """A 3-frame bank clip inside a 10-frame upload: candidate 100 %, query 30 %."""
    clip = [prepare(images.jpeg_bytes(images.photo(9000 + i)), "0" * 40, ThumbnailSection()) for i in range(10)]
    frames = tuple(FrameHash(i, float(i), m.pdq.hashes[0], m.pdq.quality) for i, m in enumerate(clip)
                   if m.pdq is not None)
    data = ("id,category,source,frame_number,quality,pdq,timestamp\n" + "".join(
        f"clip,,t,{f.frame_number},{f.quality},{f.pdq.hex()},{f.timestamp:.3f}\n" for f in frames[3:6])).encode()
    loose = parse_vpdq_bank(VpdqBankSection(name="b", path="b.csv", category="c"), data)
    [hit] = match_bank(loose, frames)
    assert hit.details["candidate_matched_pct"] == 100.0 and hit.details["query_matched_pct"] == 30.0
    assert hit.details["offsets"] == [3.0, 4.0, 5.0]
    strict = parse_vpdq_bank(VpdqBankSection(name="b", path="b.csv", category="c", query_match_pct=50), data)
    assert match_bank(strict, frames) == []


def test_one_frame_video(tmp_path: Path, known_bank: BankSet) -> None:
    path = tmp_path / "one.webm"
    path.write_bytes(videos.video([(images.photo(KNOWN_SEED), 0.1)]))
    media = _hash(path)
    assert media.frames_sampled == 1 and len(media.frames) == 1
    [hit] = match_frames(known_bank, media)
    assert hit.details["offsets"] == [0.0]


def test_bad_videos_are_unscannable(tmp_path: Path, known_video: Path) -> None:
    corrupt = tmp_path / "corrupt.webm"
    corrupt.write_bytes(videos.corrupt(known_video.read_bytes()))
    with pytest.raises(Unscannable) as ei:
        _hash(corrupt)
    assert ei.value.reason == "undecodable"
    text = tmp_path / "text.webm"
    text.write_bytes(images.text_as_jpeg())
    with pytest.raises(Unscannable) as ei:
        _hash(text)
    assert ei.value.reason == "undecodable"
    with pytest.raises(Unscannable) as ei:
        _hash(known_video, max_duration=5.0)
    assert ei.value.reason == "too-long"
    with pytest.raises(Unscannable) as ei:
        _hash(known_video, max_frame_pixels=320 * 200)
    assert ei.value.reason == "too-large-decoded"
    with pytest.raises(Unscannable) as ei:
        _hash(known_video, decode_budget=1e-6)
    assert ei.value.reason == "decode-timeout"


def test_frame_cap_and_rate(known_video: Path) -> None:
    assert _hash(known_video, max_frames=3).frames_sampled == 3
    media = _hash(known_video, sample_rate=2.0)
    assert media.frames_sampled == 22 and media.frames[1].timestamp == 0.5  # 0.0 .. 10.5 s


def test_audio_only_file_is_audio(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    path.write_bytes(videos.wav())
    assert _hash(path).kind == "audio"


def test_animated_gif_fifth_frame_is_matched(known_bank: BankSet) -> None:
    seq = [images.photo(8500 + i) for i in range(4)] + [images.photo(KNOWN_SEED)] + [images.photo(8600)]
    data = videos.animated_gif(seq, duration_ms=1000)
    media = prepare_frames(prepare, data, "b" * 40, ThumbnailSection(), None, "original", AnimationSection())
    assert media.pdq is not None  # the first frame, as before
    assert media.frames_sampled == 6 and media.duration == 6.0
    [hit] = match_frames(known_bank, media)
    assert hit.details["offsets"] == [4.0] and hit.details["frame_numbers"] == [4]
    # Still images get no frames; the cap holds.
    still = prepare_frames(prepare, images.jpeg_bytes(images.photo(1)), "c" * 40, ThumbnailSection(), None,
                           "original", AnimationSection())
    assert still.frames == ()
    capped = prepare_frames(prepare, data, "b" * 40, ThumbnailSection(), None, "original",
                            AnimationSection(max_frames=2))
    assert capped.frames_sampled == 2


def test_apng_fifth_frame_is_matched(known_bank: BankSet) -> None:
    """An APNG (the wiki labels it image/png) is sampled like a GIF once its original is fetched."""
    seq = [images.photo(8500 + i) for i in range(4)] + [images.photo(KNOWN_SEED)] + [images.photo(8600)]
    data = videos.apng(seq, duration_ms=1000)
    media = prepare_frames(prepare, data, "b" * 40, ThumbnailSection(), None, "original", AnimationSection())
    assert media.frames_sampled == 6 and media.duration == 6.0
    [hit] = match_frames(known_bank, media)
    assert hit.details["offsets"] == [4.0] and hit.details["frame_numbers"] == [4]
    # A plain PNG is a still image: no frames, judged as before.
    still = prepare_frames(prepare, images.png_bytes(images.photo(1)), "c" * 40, ThumbnailSection(), None,
                           "thumbnail", AnimationSection())
    assert still.frames == () and still.pdq is not None


def test_document_pages_are_matched(known_bank: BankSet) -> None:
    page1 = images.jpeg_bytes(images.photo(8700))
    page2 = images.jpeg_bytes(images.photo(KNOWN_SEED))
    media = prepare_frames(prepare, page1, "d" * 40, ThumbnailSection(), None, "thumbnail", None,
                           ((2, page2), (3, b"broken")))
    assert media.kind == "document" and [f.frame_number for f in media.frames] == [1, 2]
    [hit] = match_frames(known_bank, media)
    assert hit.details["pages"] == [2]


def spin_in_c(budget: float) -> bytes:
    """A decoder that never returns to Python: C code burning CPU under the video decode's kill timer."""
    with cpu_kill_timer(budget):
        return hashlib.pbkdf2_hmac("sha256", b"spin", b"salt", 500_000_000)


async def test_a_spinning_decoder_is_killed_and_the_pool_goes_on(known_video: Path) -> None:
    pool = ProcessPool(2, memory_limit=1024 * 1024 * 1024, metrics=Metrics())
    try:
        spinning = asyncio.create_task(pool.run(spin_in_c, 0.5))
        hashed = await asyncio.wait_for(pool.run(prepare_video, str(known_video), "e" * 40, None, VideoSection(),
                                                 ThumbnailSection()), 120)
        assert hashed.frames_sampled == 11  # decoded meanwhile
        with pytest.raises(Unscannable) as ei:
            await asyncio.wait_for(spinning, 120)
        assert ei.value.reason == "decoder-crashed"  # killed by its CPU timer, twice (once retried alone)
        again = await asyncio.wait_for(pool.run(prepare_video, str(known_video), "e" * 40, None, VideoSection(),
                                                ThumbnailSection()), 120)
        assert again.frames_sampled == 11 and pool.failure is None
    finally:
        pool.shutdown()


def test_vpdq_command_prints_bank_rows(known_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vpdq", str(known_video), "--id", "vid-9", "--source", "local", "--header"]) == 0
    text = capsys.readouterr().out
    bank = parse_vpdq_bank(VpdqBankSection(name="v", path="v.csv", category="child-protection"), text.encode())
    [video] = bank.videos
    assert video.id == "vid-9" and video.source == "local" and video.frames == 11
    assert main(["vpdq", str(Path(__file__)), "--id", "x"]) == 3  # not a video


def test_signature_equals_the_reference_vpdq(known_video: Path, tmp_path: Path) -> None:
    """Same frames, timestamps, qualities and hashes as the reference hasher (pip ``vpdq``, in the test extra,
    built against Debian's FFmpeg development packages)."""
    import vpdq  # type: ignore[import-not-found]
    mp4 = tmp_path / "known.mp4"
    mp4.write_bytes(videos.video(videos.with_known(images.photo(KNOWN_SEED)), ext="mp4", fps=25))
    for path in (known_video, mp4):
        reference = vpdq.computeHash(str(path), seconds_per_hash=1, downsample_width=0, downsample_height=0,
                                     thread_count=1)
        ours = _hash(path)
        assert [(r.frame_number, round(r.timestamp, 3), r.quality, r.hex) for r in reference] == \
            [(f.frame_number, f.timestamp, f.quality, f.pdq.hex()) for f in ours.frames]


async def test_keyframes_for_photodna(known_video: Path) -> None:
    """With PhotoDNA on (make_jpeg), the best distinct frames become JPEG keyframes; the remote matcher is asked
    about each in turn until one matches, and the match says at what time that keyframe is."""
    media = prepare_video(str(known_video), "f" * 40, None, VideoSection(photodna_keyframes=3),
                          ThumbnailSection(make_jpeg=True))
    assert len(media.keyframes) == 3 and media.jpeg == media.keyframes[0][1]
    assert len({t for t, _ in media.keyframes}) == 3
    wanted = media.keyframes[1][1]
    seen: list[bytes] = []
    hit = Match(matcher="photodna", bank="photodna", category="child-protection", hash_id="", hash_value="")

    async def only_second(m: PreparedMedia) -> list[Match]:
        assert m.jpeg is not None
        seen.append(m.jpeg)
        return [hit] if m.jpeg == wanted else []

    matcher = StaticMatcher("photodna")
    matcher.match = only_second  # type: ignore[method-assign]
    [found] = await remote_match(matcher, media)
    assert found.details["offsets"] == [media.keyframes[1][0]] and found.details["media"] == "video"
    assert seen == [media.keyframes[0][1], wanted]  # stopped at the first match
    off = prepare_video(str(known_video), "f" * 40, None, VideoSection(photodna_keyframes=0),
                        ThumbnailSection(make_jpeg=True))
    assert off.keyframes == () and off.jpeg is None


def test_media_coverage_doc_names_only_real_keys_and_metrics() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "media-coverage.md").read_text()
    cfg = Config()
    for key in set(re.findall(r"`((?:media|banks|pipeline)\.[a-z_.]+)`", text)):
        node: object = cfg
        for part in key.split("."):
            assert dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}, key
            node = getattr(node, part)
    bank_keys = {f.name for f in dataclasses.fields(VpdqBankSection)}
    for name in re.findall(r"`(pdq_threshold|query_match_pct|candidate_match_pct|category)`", text):
        assert name in bank_keys, name
    names = {m.name for m in Metrics().registry.collect()}
    for metric_name in set(re.findall(r"`(mediamoderation_[a-z_]+)", text)):
        assert metric_name.removesuffix("_total") in names, metric_name


def test_vpdq_banks_reload_on_change_and_keep_old_content_on_a_bad_file(tmp_path: Path) -> None:
    """vPDQ bank files are re-read when they change, like image banks; a bad file keeps the old content."""
    clip = [prepare(images.jpeg_bytes(images.photo(9100 + i)), "0" * 40, ThumbnailSection()) for i in range(6)]
    frames = tuple(FrameHash(i, float(i), m.pdq.hashes[0], m.pdq.quality) for i, m in enumerate(clip)
                   if m.pdq is not None)
    header = "id,category,source,frame_number,quality,pdq,timestamp\n"

    def rows(vid: str, part: tuple[FrameHash, ...]) -> str:
        return header + "".join(f"{vid},,t,{f.frame_number},{f.quality},{f.pdq.hex()},{f.timestamp:.3f}\n"
                                for f in part)

    path = tmp_path / "v.csv"
    path.write_text(rows("first", frames[:3]))
    metrics = Metrics()
    matcher = VpdqMatcher(VideoSection(vpdq_banks=(VpdqBankSection(name="v", path=str(path), category="c"),)),
                          metrics)
    upload = PreparedMedia(sha1="0" * 40, md5=None, pdq=None, jpeg=None, width=64, height=64, kind="video",
                           frames=frames[3:])
    assert asyncio.run(matcher.match(upload)) == []
    assert matcher.reload_if_changed() is False  # unchanged

    path.write_text(rows("second", frames[3:]))
    assert matcher.reload_if_changed() is True
    [hit] = asyncio.run(matcher.match(upload))
    assert hit.hash_id == "second"
    reloads = metrics.registry.get_sample_value
    assert reloads("mediamoderation_bank_reloads_total", {"bank": "v", "result": "reloaded"}) == 1

    path.write_text(header + "second,,t,0,100,not-hex,0.000\n")  # broken: the previous content stays
    assert matcher.reload_if_changed() is False
    assert matcher.reload_if_changed() is False  # reported once
    assert reloads("mediamoderation_bank_reloads_total", {"bank": "v", "result": "error"}) == 1
    assert [m.hash_id for m in asyncio.run(matcher.match(upload))] == ["second"]

    path.unlink()  # gone: still the previous content
    assert matcher.reload_if_changed() is False
    assert [m.hash_id for m in asyncio.run(matcher.match(upload))] == ["second"]
    assert reloads("mediamoderation_vpdq_bank_videos", {"bank": "v"}) == 1


def test_vpdq_bank_watch_stops(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_text("id,category,source,frame_number,quality,pdq,timestamp\n")
    matcher = VpdqMatcher(VideoSection(vpdq_banks=(VpdqBankSection(name="v", path=str(path), category="c"),)),
                          Metrics())

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(matcher.watch(0.01, stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(run())
