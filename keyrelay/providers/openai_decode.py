"""An OpenAI(-compatible) upstream's Chat Completions stream → canonical stream events, for a client of another wire.

Wire format: https://platform.openai.com/docs/api-reference/chat-streaming. OpenAI does not frame content
blocks, so they are made here: a text block opens on the first ``content`` delta, a thinking block on the
first ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (OpenRouter) delta, a tool-call block per
``tool_calls[].index``; a block closes when another kind begins, and every block closes before ``Finish``.

Canonical blocks do not interleave, but a server may interleave the argument deltas of parallel tool calls.
So the first tool call to begin streams live, and the others are held (each in its own buffer) until it
closes, then each is sent whole, in the order the calls began. OpenAI itself sends calls one after
another, so there only the first call's arguments stream and the later ones arrive at once, just before
``Finish``.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    Finish,
    MessageStart,
    StopReason,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ToolArgumentsDelta,
    ToolCallPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.sse import SSEDecoder, SSEEvent, parse_blocks
from keyrelay.providers.openai import openai_usage, reasoning_text, stop_reason, tool_arguments, upstream_error

__all__ = ["OpenAIStreamDecoder"]


class _Call:
    """One tool call of the stream: what is known of it, and its arguments not yet sent."""

    __slots__ = ("id", "name", "held", "block", "closed")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.held: list[str] = []
        self.block: int | None = None  # its canonical block index, once opened
        self.closed = False


class OpenAIStreamDecoder:
    """OpenAI SSE bytes → canonical events; one per request, never shared."""

    __slots__ = (
        "_sse",
        "_usage",
        "_done",
        "_finished",
        "_started",
        "_blocks",
        "_open",
        "_open_kind",
        "_calls",
        "_live",
        "_output_bytes",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._usage: Usage | None = None
        self._done = False
        self._finished = False
        self._started = False
        self._blocks = 0  # canonical blocks opened so far
        self._open: int | None = None  # the open block's index
        self._open_kind = ""  # "text" | "thinking" | "tool"
        self._calls: dict[int, _Call] = {}  # by OpenAI tool_calls index, in the order they began
        self._live: int | None = None  # the OpenAI index of the tool call streaming live
        self._output_bytes = 0

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported so far (its usage chunk)."""
        return self._usage

    @property
    def complete(self) -> bool:
        """``data: [DONE]`` was seen, or a ``finish_reason`` (some compatible servers omit ``[DONE]``)."""
        return self._done or self._finished

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of text, reasoning, tool names and arguments seen so far."""
        return self._output_bytes

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events completed by this network read."""
        blocks = self._sse.feed(chunk)
        if not blocks:
            return []
        out: list[StreamEvent] = []
        for event in self._sse.events(blocks):
            self._event(event, out)
        return out

    def end(self) -> list[StreamEvent]:
        """The events of a last event left without its blank line, when it is whole."""
        rest = self._sse.flush()
        if not rest.strip():
            return []
        events, _ = parse_blocks(rest + b"\n\n")
        out: list[StreamEvent] = []
        for event in events:
            self._event(event, out)
        return out

    # --- events -----------------------------------------------------------------------------------

    def _event(self, event: SSEEvent, out: list[StreamEvent]) -> None:
        if self._done:
            return
        data = event.data
        if data.strip() == b"[DONE]":
            self._done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            if event.event == "error":
                out.append(StreamError(data[:500].decode("utf-8", "replace")))
            return  # a half event at a cut: the stream ends without Finish and is an error anyway
        if not isinstance(chunk, dict):
            return
        if "error" in chunk or event.event == "error":
            out.append(StreamError(upstream_error(data)[0] or "The upstream reported an error."))
            return
        self._chunk(chunk, out)

    def _chunk(self, chunk: dict[str, Any], out: list[StreamEvent]) -> None:
        if not self._started:
            self._started = True
            chunk_id, model = chunk.get("id"), chunk.get("model")
            out.append(
                MessageStart(chunk_id if isinstance(chunk_id, str) else "", model if isinstance(model, str) else "")
            )
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._choice(choice, out)
        usage = openai_usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
            out.append(UsageUpdate(usage))

    def _choice(self, choice: dict[str, Any], out: list[StreamEvent]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = reasoning_text(delta)
            if reasoning:
                self._text("thinking", reasoning, out)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text("text", content, out)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._text("text", refusal, out)  # a refusal is text to the other wires (documented)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        self._tool_delta(call, position, out)
        reason = choice.get("finish_reason")
        if reason is not None and not self._finished:
            self._finished = True
            self._close_all(out)
            out.append(Finish(stop_reason(reason) or StopReason.OTHER))

    # --- blocks -----------------------------------------------------------------------------------

    def _open_block(self, kind: str, part: TextPart | ThinkingPart | ToolCallPart, out: list[StreamEvent]) -> int:
        index = self._blocks
        self._blocks += 1
        self._open, self._open_kind = index, kind
        out.append(BlockStart(index, part))
        return index

    def _close_open(self, out: list[StreamEvent]) -> None:
        if self._open is not None:
            out.append(BlockStop(self._open))
            self._open, self._open_kind = None, ""

    def _close_all(self, out: list[StreamEvent]) -> None:
        """Close the open block, then send every held tool call whole, in the order the calls began."""
        if self._live is not None:
            self._calls[self._live].closed = True
            self._live = None
        self._close_open(out)
        for number, call in self._calls.items():
            if call.closed:
                continue
            call.closed = True
            index = self._open_block("tool", ToolCallPart(call.id or f"call_{number}", call.name or "", ""), out)
            if call.held:
                out.append(ToolArgumentsDelta(index, "".join(call.held)))
                call.held.clear()
            self._close_open(out)

    def _text(self, kind: str, text: str, out: list[StreamEvent]) -> None:
        self._output_bytes += len(text.encode())
        if self._open_kind != kind:
            self._close_all(out)
            self._open_block(kind, TextPart("") if kind == "text" else ThinkingPart(""), out)
        assert self._open is not None
        out.append(TextDelta(self._open, text) if kind == "text" else ThinkingDelta(self._open, text))

    def _tool_delta(self, delta: dict[str, Any], position: int, out: list[StreamEvent]) -> None:
        number = delta.get("index", position)
        if not isinstance(number, int):
            number = position
        call = self._calls.get(number)
        if call is None:
            call = self._calls[number] = _Call()
        elif call.closed:
            out.append(StreamError("The upstream sent tool call arguments after the call had ended."))
            return
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        call_id, name = delta.get("id"), function.get("name")
        if isinstance(call_id, str) and call_id and call.id is None:
            call.id = call_id
        if isinstance(name, str) and name and call.name is None:
            call.name = name
            self._output_bytes += len(name.encode())
        arguments = tool_arguments(function.get("arguments"))
        self._output_bytes += len(arguments.encode())
        if self._live is None and call.name is not None:
            self._close_open(out)  # text or thinking before it (no tool block is open without a live call)
            self._live = number
            call.block = self._open_block("tool", ToolCallPart(call.id or f"call_{number}", call.name, ""), out)
            arguments = "".join(call.held) + arguments
            call.held.clear()
        if self._live == number:
            if arguments:
                assert call.block is not None
                out.append(ToolArgumentsDelta(call.block, arguments))
        elif arguments:
            call.held.append(arguments)
