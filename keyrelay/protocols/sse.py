"""Server-sent events: an incremental ``text/event-stream`` decoder and encoder, with no protocol knowledge.

The rules are the WHATWG HTML standard's, §9.2.6 "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- a line ends with CRLF, LF or a lone CR, and a CRLF pair may be split across two reads;
- a blank line dispatches the event gathered so far; a stream that ends without one drops it;
- a line starting with ``:`` is a comment; ``name:value`` sets a field, and one space after the colon
  is removed; a line without a colon is a field with an empty value;
- ``data`` lines are joined with LF (multi-line data); ``event`` names the event (``message`` when
  absent); ``id`` sets the last event id unless it holds NUL; ``retry`` is used only if all ASCII digits;
  unknown fields are ignored; an event whose data buffer is empty is not dispatched;
- a UTF-8 byte order mark at the very start of the stream is ignored.

A gateway relays upstream bytes as they are, so the decoder works in two steps: ``feed`` returns the
exact bytes of every *complete block* (everything up to and including the last blank line seen) and
keeps the rest, and ``parse_blocks`` turns complete blocks into events when a caller needs them.
Relaying never waits for more than the end of the current event, whatever the line endings.
"""

from __future__ import annotations

import re
from typing import NamedTuple

BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark, ignored at the start of a stream
_LINE_END = re.compile(rb"\r\n|\r|\n")
# LF-framed blocks of an "event: " line and one "data: " line each (Anthropic's shape), matched in C.
_NAMED_LF = re.compile(rb"(?:event: [^\n]*\ndata: [^\n]*\n\n)+")
_NAMED_LF_EACH = re.compile(rb"event: ([^\n]*)\ndata: ([^\n]*)\n\n")


class SSEEvent(NamedTuple):
    """One dispatched event (a named tuple: built in C, a few per network read).

    Attributes:
        event: The ``event`` field, or ``"message"`` when the block had none.
        data: The ``data`` lines joined with LF (UTF-8 bytes, no trailing LF).
        id: The last event id in force when the event was dispatched (``""`` when none).
        retry: The reconnection time in milliseconds set by this block, if any.
        raw: The exact bytes of the block that produced the event, comment lines and blank line included.
    """

    event: str
    data: bytes
    id: str = ""
    retry: int | None = None
    raw: bytes = b""


class SSEDecoder:
    """Cuts a byte stream into complete SSE blocks; one decoder per stream, never shared.

    ``feed`` may be called with any slicing of the stream, down to single bytes: the concatenation of
    what it returns, followed by ``flush()``, is always the input itself, and the blocks it returns parse
    to the same events whatever the slicing. A block is cut right after a blank line; when that blank
    line ends in a CR whose LF arrives in the next read, the LF starts the next block, where it reads as
    one more blank line, which dispatches nothing (the data buffer is empty at a block start).
    """

    __slots__ = ("_buffer", "_started", "_last_id")

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._last_id = ""

    def feed(self, data: bytes) -> bytes:
        """Add bytes read from the stream; return the bytes of every block completed by them (maybe ``b""``)."""
        held = len(self._buffer)
        buffer = self._buffer + data if held else data
        if b"\r" not in buffer:
            # Common case, LF-only framing: one C-level search for the last blank line. The held bytes
            # had none, so a new one starts at most one byte before the new data.
            end = buffer.rfind(b"\n\n", held - 1 if held else 0)
            if end < 0:
                self._buffer = buffer
                return b""
            self._buffer = buffer[end + 2 :]
            return buffer[: end + 2]
        if buffer.count(b"\r") == buffer.count(b"\n") == buffer.count(b"\r\n"):
            # CRLF-only framing (Gemini's): every terminator is CRLF, so a blank line ends each CRLF CRLF.
            end = buffer.rfind(b"\r\n\r\n", max(0, held - 3))
            if end < 0:
                self._buffer = buffer
                return b""
            self._buffer = buffer[end + 4 :]
            return buffer[: end + 4]
        # Any mix of CRLF, LF and CR. The buffer starts at a line start, so a line terminator found where a
        # line starts ends a blank line. (Rescans the held bytes: mixed and CR framing are rare.)
        line_start = 0
        cut = -1
        for match in _LINE_END.finditer(buffer):
            start, end = match.span()
            if start == line_start:
                cut = end
            line_start = end
        if cut < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[cut:]
        return buffer[:cut]

    def flush(self) -> bytes:
        """The bytes of an unterminated last block at the end of the stream (its event is not dispatched)."""
        rest, self._buffer = self._buffer, b""
        return rest

    def events(self, blocks: bytes) -> list[SSEEvent]:
        """Parse blocks previously returned by :meth:`feed` (in order) into events, keeping the last event id."""
        if not self._started and blocks:
            self._started = True
            if blocks.startswith(BOM):
                blocks = blocks[len(BOM) :]
        events, self._last_id = parse_blocks(blocks, self._last_id)
        return events


