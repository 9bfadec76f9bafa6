"""The incremental SSE parser: the event-stream format, split anywhere, and the size limit as bytes arrive."""

from __future__ import annotations

import time

import pytest

from service.sources.sse import SseEvent, SseParser


def feed_all(parser: SseParser, data: bytes, piece: int | None = None) -> list[SseEvent]:
    if piece is None:
        return parser.feed(data)
    out: list[SseEvent] = []
    for start in range(0, len(data), piece):
        out += parser.feed(data[start:start + piece])
    return out


STREAM = (b"\xef\xbb\xbf:ok\r\n\r\n"
          b"event: message\r\nid: [1]\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"  # CRLF, two data lines
          b"id: [2]\rdata:x\r\r"  # CR only, no space after the colon
          b": keep-alive\n\n"  # a comment alone dispatches nothing
          b"event: error\ndata: oops\n\n"
          b"id: [3\x00]\ndata\n\n"  # an id with NUL is ignored; "data" alone is one empty data line
          b"retry: 1500\nretry: soon\nunknown: field\ndata: last\n\n")
EXPECTED = [
    SseEvent("message", b'{"a":\n1}', "[1]", size=52),
    SseEvent("message", b"x", "[2]", size=13),
    SseEvent("error", b"oops", "[2]", size=23),
    SseEvent("message", b"", "[2]", size=15),
    SseEvent("message", b"last", "[2]", size=50),
]


@pytest.mark.parametrize("piece", [None, 1, 2, 3, 5, 7, 64])
def test_parses_the_event_stream_format_split_anywhere(piece: int | None) -> None:
    parser = SseParser(1000)
    got = feed_all(parser, STREAM, piece)
    assert [(e.event, e.data, e.id) for e in got] == [(e.event, e.data, e.id) for e in EXPECTED]
    assert parser.retry_ms == 1500
    assert parser.buffered == 0


def test_empty_data_line_dispatches_an_empty_event_and_cr_lf_across_chunks_is_one_line_end() -> None:
    parser = SseParser(100)
    assert parser.feed(b"data: a\r") == []
    assert [e.data for e in parser.feed(b"\n\r")] == [b"a"]
    assert parser.feed(b"\ndata: b\n\n") == [SseEvent("message", b"b", None, size=7)]


def test_oversized_event_is_discarded_as_it_arrives_and_the_next_one_parses() -> None:
    limit = 10_000
    parser = SseParser(limit)
    giant = b"event: message\nid: [7]\ndata: " + b"x" * 3_000_000 + b"\ndata: more\nid: [8]\n\n"
    got: list[SseEvent] = []
    held = 0
    for start in range(0, len(giant), 1024):
        got += parser.feed(giant[start:start + 1024])
        held = max(held, parser.buffered)
    assert held <= limit  # never buffered whole
    assert len(got) == 1 and got[0].too_large and got[0].data == b""
    assert got[0].id == "[8]"  # short id lines are still read while discarding
    assert got[0].size > limit
    assert parser.feed(b"data: next\n\n") == [SseEvent("message", b"next", "[8]", size=10)]


def test_limit_counts_every_field_line_of_the_event() -> None:
    parser = SseParser(20)
    assert parser.feed(b"data: 0123456789\n") == []
    got = parser.feed(b"data: 0123456789\n\n")  # 16 + 16 bytes > 20
    assert [(e.too_large, e.data) for e in got] == [(True, b"")]
    assert parser.feed(b"data: ok\n\n")[0].data == b"ok"  # the limit is per event


def test_cost_is_linear_in_the_bytes_fed() -> None:
    """6 MB in 1 KB pieces: quadratic rescanning (the old reader) took minutes; this takes well under a
    second on a quiet machine (the bound leaves room for a loaded one)."""
    parser = SseParser(8_000_000)  # high limit: the whole event is kept and handed over
    giant = b"data: " + b"y" * 6_000_000 + b"\n\n"
    t0 = time.monotonic()
    got = feed_all(parser, giant, 1024)
    elapsed = time.monotonic() - t0
    assert len(got) == 1 and len(got[0].data) == 6_000_000
    assert elapsed < 5, elapsed
