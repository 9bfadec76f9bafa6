"""service.media.thumbnail.prepare and the generated test images it is measured with."""

from __future__ import annotations

import dataclasses
import io
import itertools
import pickle

import numpy as np
import pdqhash
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from service.config import ThumbnailSection
from service.errors import Unscannable
from service.media import thumbnail
from service.media.thumbnail import pdq_bytes, pdq_signal, prepare
from service.models import PreparedMedia
from tests.infra import images

CFG = ThumbnailSection()
JPEG_CFG = dataclasses.replace(CFG, make_jpeg=True)
SHA1 = "0" * 40


def run(data: bytes, cfg: ThumbnailSection = CFG) -> PreparedMedia:
    return prepare(data, SHA1, cfg)


def reason(data: bytes, cfg: ThumbnailSection = CFG) -> str:
    with pytest.raises(Unscannable) as info:
        prepare(data, SHA1, cfg)
    return info.value.reason


def pdq_of(img: Image.Image) -> bytes:
    return pdq_signal(img.convert("RGB")).hashes[0]


def jpeg_size(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img.size


@pytest.fixture(scope="module")
def photos() -> dict[int, Image.Image]:
    return {seed: images.photo(seed) for seed in range(1, 9)}


# --------------------------------------------------------------------------- the generated images


def test_photos_are_high_quality_and_far_apart(photos: dict[int, Image.Image]) -> None:
    signals = {seed: run(images.jpeg_bytes(img)).pdq for seed, img in photos.items()}
    assert all(s is not None and s.quality >= 80 for s in signals.values())
    for a, b in itertools.combinations(signals, 2):
        sa, sb = signals[a], signals[b]
        assert sa is not None and sb is not None
        assert images.hamming(sa.hashes[0], sb.hashes[0]) > 90, (a, b)
        # not even a rotation or flip of one is near the other
        assert images.dihedral_distance(sa.hashes, sb.hashes[0]) > 31, (a, b)


def test_photo_is_deterministic() -> None:
    assert images.png_bytes(images.photo(5, (64, 48))) == images.png_bytes(images.photo(5, (64, 48)))
    assert images.png_bytes(images.photo(5, (64, 48))) != images.png_bytes(images.photo(6, (64, 48)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_variants_match_through_the_dihedral_compare(photos: dict[int, Image.Image], seed: int) -> None:
    reference = pdq_of(photos[seed])
    variants = images.variants(photos[seed])
    assert set(variants) == {"resized", "recompressed", "mirrored", "rotated"}
    for name, data in variants.items():
        signal = run(data).pdq
        assert signal is not None and len(signal.hashes) == 8
        assert images.dihedral_distance(signal.hashes, reference) <= 31, name
    # Mirror and rotation are only caught through the variants, not by the plain hash.
    for name in ("mirrored", "rotated"):
        signal = run(variants[name]).pdq
        assert signal is not None
        assert images.hamming(signal.hashes[0], reference) > 31, name


# --------------------------------------------------------------------------- PDQ bit order


def test_hex_is_threatexchange_order() -> None:
    img = images.photo(9001, (480, 360))  # under pdq_max_side: hashed as is
    # prepare() hashes Pillow's (integer ITU-R 601) luminance: give pdqhash the same grey image
    grey = np.asarray(img.convert("L").convert("RGB"))
    vector, quality = pdqhash.compute(grey)
    # python-threatexchange's pdq_hasher: the vector as one big binary number, zero-padded hex
    bits = "".join(str(int(x)) for x in vector)
    expected = ("%0*X" % ((len(bits) + 3) // 4, int(bits, 2))).lower()  # noqa: UP031 - their code

    signal = run(images.png_bytes(img)).pdq
    assert signal is not None
    assert signal.hex == expected
    assert signal.quality == quality
    assert signal.hashes[0] == pdq_bytes(vector)
    assert bytes.fromhex(signal.hex) == signal.hashes[0]
    assert bytes.fromhex(expected.upper()).hex() == expected
    # first bit of the vector is the most significant bit of the first hex digit
    assert int(signal.hex[0], 16) >> 3 == vector[0]
    assert int(signal.hex[-1], 16) & 1 == vector[-1]
    # and within rounding of pdqhash on the colour image
    assert images.hamming(signal.hashes[0], pdq_of(img)) <= 4


# Which of pdqhash's eight hashes describes which Pillow transform of the image (PDQ's FlipX is a flip
# about the x axis, i.e. top to bottom).
TRANSFORMS = {
    "rotate90": Image.Transpose.ROTATE_90,
    "rotate180": Image.Transpose.ROTATE_180,
    "rotate270": Image.Transpose.ROTATE_270,
    "flip-x": Image.Transpose.FLIP_TOP_BOTTOM,
    "flip-y": Image.Transpose.FLIP_LEFT_RIGHT,
    "flip-plus1": Image.Transpose.TRANSPOSE,
    "flip-minus1": Image.Transpose.TRANSVERSE,
}


def test_dihedral_hashes_are_the_transformed_images_hashes() -> None:
    img = images.photo(3, (320, 240))
    signal = pdq_signal(img)
    assert thumbnail.DIHEDRAL_VARIANTS[0] == "original"
    for name, transform in TRANSFORMS.items():
        actual = pdq_of(img.transpose(transform))
        distances = [images.hamming(h, actual) for h in signal.hashes]
        index = thumbnail.DIHEDRAL_VARIANTS.index(name)
        # not bit-exact (the Jarosz filter is not symmetric), but close, and the closest by far
        assert distances[index] <= 31, (name, distances)
        assert min(d for i, d in enumerate(distances) if i != index) > 90, (name, distances)


# --------------------------------------------------------------------------- reasons


def test_decompression_bomb_error() -> None:
    data = images.decompression_bomb_png()
    assert len(data) < 100_000
    assert reason(data) == "decompression-bomb"


def test_decompression_bomb_warning_counts_as_bomb(photos: dict[int, Image.Image]) -> None:
    data = images.png_bytes(photos[1])  # 640 x 480 = 307,200 pixels
    cfg = dataclasses.replace(CFG, max_pixels=300_000)  # over the limit, under twice the limit
    assert reason(data, cfg) == "decompression-bomb"
    assert Image.MAX_IMAGE_PIXELS == 300_000
    assert run(data, dataclasses.replace(CFG, max_pixels=400_000)).width == 640


def test_truncated_jpeg_is_undecodable() -> None:
    with pytest.raises(Unscannable) as info:
        run(images.truncated_jpeg())
    assert info.value.reason == "undecodable"
    assert "truncated" in info.value.detail


def test_garbage_after_a_valid_header_is_undecodable() -> None:
    data = images.jpeg_bytes(images.photo(4, (64, 48)))
    assert reason(data[:200] + b"\xff" * 500) == "undecodable"


def test_text_named_jpeg_is_not_an_allowed_format() -> None:
    assert reason(images.text_as_jpeg()) == "format-not-allowed"
    assert reason(b"") == "format-not-allowed"


def test_format_allowlist(photos: dict[int, Image.Image]) -> None:
    small = photos[2].resize((64, 48))
    png = images.png_bytes(small)
    assert reason(png, dataclasses.replace(CFG, formats=("JPEG",))) == "format-not-allowed"
    out = io.BytesIO()
    small.save(out, "BMP")
    assert run(out.getvalue()).width == 64
    assert reason(out.getvalue(), dataclasses.replace(CFG, formats=("JPEG", "PNG"))) == "format-not-allowed"


def test_unscannable_survives_the_process_boundary() -> None:
    exc = pickle.loads(pickle.dumps(Unscannable("decompression-bomb", "too big")))
    assert (exc.reason, exc.detail) == ("decompression-bomb", "too big")
    assert pickle.loads(pickle.dumps(prepare)) is prepare
    media = run(images.tiny_image(), JPEG_CFG)
    assert pickle.loads(pickle.dumps(media)) == media


# --------------------------------------------------------------------------- decoding details


def test_animated_gif_uses_the_first_frame() -> None:
    data = images.animated_gif()
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    media = run(data)
    assert media.pdq is not None and (media.width, media.height) == (320, 240)
    first = pdq_of(images.photo(21, (320, 240)))
    second = pdq_of(images.photo(22, (320, 240)))
    assert images.hamming(media.pdq.hashes[0], first) <= 31
    assert images.hamming(media.pdq.hashes[0], second) > 31


def test_alpha_is_flattened_onto_white() -> None:
    media = run(images.rgba_png())
    assert media.pdq is not None
    assert images.hamming(media.pdq.hashes[0], pdq_of(images.rgba_expected())) <= 4
    dropped_alpha = Image.open(io.BytesIO(images.rgba_png())).convert("RGB")  # black where transparent
    assert images.hamming(media.pdq.hashes[0], pdq_of(dropped_alpha)) > 31


@pytest.mark.parametrize("mode", ["P", "LA"])
def test_other_transparent_modes_are_flattened_onto_white(mode: str) -> None:
    rgba = Image.open(io.BytesIO(images.rgba_png()))
    expected = images.rgba_expected()
    if mode == "P":
        quantized = rgba.convert("RGB").quantize(255)
        arr = np.array(quantized)
        arr[np.asarray(rgba)[..., 3] == 0] = 255  # palette index 255: black, transparent
        palette = (quantized.getpalette() or [])[: 255 * 3]
        img = Image.frombytes("P", rgba.size, arr.tobytes())
        img.putpalette(palette + [0] * (768 - len(palette)))
        img.info["transparency"] = 255
    else:
        img = rgba.convert("LA")
        expected = expected.convert("L")
    data = images.png_bytes(img)
    assert Image.open(io.BytesIO(data)).mode == mode
    media = run(data)
    assert media.pdq is not None
    assert images.hamming(media.pdq.hashes[0], pdq_of(expected)) <= 16
    dropped_alpha = Image.open(io.BytesIO(data)).convert("RGB")
    assert images.hamming(media.pdq.hashes[0], pdq_of(dropped_alpha)) > 31


def test_exif_orientation_is_applied() -> None:
    data = images.exif_rotated_jpeg()
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (360, 480)
    media = run(data, JPEG_CFG)
    assert (media.width, media.height) == (480, 360)
    assert jpeg_size(media.jpeg) == (480, 360)
    assert media.pdq is not None
    upright = pdq_of(images.photo(41, (480, 360)))
    assert images.hamming(media.pdq.hashes[0], upright) <= 10
    assert images.hamming(pdq_of(stored), upright) > 31  # as stored, it is sideways


def test_tiny_image_gets_an_upscaled_jpeg() -> None:
    media = run(images.tiny_image(), JPEG_CFG)
    assert (media.width, media.height) == (50, 40)
    assert media.pdq is not None
    w, h = jpeg_size(media.jpeg)
    assert min(w, h) >= 160
    assert abs(w / h - 50 / 40) < 0.02


def test_panorama() -> None:
    media = run(images.panorama(), JPEG_CFG)
    assert (media.width, media.height) == (4000, 300)
    assert media.pdq is not None and media.pdq.quality >= 50
    w, h = jpeg_size(media.jpeg)
    assert h >= 160 and abs(w / h - 4000 / 300) < 0.05
    assert media.jpeg is not None and len(media.jpeg) < CFG.jpeg_max_bytes


def test_jpeg_is_shrunk_under_the_byte_limit(photos: dict[int, Image.Image]) -> None:
    data = images.png_bytes(photos[3])
    cfg = dataclasses.replace(JPEG_CFG, jpeg_max_bytes=12_000)
    media = run(data, cfg)
    assert media.jpeg is not None and len(media.jpeg) < 12_000
    assert min(jpeg_size(media.jpeg)) >= 160
    assert run(data).jpeg is None  # make_jpeg off


def test_normal_jpeg_keeps_size_and_source() -> None:
    data = images.jpeg_bytes(images.photo(7, (330, 248)))
    media = prepare(data, "ab" * 20, JPEG_CFG, md5="cd" * 16, source="original")
    assert (media.sha1, media.md5, media.source) == ("ab" * 20, "cd" * 16, "original")
    assert (media.width, media.height) == (330, 248)
    assert jpeg_size(media.jpeg) == (330, 248)


def test_large_jpeg_is_decoded_in_draft_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    img = images.photo(8, (2048, 1536))
    data = images.jpeg_bytes(img)
    calls: list[tuple[int, int]] = []
    original_draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None):  # type: ignore[no-untyped-def]
        result = original_draft(self, mode, size)
        calls.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    media = run(data)
    assert calls == [(512, 384)]  # libjpeg decoded at 1/4 scale, not 2048 x 1536
    assert (media.width, media.height) == (2048, 1536)
    assert media.pdq is not None
    full = pdq_of(img.resize((512, 384), Image.Resampling.LANCZOS))
    assert images.hamming(media.pdq.hashes[0], full) <= 12


def test_mpo_counts_as_jpeg() -> None:
    """Phones write multi-picture JPEGs, which Pillow reports as MPO: they pass a JPEG allowlist."""
    first, second = images.photo(12, (320, 240)), images.photo(13, (320, 240))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[second], quality=90)
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    assert "MPO" not in CFG.formats
    media = run(out.getvalue())
    assert media.pdq is not None
    assert images.hamming(media.pdq.hashes[0], pdq_of(first)) <= 10
    assert reason(out.getvalue(), dataclasses.replace(CFG, formats=("PNG",))) == "format-not-allowed"


# --------------------------------------------------------------------------- decoded-size budget


@pytest.mark.parametrize(("mode", "per_pixel"), [
    ("1", 1), ("L", 1), ("P", 1), ("LA", 2), ("PA", 2), ("I;16", 2), ("I;16B", 2), ("RGB", 3), ("YCbCr", 3),
    ("RGBA", 4), ("CMYK", 4), ("I", 4), ("F", 4),
])
def test_decoded_bytes_counts_every_band_at_its_depth(mode: str, per_pixel: int) -> None:
    assert thumbnail.decoded_bytes(mode, 300, 200) == 300 * 200 * per_pixel


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "RGBA", "LA", "P", "L", "RGB", "CMYK"])
def test_over_budget_is_refused_before_any_pixel_is_decoded(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    img = images.photo(12, (120, 80)).convert("L" if mode in ("I;16", "I", "F") else "RGB").convert(mode)
    fmt = "TIFF" if mode in ("F", "CMYK", "I") else "PNG"
    out = io.BytesIO()
    img.save(out, fmt)
    data = out.getvalue()
    opened = Image.open(io.BytesIO(data))
    size = thumbnail.decoded_bytes(opened.mode, *opened.size)
    assert size >= 120 * 80
    loads: list[str] = []
    original_load = thumbnail.ImageFile.ImageFile.load

    def spy(self: thumbnail.ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        loads.append(self.mode)
        return original_load(self)

    monkeypatch.setattr(thumbnail.ImageFile.ImageFile, "load", spy)
    assert reason(data, dataclasses.replace(CFG, max_decoded_bytes=size - 1)) == "too-large-decoded"
    assert loads == []  # refused from the header alone
    assert run(data, dataclasses.replace(CFG, max_decoded_bytes=size)).pdq is not None  # at the budget: scanned


def test_16bit_png_budget_counts_two_bytes_a_pixel() -> None:
    img = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
    data = images.png_bytes(img)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert reason(data, dataclasses.replace(CFG, max_decoded_bytes=64 * 48 * 2 - 1)) == "too-large-decoded"
    media = run(data, dataclasses.replace(CFG, max_decoded_bytes=64 * 48 * 2))
    assert media.pdq is not None and media.pdq.quality > 0


def test_jpeg_budget_applies_to_the_draft_size() -> None:
    data = images.jpeg_bytes(images.photo(13, (2048, 1536)))
    full = 2048 * 1536 * 3
    drafted = 512 * 384  # for PDQ alone: its luminance only, decoded at 1/4 scale
    assert run(data, dataclasses.replace(CFG, max_decoded_bytes=drafted)).pdq is not None
    assert reason(data, dataclasses.replace(CFG, max_decoded_bytes=drafted - 1)) == "too-large-decoded"
    assert drafted < full
    # with a JPEG to make for PhotoDNA: in colour, at the same 1/4 scale
    coloured = 512 * 384 * 3
    assert run(data, dataclasses.replace(JPEG_CFG, max_decoded_bytes=coloured)).jpeg is not None
    assert reason(data, dataclasses.replace(JPEG_CFG, max_decoded_bytes=coloured - 1)) == "too-large-decoded"


def test_wide_greyscale_is_stretched_in_bands_like_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    arr = (np.random.default_rng(5).integers(1000, 50000, (300, 200))).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    monkeypatch.setattr(thumbnail, "_ROWS_BYTES", 200 * 8 * 7)  # bands of 7 rows
    lo, hi = float(arr.min()), float(arr.max())
    expected = ((arr.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    assert np.array_equal(np.asarray(thumbnail._wide_to_l(img)), expected)


def test_large_transparent_image_is_flattened_like_compositing() -> None:
    rgba = Image.open(io.BytesIO(images.rgba_png()))
    expected = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    got = thumbnail._to_rgb(rgba)
    diff = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert got.mode == "RGB" and int(diff.max()) <= 1


def test_float_image_with_nan_converts_without_warnings() -> None:
    arr = np.linspace(0, 1000, 200 * 100, dtype=np.float32).reshape(100, 200)
    arr[5, 5] = np.nan
    out = np.asarray(thumbnail._wide_to_l(Image.fromarray(arr)))  # filterwarnings=error: no cast warning
    assert out[5, 5] == 0 and out.max() == 255
