"""service.scan: the ``scan FILE...`` command's per-file results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
