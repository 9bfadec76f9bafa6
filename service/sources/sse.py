"""An incremental Server-Sent Events parser whose cost is linear in the bytes fed to it.

Follows the HTML standard's event-stream interpretation: lines end in CRLF, LF or CR (a CR at the end
of one chunk and an LF at the start of the next are one line end); ``data:`` lines are joined with
LF; ``event:``, ``id:`` (ignored when it contains NUL; kept across events) and ``retry:`` (digits
only); lines starting with ``:`` are comments; a blank line dispatches the event, which is dropped
when it has no data.  A leading UTF-8 byte-order mark is skipped.

Each byte is looked at a bounded number of times: the parser only searches the new chunk for line
ends and appends to the current line, never rescanning what it holds.  An event is limited to
``max_event_bytes`` (the bytes of its field lines, counted as they arrive): once it goes over, what
it holds is dropped and the rest of the event is discarded as it arrives (only short ``id:`` and
``event:`` lines are still read) until the blank line that ends it, which yields an
:class:`SseEvent` with ``too_large`` set and no data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"
# While an oversized event is being discarded, lines up to this long are still read (``id:`` and
# ``event:`` lines are short); longer ones are dropped as they arrive.
_DISCARD_LINE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # the event type, "message" unless the stream said otherwise
    data: bytes  # the data lines joined with LF (UTF-8, undecoded); empty when too_large
    id: str | None  # the last event ID in force when this event was dispatched
    too_large: bool = False
    size: int = 0  # bytes of the event's field lines (at least max_event_bytes + 1 when too_large)


class SseParser:
    """Feed bytes as they arrive; get back the events they complete."""

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._line = bytearray()  # the current, unfinished line
        self._line_len = 0  # its length in bytes, also counted once it is dropped
        self._dropped = False  # the current line is being skipped (the event went over the limit)
        self._after_cr = False  # the last byte fed was a CR: an LF right after it ends nothing
        self._started = False  # past the optional byte-order mark
        self._data = bytearray()
        self._has_data = False
        self._event_type = ""
        self._size = 0  # bytes of this event's finished field lines
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held for the current line and event (at most about ``max_event_bytes``)."""
        return len(self._line) + len(self._data)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        out: list[SseEvent] = []
        pos = 0
        end = len(chunk)
        if not self._started:
            if len(self._line) + end < len(_BOM) and _BOM.startswith(bytes(self._line) + chunk):
                self._line += chunk  # could still be the byte-order mark: wait for more
                self._line_len = len(self._line)
                return out
            self._started = True
            head = bytes(self._line) + chunk
            if head.startswith(_BOM):
                chunk, end = head[len(_BOM):], len(head) - len(_BOM)
            else:
                chunk, end = head, len(head)
            self._line.clear()
            self._line_len = 0
        if self._after_cr and end:
            self._after_cr = False
            if chunk[0:1] == b"\n":
                pos = 1
        while pos < end:
            found = _LINE_END.search(chunk, pos)
            stop = found.start() if found is not None else end
            self._append(chunk, pos, stop)
            if found is None:
                break
            event = self._end_line()
            if event is not None:
                out.append(event)
            pos = stop + 1
            if chunk[stop] == 0x0D:  # CR: swallow an LF that follows, now or in the next chunk
                if pos < end:
                    if chunk[pos] == 0x0A:
                        pos += 1
                else:
                    self._after_cr = True
        return out

    # ------------------------------------------------------------------ internals

    def _append(self, chunk: bytes, start: int, stop: int) -> None:
        """Add ``chunk[start:stop]`` (no line ends in it) to the current line, within the limits."""
        n = stop - start
        if not n:
            return
        self._line_len += n
        if self._dropped:
            return
        if self._discarding:
            if self._line_len > _DISCARD_LINE_LIMIT:
                self._drop_line()
                return
        elif self._size + self._line_len > self.max_event_bytes:
            self._discard()
            return
        self._line += chunk[start:stop]

    def _discard(self) -> None:
        """The event is over the limit: drop what it holds and ignore the rest of it."""
        self._discarding = True
        self._size = max(self._size + self._line_len, self.max_event_bytes + 1)
        self._drop_line()
        self._data = bytearray()
        self._has_data = False

    def _drop_line(self) -> None:
        self._dropped = True
        self._line = bytearray()

    def _end_line(self) -> SseEvent | None:
        length, dropped = self._line_len, self._dropped
        line = bytes(self._line)
        self._line.clear()
        self._line_len = 0
        self._dropped = False
        if length == 0:
            return self._dispatch()
        if not self._discarding:
            self._size += length
        if dropped or line.startswith(b":"):
            return None
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            if not self._discarding:
                if self._has_data:
                    self._data += b"\n"
                self._data += value
                self._has_data = True
        elif name == b"event":
            self._event_type = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value and value.isdigit():
                self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        event_type = self._event_type or "message"
        too_large, size = self._discarding, self._size
        data, has_data = self._data, self._has_data
        self._data = bytearray()
        self._has_data = False
        self._event_type = ""
        self._size = 0
        self._discarding = False
        if too_large:
            return SseEvent(event=event_type, data=b"", id=self.last_id, too_large=True, size=size)
        if not has_data:
            return None
        return SseEvent(event=event_type, data=bytes(data), id=self.last_id, size=size)
