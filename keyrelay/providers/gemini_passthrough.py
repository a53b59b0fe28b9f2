"""What a passthrough reads from a Gemini stream it relays untouched: usage, completeness, errors, output size.

A same-wire ``streamGenerateContent?alt=sse`` call sends the upstream's bytes to the client as they are.
Gemini sends whole ``GenerateContentResponse`` chunks, each with ``usageMetadata`` holding the totals so
far (https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse), so the reader parses
only the latest chunk carrying usage, when the usage is asked for, and any chunk naming a ``finishReason``
or a ``blockReason``, found by a search (a JSON key cannot occur inside a string, where its quotes would be
escaped). Text, thoughts and function calls are not read: their size, for the output estimate of
a stream that never finishes, is measured only when asked (or every 64 KB) by the full decoder
(``providers.gemini.GeminiStreamDecoder``), and chunks are dropped unmeasured once the stream finished.

A read of any other shape than ``data: ...`` events framed with CRLF (as Gemini frames them) or LF (CR
framing, mixed framing, comments, other fields, multi-line data) or holding an ``"error"`` key hands the rest
of the stream to the full decoder, which then reads every event.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from keyrelay.protocols.canonical import StreamError, Usage
from keyrelay.protocols.gemini_parts import field, gemini_usage
from keyrelay.protocols.sse import BOM, SSEDecoder, data_lines
from keyrelay.providers.gemini import GeminiStreamDecoder

__all__ = ["GeminiPassthroughReader"]

_USAGE = re.compile(rb'"(?:usageMetadata|usage_metadata)"')
# The keys naming an end ("finishReason", "blockReason" and their snake_case forms), found by their tails.
_END_SUFFIXES = (b'Reason"', b'_reason"')
_ERROR = b'"error"'
_MEASURE_BATCH = 64 * 1024  # held bytes measured once this many wait
_USAGE_BATCH = 64  # reads with usage kept unparsed before the latest is read


def _ends(chunk: dict[str, Any]) -> bool:
    """The chunk ends the answer: its candidate names a ``finishReason``, or the prompt was blocked."""
    candidates = field(chunk, "candidates")
    candidate = candidates[0] if isinstance(candidates, list) and candidates else None
    if isinstance(candidate, dict):
        finish = field(candidate, "finishReason")
        return isinstance(finish, str) and bool(finish)
    feedback = field(chunk, "promptFeedback")
    return isinstance(feedback, dict) and bool(field(feedback, "blockReason"))


class GeminiPassthroughReader:
    """Reads a Gemini SSE stream beside the relay; one per request (``protocols.base.PassthroughReader``).

    Usage is read when asked for: the reads holding ``usageMetadata`` are kept, unparsed, and the latest
    chunk that reports usage is parsed then (or every 64 such reads), since each chunk holds the totals.
    """

    __slots__ = (
        "_sse",
        "_started",
        "_usage",
        "_usage_reads",
        "_complete",
        "_held",
        "_held_bytes",
        "_decoder",
        "_full",
        "relayable",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._started = False
        self._usage: Usage | None = None
        self._usage_reads: list[tuple[bytes, bytes]] = []  # (blocks, separator) holding usage, not parsed yet
        self._complete = False
        self._held: list[bytes] = []  # complete blocks not measured yet
        self._held_bytes = 0
        self._decoder: GeminiStreamDecoder | None = None  # measures held blocks; reads everything in full mode
        self._full = False
        self.relayable = b""  # see PassthroughReader.relayable

    @property
    def usage(self) -> Usage | None:
        """The usage Gemini reported so far (each chunk holds the totals)."""
        if self._full and self._decoder is not None and self._decoder.usage is not None:
            return self._decoder.usage
        self._read_usage()
        return self._usage

    @property
    def complete(self) -> bool:
        """A chunk with a ``finishReason`` (or a blocked prompt) was seen."""
        return self._complete or (self._full and self._decoder is not None and self._decoder.complete)

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of text, thoughts, tool names and arguments, counted until the stream finished.

        Chunks that arrive in the same read as the end, or after it, are not measured: the usage is then
        final, and no estimate is needed.
        """
        self._measure()
        return self._decoder.output_bytes if self._decoder is not None else 0

    def feed(self, chunk: bytes) -> bool:
        """Read one network read's bytes; True when an error chunk (or one that is not JSON) was completed."""
        self.relayable = blocks = self._sse.feed(chunk)
        if self._full:
            return self._errors(self._measurer().feed(blocks)) if blocks else False
        return self._read(blocks) if blocks else False

    def end(self) -> bool:
        """The stream ended: read a last chunk that lacked its blank line; True when it was an error."""
        self.relayable = rest = self._sse.flush()
        if not self._full:
            if not rest.strip():
                return False
            self._go_full(b"")
        if rest:
            self._measurer().feed(rest)  # held by its SSE decoder until end(), as if it had come directly
        return self._errors(self._measurer().end())

    def _read(self, blocks: bytes) -> bool:
        if not self._started:
            self._started = True
            if blocks.startswith(BOM):
                return self._go_full(blocks)
        eol = b"\r\n" if b"\r" in blocks else b"\n"
        separator = eol + eol
        if _ERROR in blocks or not data_lines(blocks, eol):
            return self._go_full(blocks)
        if not self._read_end(blocks, separator):
            return self._go_full(blocks)
        if _USAGE.search(blocks) is not None:
            self._usage_reads.append((blocks, separator))
            if len(self._usage_reads) >= _USAGE_BATCH:
                self._read_usage()
        if self._complete:
            self._held.clear()
            self._held_bytes = 0
        else:
            self._held.append(blocks)
            self._held_bytes += len(blocks)
            if self._held_bytes >= _MEASURE_BATCH:
                self._measure()
        return False

    def _read_end(self, blocks: bytes, separator: bytes) -> bool:
        """Read whether the chunks naming a finish or block reason end the answer; False if one is not JSON."""
        starts: set[int] = set()
        for suffix in _END_SUFFIXES:  # one search each: "...Reason" or "..._reason" keys, then their heads
            at = blocks.find(suffix)
            while at >= 0:
                if blocks.endswith(b'"finish', 0, at) or blocks.endswith(b'"block', 0, at):
                    start = blocks.rfind(separator, 0, at)
                    starts.add(0 if start < 0 else start + len(separator))
                at = blocks.find(suffix, at + 1)
        for start in sorted(starts):
            chunk = self._parse(blocks[start : blocks.find(separator, start)])
            if chunk is None:
                return False
            self._complete = self._complete or _ends(chunk)
        return True

    def _read_usage(self) -> None:
        """Parse the latest chunk that reports usage (a chunk that is not JSON is passed over)."""
        reads, self._usage_reads = self._usage_reads, []
        for blocks, separator in reversed(reads):
            for block in reversed(blocks.split(separator)):
                if _USAGE.search(block) is not None and (chunk := self._parse(block)) is not None:
                    usage = gemini_usage(field(chunk, "usageMetadata"))
                    if usage is not None:
                        self._usage = usage
                        return

    @staticmethod
    def _parse(block: bytes) -> dict[str, Any] | None:
        """The chunk of one ``data: ...`` block (None when it is not a JSON object)."""
        try:
            parsed = orjson.loads(block[6:])
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def _measurer(self) -> GeminiStreamDecoder:
        if self._decoder is None:
            self._decoder = GeminiStreamDecoder()
        return self._decoder

    def _measure(self) -> None:
        if self._held:
            decoder = self._measurer()
            for blocks in self._held:
                decoder.feed(blocks)
            self._held.clear()
            self._held_bytes = 0

    def _go_full(self, blocks: bytes) -> bool:
        """Hand this read, and every one after it, to the full decoder (after the blocks it has not measured)."""
        self._measure()
        self._full = True
        # An unfinished block stays in this reader's SSE decoder: the full decoder gets whole blocks, and the
        # rest at the end.
        return self._errors(self._measurer().feed(blocks))

    @staticmethod
    def _errors(events: list[Any]) -> bool:
        return any(isinstance(event, StreamError) for event in events)
