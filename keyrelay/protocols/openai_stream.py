"""Relaying an OpenAI Chat Completions SSE stream: framing, usage, hidden usage chunks, output estimates.

The upstream's bytes go to the client as they are, event by event (``protocols.sse`` finds where each
event ends, whatever the line endings). What the gateway needs from the stream is found with a few
C-level scans of each network read, and events are parsed only where one matters: the usage chunk,
``[DONE]``, an error event, and (only when the upstream never reports usage) the output to estimate.

Wire format: https://platform.openai.com/docs/api-reference/chat-streaming (``chat.completion.chunk``;
with ``stream_options.include_usage`` every chunk carries ``"usage": null`` and one last chunk with empty
``choices`` carries the usage).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import orjson

from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.sse import BOM, SSEDecoder, SSEEvent, parse_blocks

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_USAGE = b'"usage"'
_NULL_MEMBER = re.compile(rb'"usage"\s*:\s*null')
_SPACE = b" \t\n\r\f\v"  # what ``\s`` matches in a bytes pattern
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
_ERROR_KEY = re.compile(rb'"error"\s*:')
_ERROR_EVENT = re.compile(rb"event: ?error\b")  # an "event: error" line (each pattern opens with a literal: fast)
# What makes a block worth parsing, each with a literal that must occur first (a C-level test).
_SPECIAL = ((b'"usage"', _USAGE_OBJECT), (b"error", _ERROR_KEY), (b"error", _ERROR_EVENT), (b"[DONE]", None))
_DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"
_DONE_LAST = b"\n\n" + _DONE_EVENT  # LF-framed blocks whose last event is [DONE]: the usual last read of a stream
_ESTIMATE_BATCH = 64 * 1024  # parse held events for the estimate once this many bytes wait


def _occurrences(data: bytes, literal: bytes) -> list[int]:
    """Every offset where ``literal`` occurs in ``data``."""
    found: list[int] = []
    at = data.find(literal)
    while at >= 0:
        found.append(at)
        at = data.find(literal, at + 1)
    return found


def _space_after(data: bytes, at: int) -> int:
    """The first offset from ``at`` on that is not white space (``len(data)`` if none is)."""
    size = len(data)
    while at < size and data[at] in _SPACE:
        at += 1
    return at


def _without_usage_null(blocks: bytes) -> bytes:
    r"""``blocks`` without their ``"usage": null`` members, however spaced (a member and the comma before or after it).

    The bytes ``re.sub`` leaves of ``,\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*,\s*``, found
    from each ``"usage"`` with substring searches: that pattern opens with no literal, so it is tried at every byte
    (55 µs for a 4 KB read). A match of an occurrence can start at one place only, the comma or brace before the white
    space before it, and never before ``pos``, where the last removal ended.
    """
    kept: list[bytes] = []
    pos = 0
    at = blocks.find(_USAGE)
    while at >= 0:
        member = _NULL_MEMBER.match(blocks, at)
        if member is not None:
            start = at
            while start > 0 and blocks[start - 1] in _SPACE:
                start -= 1
            before = blocks[start - 1 : start]
            after = _space_after(blocks, member.end())
            follows = blocks[after : after + 1]
            if before == b"," and start - 1 >= pos and follows in (b",", b"}"):
                kept.append(blocks[pos : start - 1])
                pos = member.end()
            elif before == b"{" and start >= pos and follows == b",":
                kept.append(blocks[pos:start])
                pos = _space_after(blocks, after + 1)
        at = blocks.find(_USAGE, max(at + 1, pos))
    if not kept:
        return blocks
    kept.append(blocks[pos:])
    return b"".join(kept)


def _ends_with_done(blocks: bytes) -> bool:
    """``blocks`` (LF framing) end with the event ``data: [DONE]``: a test of their last bytes."""
    return blocks.endswith(_DONE_LAST) or blocks == _DONE_EVENT


def _done_line(blocks: bytes) -> bool:
    r"""``blocks`` hold a line ``data: [DONE]`` (or ``data:[DONE]``) ended by LF, CRLF or their end.

    The lines the pattern ``^data: ?\[DONE\]\r?$`` finds in multi-line mode, found from each ``[DONE]`` with
    substring searches instead: a pattern anchored at line starts is tried at every byte (19 µs for a 4 KB read).
    A lone CR is no line end here (nor to that pattern): CR-only framing takes the callers' slow path.
    """
    return _ends_with_done(blocks) or any(_on_done_line(blocks, at) for at in _occurrences(blocks, _DONE))


def _on_done_line(blocks: bytes, at: int) -> bool:
    """The ``[DONE]`` at offset ``at`` is the whole data of its line (``data: `` or ``data:`` before, LF/CRLF after)."""
    line = blocks.rfind(b"\n", 0, at) + 1
    rest = blocks[at + 6 : at + 8].removeprefix(b"\r")
    return blocks[line:at] in (b"data: ", b"data:") and (not rest or rest[:1] == b"\n")


def _whole(data: bytes) -> bool:
    """An event's data is ``[DONE]`` or complete JSON."""
    if data.strip() == b"[DONE]":
        return True
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def estimate_tokens(text_bytes: int) -> int:
    """A token estimate from a UTF-8 byte count: about four bytes a token, rounded up (never 0 for text)."""
    return math.ceil(text_bytes / 4)


