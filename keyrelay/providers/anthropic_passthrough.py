"""What a passthrough reads from an Anthropic stream it relays untouched: usage, completeness, errors, output size.

A same-wire call sends the upstream's bytes to the client as they are, so the gateway needs only four of
the stream's events: ``message_start`` and ``message_delta`` (usage totals), ``message_stop`` (the stream
is complete) and ``error``. Anthropic names every event on an ``event:`` line
(https://docs.anthropic.com/en/docs/build-with-claude/streaming#event-types), so the reader tells events
apart by that line and parses only those four, and events without one (told apart by their ``type``, as
``providers.anthropic.AnthropicStreamDecoder`` does). ``ping``, block starts and stops and events of other
names are skipped. Content deltas are only measured, for the output estimate of a stream whose final usage
never arrives: their bytes are held unread and measured when asked (or every 64 KB), and dropped once the
final usage arrives, so a stream that reports its usage in one piece is not measured at all.

Each network read's complete events are first matched, in one C-level pass, against the shape every
Anthropic event has (``event: NAME`` LF ``data: ...`` LF LF); the four are then found by a search. Any
other shape (CR or CRLF framing, comments, ``id`` lines, multi-line data, no ``event`` line) is read event
by event through ``protocols.sse.parse_blocks`` (the WHATWG rules). A translation uses
``AnthropicStreamDecoder``, which turns every event into canonical events.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.sse import BOM, SSEDecoder, named_lines, parse_blocks
from keyrelay.providers.anthropic import anthropic_usage

__all__ = ["AnthropicPassthroughReader"]

_READ = frozenset({b"message_start", b"message_delta", b"message_stop", b"error", b"message"})  # message: unnamed
_DELTA = b"content_block_delta"
# In such blocks (after a blank line: the reader puts one before the first), the events read. Opening with a
# literal lets the regex engine skip ahead to each candidate.
_SPECIAL = re.compile(rb"\n\nevent: (?:message_(?:start|delta|stop)|error)\ndata: ([^\n]*)")
_MEASURE_BATCH = 64 * 1024  # held bytes measured once this many wait
# A delta's size beyond its content: the data of an empty delta of each kind that carries model output
# (a thinking block's signature_delta and citations_delta are not output, and are not counted).
_ENVELOPES = tuple(
    (b'"' + kind + b'"', len(b'{"type":"content_block_delta","index":0,"delta":{"type":"%s","%s":""}}' % (kind, field)))
    for kind, field in (
        (b"text_delta", b"text"),
        (b"input_json_delta", b"partial_json"),
        (b"thinking_delta", b"thinking"),
    )
)


def _content_bytes(data: bytes) -> int:
    """The size of a content delta's text, thinking or tool arguments: its data less the envelope of its kind."""
    for marker, envelope in _ENVELOPES:
        if marker in data:
            return max(0, len(data) - envelope)
    return 0


def _standard_content_bytes(blocks: bytes) -> int:
    """Content bytes of the deltas in blocks of the standard shape (an event line, one data line each)."""
    total = 0
    head = b"event: " + _DELTA + b"\ndata: "
    for block in blocks.split(b"\n\n"):
        if block.startswith(head):
            total += _content_bytes(block[len(head) :])
    return total


class AnthropicPassthroughReader:
    """Reads an Anthropic SSE stream beside the relay; one per request (``protocols.base.PassthroughReader``).

    Attributes:
        complete: Whether ``message_stop`` was seen.
    """

    __slots__ = (
        "_sse",
        "_started",
        "_raw_usage",
        "_final",
        "_held",
        "_held_bytes",
        "_measured",
        "complete",
        "relayable",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._started = False
        self._raw_usage: dict[str, Any] = {}
        self._final = False  # a message_delta reported usage: the output need not be measured any more
        self._held: list[bytes] = []  # standard blocks whose deltas are not measured yet
        self._held_bytes = 0
        self._measured = 0
        self.complete = False
        self.relayable = b""  # see PassthroughReader.relayable

    @property
    def usage(self) -> Usage | None:
        """The usage so far: ``message_start``'s merged with every ``message_delta``'s (both hold totals)."""
        return anthropic_usage(self._raw_usage) if self._raw_usage else None

    @property
    def output_bytes(self) -> int:
        """Bytes of text, thinking and tool-argument deltas less their JSON envelope: the output estimate.

        The UTF-8 bytes of that output as the upstream wrote it (escapes count as written, so a little over
        the decoded text). Counted only until a ``message_delta`` reports ``output_tokens``: that usage is
        final and is what is billed, so deltas not yet measured then are dropped unmeasured.
        """
        self._measure()
        return self._measured

    def feed(self, chunk: bytes) -> bool:
        """Read one network read's bytes; True when an error event (or an unreadable one) was completed."""
        self.relayable = blocks = self._sse.feed(chunk)
        return self._read(blocks) if blocks else False

    def end(self) -> bool:
        """The stream ended: read a last event that lacked its blank line; True when it was an error."""
        self.relayable = rest = self._sse.flush()
        return self._read(rest + b"\n\n") if rest.strip() else False

    def _read(self, blocks: bytes) -> bool:
        if not self._started:
            self._started = True
            if blocks.startswith(BOM):
                blocks = blocks[len(BOM) :]
        if not named_lines(blocks):
            return self._read_parsed(blocks)
        errored = False
        for match in _SPECIAL.finditer(b"\n\n" + blocks):
            if self._event(match.group(1)):
                errored = True
        if not self._final:
            self._held.append(blocks)
            self._held_bytes += len(blocks)
            if self._held_bytes >= _MEASURE_BATCH:
                self._measure()
        return errored

    def _measure(self) -> None:
        if self._held:
            self._measured += sum(_standard_content_bytes(blocks) for blocks in self._held)
            self._held.clear()
            self._held_bytes = 0

    def _read_parsed(self, blocks: bytes) -> bool:
        """Blocks of any other shape, event by event through the full SSE parser."""
        errored = False
        for event in parse_blocks(blocks)[0]:
            name = event.event.encode()
            if name == _DELTA:
                if not self._final:
                    self._measured += _content_bytes(event.data)
            elif name in _READ and self._event(event.data):
                errored = True
        return errored

    def _event(self, data: bytes) -> bool:
        """Parse one event's data; True when it is an error event or not JSON."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(event, dict):
            return False
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                return True
            self._merge_usage(message.get("usage"))
        elif kind == "message_delta":
            usage = event.get("usage")
            self._merge_usage(usage)
            if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                self._final = True  # the usage to bill is known: no estimate will be asked for
                self._held.clear()
                self._held_bytes = 0
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            return True
        elif kind == _DELTA.decode() and not self._final:  # an event without its event line
            self._measured += _content_bytes(data)
        return False

    def _merge_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            # Totals so far: a field present overrides, an absent one keeps its message_start value.
            self._raw_usage.update((k, v) for k, v in usage.items() if v is not None)
