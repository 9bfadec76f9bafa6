"""service.scan: the ``scan FILE...`` command's per-file results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from service.config import BankSection, BanksSection, Config, FetchSection
from service.media.thumbnail import prepare
from service.scan import scan_paths
from tests.infra import images


def test_scan_outcomes(tmp_path: Path) -> None:
    known = images.jpeg_bytes(images.photo(71))
    pdq_only = images.jpeg_bytes(images.photo(72))
    broken_known = images.truncated_jpeg(73)
    pdq_hex = prepare(pdq_only, "0" * 40, Config().thumbnail).pdq.hex  # type: ignore[union-attr]
    bank = tmp_path / "bank.csv"
    bank.write_text(
        "hash,category,source,id\n"
        f"{hashlib.sha1(known).hexdigest()},,test,known\n"
        f"{hashlib.md5(broken_known).hexdigest()},,test,broken\n"
        f"{pdq_hex},,test,pdq\n"
    )
    cfg = Config(banks=BanksSection(list=(BankSection(name="t", path=str(bank), category="test"),)))

    files = {
        "known.jpg": known,
        "rotated.jpg": images.variants(images.photo(72))["rotated"],
        "clean.png": images.png_bytes(images.photo(74, (200, 150))),
        "truncated.jpg": images.truncated_jpeg(),
        "broken-known.jpg": broken_known,
        "text.jpg": images.text_as_jpeg(),
        "bomb.png": images.decompression_bomb_png(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dir.jpg").mkdir()
    paths = [str(tmp_path / n) for n in [*files, "missing.jpg", "dir.jpg"]]

    results = {Path(r["file"]).name: r for r in scan_paths(paths, cfg)}
    json.dumps(list(results.values()))  # JSON-able
    outcome = {name: r["outcome"] for name, r in results.items()}
    assert outcome == {
        "known.jpg": "match",
        "rotated.jpg": "match",
        "clean.png": "clean",
        "truncated.jpg": "unscannable:undecodable",
        "broken-known.jpg": "match",  # an exact match counts even when the image cannot be decoded
        "text.jpg": "unscannable:format-not-allowed",
        "bomb.png": "unscannable:decompression-bomb",
        "missing.jpg": "error:not-found",
        "dir.jpg": "error:unreadable",
    }
    k = results["known.jpg"]
    assert (k["size"], k["sha1"], k["md5"]) == (
        len(known), hashlib.sha1(known).hexdigest(), hashlib.md5(known).hexdigest())
    assert (k["width"], k["height"], k["pdq_quality"] >= 50, len(k["pdq"])) == (640, 480, True, 64)
    assert [(m["matcher"], m["hash_id"]) for m in k["matches"]] == [("sha1", "known")]
    (m,) = results["rotated.jpg"]["matches"]
    # the upload is the banked image turned 90° counter-clockwise: turning it 270° more gives it back
    assert (m["matcher"], m["hash_id"], m["details"]["variant"]) == ("pdq", "pdq", "rotate270")
    assert m["distance"] <= 31
    assert results["clean.png"]["matches"] == [] and results["clean.png"]["width"] == 200
    assert [x["hash_id"] for x in results["broken-known.jpg"]["matches"]] == ["broken"]
    assert results["truncated.jpg"]["pdq"] is None and "truncated" in results["truncated.jpg"]["detail"]


def test_scan_large_file_is_hashed_but_not_decoded(tmp_path: Path) -> None:
    data = images.jpeg_bytes(images.photo(75, (320, 240)))
    (tmp_path / "big.jpg").write_bytes(data)
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{hashlib.sha1(data).hexdigest()},,t,big\n")
    cfg = Config(
        fetch=FetchSection(max_bytes=1000),
        banks=BanksSection(list=(BankSection(name="t", path=str(bank), category="test"),)),
    )
    (r,) = scan_paths([str(tmp_path / "big.jpg")], cfg)
    assert r["outcome"] == "match" and r["size"] == len(data) and r["pdq"] is None
    (tmp_path / "bank.csv").write_text("hash,category,source,id\n")
    (r,) = scan_paths([str(tmp_path / "big.jpg")], cfg)
    assert r["outcome"] == "unscannable:too-large"


def test_scan_handles_every_kind_of_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Video (image banks and vPDQ banks), animation, multi-page TIFF, audio (exact only) and PDF / DjVu / SVG
    (exact only: matched perceptually only through a wiki's rendering, so never called clean)."""
    import shutil

    from service.cli import main
    from service.config.media import DocumentSection, MediaSection, VideoSection, VpdqBankSection
    from service.media.video import prepare_video, vpdq_lines
    from tests.infra import videos

    known_img = images.photo(7701)
    known = prepare(images.jpeg_bytes(known_img), "0" * 40, Config().thumbnail)
    assert known.pdq is not None
    tone, pdf = videos.wav(0.5, 300.0), videos.pdf([images.photo(7702), known_img])
    files: dict[str, bytes] = {
        "known.webm": videos.video(videos.with_known(known_img, seed=7710)),
        "clean.webm": videos.video(videos.moving(7720, 3)),
        "anim.gif": videos.animated_gif([images.photo(7730 + i) for i in range(4)] + [known_img]),
        "doc.tiff": videos.tiff([images.photo(7740), known_img]),
        "pages.tiff": videos.tiff_many_pages(50),
        "tone.wav": tone,
        "other.wav": videos.wav(0.5, 500.0),
        "song.mid": b"MThd\0\0\0\6\0\0\0\1\0\x60MTrk\0\0\0\4\0\xff\x2f\0",
        "doc.pdf": pdf,
        "known.pdf": videos.pdf([known_img]),
        "logo.svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>\n',
    }
    if shutil.which("c44") and shutil.which("djvm"):
        (tmp_path / "djvu").mkdir()
        files["doc.djvu"] = videos.djvu([images.photo(7750), known_img], str(tmp_path / "djvu"))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    signature = prepare_video(str(tmp_path / "known.webm"), "0" * 40, None, VideoSection(), Config().thumbnail)
    vpdq = tmp_path / "vpdq.csv"
    vpdq.write_text("id,category,source,frame_number,quality,pdq,timestamp\n"
                    + "".join(f"clip,,t,{line}\n" for line in vpdq_lines(signature.frames)))
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n"
                    f"{known.pdq.hex},,test,known\n"
                    f"{hashlib.md5(tone).hexdigest()},,test,tone\n"
                    f"{hashlib.sha1(files['known.pdf']).hexdigest()},,test,known-pdf\n")
    cfg = Config(banks=BanksSection(list=(BankSection(name="t", path=str(bank), category="test"),)),
                 media=MediaSection(video=VideoSection(vpdq_banks=(VpdqBankSection(name="v", path=str(vpdq),
                                                                                   category="c"),)),
                                    documents=DocumentSection(tiff_max_pages=10)))

    results = {Path(r["file"]).name: r for r in scan_paths([str(tmp_path / n) for n in files], cfg)}
    json.dumps(list(results.values()))
    got = {name: (r["kind"], r["outcome"]) for name, r in results.items()}
    expected = {
        "known.webm": ("video", "match"), "clean.webm": ("video", "clean"),
        "anim.gif": ("image", "match"), "doc.tiff": ("document", "match"),
        "pages.tiff": ("image", "unscannable:too-many-pages"),
        "tone.wav": ("audio", "match"), "other.wav": ("audio", "clean:exact-only"),
        "song.mid": ("audio", "clean:exact-only"),
        "doc.pdf": ("document", "unscannable:needs-wiki-rendering"),
        "known.pdf": ("document", "match"),  # the exact hash still matches
        "logo.svg": ("image", "unscannable:needs-wiki-rendering"),
        "doc.djvu": ("document", "unscannable:needs-wiki-rendering"),
    }
    assert got == {k: v for k, v in expected.items() if k in files}
    video = results["known.webm"]
    assert video["frames_hashed"] == 11 and video["duration"] == pytest.approx(11.0, abs=0.2)
    by_matcher = {m["matcher"]: m for m in video["matches"]}
    assert by_matcher["pdq"]["details"]["offsets"] == [4.0, 5.0, 6.0]
    assert by_matcher["vpdq"]["hash_id"] == "clip"
    assert [m["details"]["offsets"] for m in results["anim.gif"]["matches"]] == [[4.0]]
    assert [m["details"]["pages"] for m in results["doc.tiff"]["matches"]] == [[2]]
    assert [m["matcher"] for m in results["tone.wav"]["matches"]] == ["md5"]
    assert "only through a wiki's rendering" in results["doc.pdf"]["detail"]

    # The command: a PDF without an exact match exits 3 (not scanned), as documented.
    config = tmp_path / "config.yaml"
    config.write_text("service: {user_agent: 'mm-test/0 (ts@example.org)'}\n"
                      "wikis: [{id: testwiki, api_url: 'http://127.0.0.1:1/api.php'}]\n"
                      "actions: {notify: {sender: mm@example.org, recipients: [ts@example.org]}}\n"
                      f"banks: {{list: [{{name: t, path: '{bank}', category: test}}]}}\n")
    assert main(["scan", "-c", str(config), str(tmp_path / "doc.pdf"), str(tmp_path / "other.wav")]) == 3
    assert main(["scan", "-c", str(config), str(tmp_path / "doc.tiff"), str(tmp_path / "doc.pdf")]) == 1
    assert main(["scan", "-c", str(config), str(tmp_path / "clean.webm")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["outcome"] for r in lines] == ["unscannable:needs-wiki-rendering", "clean:exact-only", "match",
                                             "unscannable:needs-wiki-rendering", "clean"]
