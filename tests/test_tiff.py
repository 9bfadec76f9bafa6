"""Multi-page TIFF pages decoded by the service (service.media.tiff), within its page, pixel and time budgets."""

from __future__ import annotations

import dataclasses
import time

import pytest

from service.config import BankSection, BanksSection, ThumbnailSection
from service.config.media import DocumentSection
from service.errors import Unscannable
from service.matchers.banks import BankSet
from service.matchers.frames import match_frames
from service.media.frames import matched_picture, prepare_frames
from service.media.thumbnail import prepare
from service.media.tiff import is_tiff, tiff_pages
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo
from tests.infra import images, videos

KNOWN = 7601


def _bank(tmp_path: object) -> BankSet:
    from pathlib import Path

    known = prepare(images.jpeg_bytes(images.photo(KNOWN)), "0" * 40, ThumbnailSection())
    assert known.pdq is not None
    path = Path(str(tmp_path)) / "bank.csv"
    path.write_text(f"hash,category,source,id\n{known.pdq.hex},,test,known\n")
    return BankSet(BanksSection(list=(BankSection(name="cp", path=str(path), category="child-protection"),)),
                   Metrics())


def test_second_page_of_a_tiff_is_matched_and_previewed(tmp_path: object) -> None:
    data = videos.tiff([images.photo(7610), images.photo(KNOWN), images.photo(7611)])
    media = prepare_frames(prepare, data, "d" * 40, ThumbnailSection(), None, "original", None, (),
                           DocumentSection())
    assert media.kind == "document" and media.frames_sampled == 3
    assert [f.frame_number for f in media.frames] == [1, 2, 3]
    [hit] = match_frames(_bank(tmp_path), media)
    assert hit.details["pages"] == [2] and hit.details["frames_hashed"] == 3
    # The review preview is that page.
    fetched = FetchedMedia(info=FileInfo(title="File:T.tiff", url="u", description_url="d", sha1="d" * 40,
                                         size=len(data), width=640, height=480, mime="image/tiff",
                                         mediatype="BITMAP"), data=data, data_source="original")
    preview = prepare(matched_picture(fetched, hit.details), "0" * 40, ThumbnailSection())
    assert preview.pdq is not None and images.hamming(preview.pdq.hashes[0], media.frames[1].pdq) <= 8


def test_extra_pages_caps_the_pages_hashed() -> None:
    data = videos.tiff([images.photo(7620 + i, (64, 48)) for i in range(8)])
    frames = tiff_pages(data, DocumentSection(extra_pages=2), ThumbnailSection())
    assert frames is not None and [f.frame_number for f in frames] == [2, 3]


def test_single_page_tiff_and_other_formats_stay_images() -> None:
    one = videos.tiff([images.photo(7630)])
    assert is_tiff(one)
    assert tiff_pages(one, DocumentSection(), ThumbnailSection()) is None
    media = prepare_frames(prepare, one, "e" * 40, ThumbnailSection(), None, "original", None, (), DocumentSection())
    assert media.kind == "image" and media.frames == ()
    assert tiff_pages(images.jpeg_bytes(images.photo(7631)), DocumentSection(), ThumbnailSection()) is None
    no_tiff = dataclasses.replace(ThumbnailSection(), formats=("JPEG", "PNG"))
    two = videos.tiff([images.photo(7632), images.photo(7633)])
    assert tiff_pages(two, DocumentSection(), no_tiff) is None  # TIFF not allowed: never decoded here


def test_a_tiff_with_too_many_pages_is_unscannable_quickly() -> None:
    data = videos.tiff_many_pages(3000)
    t0 = time.process_time()
    with pytest.raises(Unscannable) as exc:
        prepare_frames(prepare, data, "f" * 40, ThumbnailSection(), None, "original", None, (),
                       DocumentSection(tiff_max_pages=1000))
    assert exc.value.reason == "too-many-pages"
    assert time.process_time() - t0 < 10
    # Within the cap it is a document like any other.
    ok = tiff_pages(videos.tiff_many_pages(50), DocumentSection(tiff_max_pages=1000), ThumbnailSection())
    assert ok is not None and len(ok) == 4


def test_a_decompression_bomb_page_makes_the_tiff_unscannable_without_decoding_it() -> None:
    data = videos.tiff_bomb_page(images.photo(7640))
    assert len(data) < 2_000_000
    t0 = time.process_time()
    with pytest.raises(Unscannable) as exc:
        prepare_frames(prepare, data, "a" * 40, ThumbnailSection(), None, "original", None, (), DocumentSection())
    assert exc.value.reason == "decompression-bomb"
    assert time.process_time() - t0 < 5
    small = dataclasses.replace(ThumbnailSection(), max_pixels=4_000_000_000, max_decoded_bytes=10_000_000)
    with pytest.raises(Unscannable) as exc:
        tiff_pages(data, DocumentSection(), small)
    assert exc.value.reason == "too-large-decoded"


def test_the_cpu_budget_ends_the_decode() -> None:
    data = videos.tiff([images.photo(7650 + i) for i in range(3)])
    with pytest.raises(Unscannable) as exc:
        tiff_pages(data, DocumentSection(tiff_decode_budget=1e-9), ThumbnailSection())
    assert exc.value.reason == "decode-timeout"