def _detail(details: object, name: str, most: int) -> int:
    """A count inside ``prompt_tokens_details`` / ``completion_tokens_details`` (0 when absent), at most ``most``."""
    value = details.get(name) if isinstance(details, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0
    return min(value, most)


def usage_of(value: object) -> Usage | None:
    """``Usage`` from an OpenAI ``usage`` object; None when it is absent or malformed.

    With the parts of it that are priced apart: ``prompt_tokens_details.cached_tokens`` (and
    ``cache_write_tokens`` where a server reports it) and ``completion_tokens_details.reasoning_tokens``.
    """
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int) or isinstance(prompt, bool):
        return None
    prompt_details = value.get("prompt_tokens_details")
    cached = _detail(prompt_details, "cached_tokens", prompt)
    written = _detail(prompt_details, "cache_write_tokens", prompt - cached)
    reasoning = _detail(value.get("completion_tokens_details"), "reasoning_tokens", completion)
    return Usage(prompt, completion, False, cached, written, reasoning)


def _str_bytes(value: object) -> int:
    return len(value.encode()) if isinstance(value, str) else 0


def output_bytes(message: object) -> int:
    """UTF-8 bytes of everything a model produced in one ``message`` or stream ``delta``.

    Counts text (``content``, as a string or a list of text parts), ``refusal``, reasoning text
    (``reasoning_content`` as DeepSeek sends it, ``reasoning`` as OpenRouter and vLLM do), the names and
    arguments of ``tool_calls`` and of the legacy ``function_call``, and an audio ``transcript``.
    """
    if not isinstance(message, dict):
        return 0
    total = 0
    content = message.get("content")
    if isinstance(content, str):
        total += len(content.encode())
    elif isinstance(content, list):
        total += sum(_str_bytes(part.get("text")) for part in content if isinstance(part, dict))
    total += _str_bytes(message.get("refusal"))
    total += _str_bytes(message.get("reasoning_content")) + _str_bytes(message.get("reasoning"))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            total += _str_bytes(function.get("name")) + _str_bytes(function.get("arguments"))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        total += _str_bytes(legacy.get("name")) + _str_bytes(legacy.get("arguments"))
    audio = message.get("audio")
    if isinstance(audio, dict):
        total += _str_bytes(audio.get("transcript"))
    return total


def choices_output_bytes(chunk: object, part: str) -> int:
    """Output bytes of every choice of a response (``part="message"``) or stream chunk (``part="delta"``).

    A legacy completion's choice (``text_completion``) holds its output in ``text`` instead.
    """
    if not isinstance(chunk, dict):
        return 0
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    return sum(
        output_bytes(choice.get(part)) + _str_bytes(choice.get("text"))
        for choice in choices
        if isinstance(choice, dict)
    )