def _lines(blocks: bytes) -> list[tuple[bytes, int]]:
    """Each line of ``blocks`` (without its terminator) with the offset just after its terminator."""
    out: list[tuple[bytes, int]] = []
    pos = 0
    if b"\r" not in blocks:
        for line in blocks.split(b"\n")[:-1]:
            pos += len(line) + 1
            out.append((line, pos))
        return out
    for match in _LINE_END.finditer(blocks):
        start, end = match.span()
        out.append((blocks[pos:start], end))
        pos = end
    return out


def parse_blocks(blocks: bytes, last_id: str = "") -> tuple[list[SSEEvent], str]:
    """Events of complete blocks (bytes that end with a blank line), and the last event id after them.

    Args:
        blocks: Complete blocks, as returned by :meth:`SSEDecoder.feed`.
        last_id: The last event id in force before these blocks.

    Returns:
        The dispatched events in order (blocks without data dispatch nothing) and the new last event id.
    """
    fast = _common_shape(blocks, last_id)
    if fast is not None:
        return fast, last_id
    return parse_lines(blocks, last_id)


def parse_lines(blocks: bytes, last_id: str = "") -> tuple[list[SSEEvent], str]:
    """``parse_blocks`` line by line, for any shape (what the shapes read in C must equal)."""
    events: list[SSEEvent] = []
    data: list[bytes] = []
    event_type = ""
    retry: int | None = None
    block_start = 0
    for line, after in _lines(blocks):
        if not line:
            if data:
                events.append(
                    SSEEvent(event_type or "message", b"\n".join(data), last_id, retry, blocks[block_start:after])
                )
            data, event_type, retry = [], "", None
            block_start = after
            continue
        if line[:1] == b":":
            continue  # a comment
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event_type = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            retry = int(value)
    return events, last_id


def data_lines(blocks: bytes, eol: bytes) -> bool:
    """Whether ``blocks`` is blocks of one ``data: `` line each, every line ended by ``eol`` (LF or CRLF).

    Counted in C: n blank lines and 2n line ends (so no line end outside the ``eol eol`` pairs, and no bare
    CR or LF beside CRLF), and ``data: `` at the start and after every blank line but the last.
    """
    blank = eol + eol
    n = blocks.count(blank)
    if not n or not blocks.endswith(blank) or not blocks.startswith(b"data: "):
        return False
    # The n blank-line pairs hold 2n LFs (and, with CRLF, 2n CRs): any other line end would be one more.
    if blocks.count(b"\n") != 2 * n or blocks.count(b"\r") != (2 * n if eol == b"\r\n" else 0):
        return False
    return blocks.count(blank + b"data: ") == n - 1


def named_lines(blocks: bytes) -> bool:
    """Whether ``blocks`` is LF-framed blocks of an ``event: `` line and one ``data: `` line each (Anthropic's)."""
    return b"\r" not in blocks and _NAMED_LF.fullmatch(blocks) is not None


def _common_shape(blocks: bytes, last_id: str) -> list[SSEEvent] | None:
    """The events of blocks in one of the shapes providers send, read in C; None for any other shape.

    Data-only blocks framed with LF (OpenAI) or CRLF (Gemini), and LF-framed ``event:`` + ``data:`` blocks
    (Anthropic). The same events as the line-by-line rules give: one space after each colon removed, an
    empty ``event`` value meaning ``message``, no ``id`` or ``retry`` field.
    """
    for eol in (b"\r\n", b"\n") if b"\r" in blocks else (b"\n",):
        if data_lines(blocks, eol):
            blank = eol + eol
            return [SSEEvent("message", block[6:], last_id, None, block + blank) for block in blocks.split(blank)[:-1]]
    if not named_lines(blocks):
        return None
    return [
        SSEEvent(
            name.decode("utf-8", "replace") or "message",
            data,
            last_id,
            None,
            b"event: " + name + b"\ndata: " + data + b"\n\n",
        )
        for name, data in _NAMED_LF_EACH.findall(blocks)
    ]


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One event as LF-framed SSE bytes; data holding line breaks becomes several ``data`` lines.

    Raises:
        ValueError: ``event`` holds a line break (it would end the field early).
    """
    head = b""
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot hold a line break")
        head = b"event: " + event.encode() + b"\n"
    lines = _LINE_END.split(data)
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