def response_usage(payload: bytes) -> tuple[Usage | None, int]:
    """Usage from a non-streaming JSON answer, or None and the bytes of its output (for an estimate)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, len(payload)
    if not isinstance(data, dict):
        return None, len(payload)
    usage = usage_of(data.get("usage"))
    if usage is not None:
        return usage, 0
    return None, choices_output_bytes(data, "message")


class StreamRelay:
    """Relays one OpenAI SSE stream from the upstream to the client; a new object per request.

    Args:
        hide_usage_chunk: The gateway asked the upstream for usage and the client did not: remove the
            usage chunk and the ``"usage": null`` member of every other chunk.
        scrub: Removes secrets, and anything shaped like a key, from an upstream error event before it is relayed.
        scrub_known: Removes the known provider secrets from every block relayed (model output may echo one).

    Attributes:
        usage: The usage the upstream reported (None until its chunk arrives).
        done: ``data: [DONE]`` was seen.
        finished: A choice ended with a ``finish_reason`` (known once :meth:`complete` has been asked).
        error: The message of an ``{"error": ...}`` event sent by the upstream mid-stream, if any.
    """

    def __init__(
        self,
        *,
        hide_usage_chunk: bool,
        scrub: Callable[[bytes], bytes] | None = None,
        scrub_known: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._hide = hide_usage_chunk
        self._scrub = scrub
        self._scrub_known = scrub_known
        self._sse = SSEDecoder()
        self.usage: Usage | None = None
        self.done = False
        self.finished = False
        self.error: str | None = None
        self._held: list[bytes] = []  # blocks kept for an output estimate, until usage shows up
        self._held_bytes = 0
        self._output_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to pass to the client for one network read: every event it completed.

        Runs once per read on every stream, so it tests with C-level substring searches first and lets a
        regular expression (any JSON spacing) or an event parse confirm only what those cannot rule out.
        Finish reasons are only looked for when the stream ends without ``[DONE]`` or usage (``complete``).
        """
        blocks = self._sse.feed(chunk)
        if not blocks:
            return b""
        if self._scrub_known is not None:
            blocks = self._scrub_known(blocks)  # whole blocks: a secret is never split across two reads here
        if self._hide:
            blocks = blocks.replace(b',"usage":null', b"")
        if self.usage is None:
            self._held.append(blocks)
            self._held_bytes += len(blocks)
            if self._held_bytes > _ESTIMATE_BATCH:
                self._count_held()
        has_usage = b'"usage"' in blocks
        usage = _USAGE_OBJECT.search(blocks) if has_usage else None
        error = b"error" in blocks
        if usage is not None or (error and (_ERROR_KEY.search(blocks) or _ERROR_EVENT.search(blocks))):
            return self._scan(blocks, usage, error)
        if _DONE in blocks:
            if not _done_line(blocks):
                return self._scan(blocks, None, error)
            self.done = True
        if has_usage and self._hide:
            return _without_usage_null(blocks)  # "usage": null written with other spacing
        return blocks

    def _scan(self, blocks: bytes, usage: re.Match[bytes] | None, error: bool) -> bytes:
        """Event by event where it matters: the usage chunk, ``[DONE]`` or an error event.

        ``usage``: the first usage object in ``blocks``, if any; ``error``: whether ``error`` occurs in them. With
        LF framing only the blocks around a match are parsed; other framings parse every event.
        """
        out = self._blocks(blocks) if b"\r" in blocks else self._around_matches(blocks, usage, error)
        return _without_usage_null(out) if self._hide and _USAGE in out else out

    def _around_matches(self, blocks: bytes, usage: re.Match[bytes] | None, error: bool) -> bytes:
        """LF framing: pass only the blocks holding a match through :meth:`_event`.

        When every event comes back as it was (nothing hidden or scrubbed: the usual read with the usage chunk),
        the blocks are passed on as they came, not joined again from pieces.
        """
        starts: list[int] = []
        if usage is not None:
            starts += [match.start() for match in _USAGE_OBJECT.finditer(blocks, usage.start())]
        if error:
            starts += [match.start() for match in _ERROR_KEY.finditer(blocks)]
            starts += [match.start() for match in _ERROR_EVENT.finditer(blocks)]
        if _ends_with_done(blocks):
            self.done = True  # any other [DONE] in these blocks could only set ``done`` too: not looked for
        else:
            starts += _occurrences(blocks, _DONE)
        if len(starts) > 1:
            starts.sort()
        kept: list[bytes] = []
        changed = False
        pos = 0
        for at in starts:
            if at < pos:
                continue  # inside a block already handled
            start = blocks.rfind(b"\n\n", pos, at)
            start = pos if start < 0 else start + 2
            end = blocks.find(b"\n\n", at)
            end = len(blocks) if end < 0 else end + 2
            block = blocks[start:end]
            out = self._lf_block(block)
            changed = changed or out is not block
            kept += (blocks[pos:start], out)
            pos = end
        if not changed:
            return blocks
        kept.append(blocks[pos:])
        return b"".join(kept)

    def _lf_block(self, block: bytes) -> bytes:
        """One LF-framed block through :meth:`_event`; a lone ``data:`` line is read without the SSE parser."""
        if block.startswith(b"data: ") and block.find(b"\n") == len(block) - 2 and block.endswith(b"\n\n"):
            return self._data(block[6:-2].strip(), block)  # an unnamed event: only its data to look at
        return self._blocks(block)

    def _blocks(self, blocks: bytes) -> bytes:
        """Complete blocks with each event passed through :meth:`_event`; bytes between events kept as they came."""
        kept: list[bytes] = []
        end = 0
        for event in self._parse(blocks):
            start = blocks.find(event.raw, end)
            kept += (blocks[end:start], self._event(event))
            end = start + len(event.raw)
        kept.append(blocks[end:])
        return b"".join(kept)

    def _event(self, event: SSEEvent) -> bytes:
        data = event.data.strip()
        if event.event == "error" and data != _DONE:  # a named error event, whatever its data
            self.error = data[:500].decode("utf-8", "replace") or "error event"
            return self._scrub(event.raw) if self._scrub is not None else event.raw
        return self._data(data, event.raw)

    def _data(self, data: bytes, raw: bytes) -> bytes:
        """An event's stripped ``data`` looked at; returns ``raw`` (the event's bytes) or what replaces them."""
        if data == _DONE:
            self.done = True
            return raw
        if not data.startswith(b"{") or not (_USAGE_OBJECT.search(data) or _ERROR_KEY.search(data)):
            return raw
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(parsed, dict):
            return raw
        error = parsed.get("error")
        if error is not None and not parsed.get("choices"):
            message = error.get("message") if isinstance(error, dict) else error
            self.error = str(message)[:500] if message else "error event"
            return self._scrub(raw) if self._scrub is not None else raw
        usage = usage_of(parsed.get("usage"))
        if usage is None:
            return raw
        self.usage = usage
        self._held.clear()
        self._held_bytes = 0
        if not self._hide:
            return raw
        if not parsed.get("choices"):
            return b""  # the usage-only chunk the client did not ask for
        parsed.pop("usage", None)
        return b"data: " + orjson.dumps(parsed) + b"\n\n"

    def _parse(self, blocks: bytes) -> list[SSEEvent]:
        return parse_blocks(blocks[len(BOM) :] if blocks.startswith(BOM) else blocks)[0]

    def _count_held(self) -> None:
        parsed_events = self._parse(b"".join(self._held))
        self._held.clear()
        self._held_bytes = 0
        for event in parsed_events:
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            self._output_bytes += choices_output_bytes(chunk, "delta")
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            if isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
                self.finished = True

    def end(self, *, clean: bool) -> bytes:
        """The bytes to send when the upstream stream is over, after the last :meth:`feed`.

        Line endings left after the last event (the LF of a CRLF split from its CR) go on as they came. A last
        event left without its blank line is completed and passed on when the stream ended cleanly and
        the event is whole (``data: [DONE]`` or complete JSON; some servers end that way). Otherwise (a cut
        mid-event) it is dropped: a client would choke on half an event, and an error event follows instead.
        """
        rest = self._sse.flush()
        if not clean:
            return b""
        if not rest.strip(b"\r\n"):
            return rest  # the LF of a last CRLF that came in a read of its own: the upstream's bytes, as they came
        events, _ = parse_blocks(rest + b"\n\n")
        if not events or not all(_whole(event.data) for event in events):
            return b""
        return self.feed(rest + b"\n\n")

    def output_tokens_estimate(self) -> int:
        """Estimated completion tokens from every output the stream carried (for streams without usage)."""
        if self._held:
            self._count_held()
        return estimate_tokens(self._output_bytes)

    def complete(self) -> bool:
        """The stream ended as OpenAI streams end: ``[DONE]``, or a finish reason or the usage chunk that follows it.

        (Some OpenAI-compatible servers omit ``[DONE]``.) Call it once the stream is over: the finish reason is
        read from the events kept for the output estimate, which exist only while no usage has arrived.
        """
        if self.done or self.usage is not None:
            return True
        if self._held:
            self._count_held()
        return self.finished
