r"""Canonical stream events → a Gemini ``streamGenerateContent`` stream, as SSE or as a JSON array.

``?alt=sse`` gets ``data: {GenerateContentResponse}`` events (CRLF-framed, as Google sends them); without it the
body is one JSON array whose elements arrive one by one (``[{...}``, ``,\\r\\n{...}``, ``]``). Each call to
``events`` writes at most one chunk holding every part its events completed. Text and thoughts stream as
they come; a function call is written whole when its block stops (Gemini never splits a ``functionCall``).
The last chunk carries ``finishReason`` and ``usageMetadata``. Reference:
https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Finish,
    MessageStart,
    SignatureDelta,
    StopReason,
    StreamError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ThinkingPart,
    ToolArgumentsDelta,
    ToolCallPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.gemini_parts import FINISH_FROM_CANONICAL, call_args, error_object, usage_metadata


class GeminiStreamEncoder:
    """One client's Gemini stream; a new object per request.

    Args:
        request: The canonical request (whether the client asked to see thoughts).
        response_id: The ``responseId`` every chunk carries.
        model: The ``modelVersion`` every chunk carries.
        sse: SSE events (``alt=sse``) or the JSON-array stream.
        request_id: Put in an error's details.
    """

    __slots__ = (
        "_show",
        "_sse",
        "_head",
        "_tail",
        "_started",
        "_closed",
        "_kinds",
        "_calls",
        "_signature",
        "_stop",
        "_usage",
        "_request_id",
    )

    def __init__(
        self, request: ChatRequest, response_id: str, model: str, *, sse: bool = True, request_id: str | None = None
    ) -> None:
        self._show = request.reasoning is not None and request.reasoning.include_thoughts
        self._sse = sse
        self._head = b'{"candidates":[{"content":{"parts":'
        self._tail = b',"modelVersion":' + orjson.dumps(model) + b',"responseId":' + orjson.dumps(response_id) + b"}"
        self._started = False
        self._closed = False
        self._kinds: dict[int, str] = {}
        self._calls: dict[int, tuple[ToolCallPart, list[str]]] = {}
        self._signature: str | None = None  # a hidden thought's signature, for the next part written
        self._stop: StopReason | None = None
        self._usage: Usage | None = None
        self._request_id = request_id

    def _frame(self, chunk: bytes) -> bytes:
        if self._sse:
            return b"data: " + chunk + b"\r\n\r\n"
        if self._started:
            return b",\r\n" + chunk
        self._started = True
        return b"[" + chunk

    def _part(self, parts: list[dict[str, Any]], part: dict[str, Any]) -> None:
        if self._signature is not None:
            part["thoughtSignature"] = self._signature
            self._signature = None
        parts.append(part)

    def _text(self, parts: list[dict[str, Any]], text: str, thought: bool) -> None:
        last = parts[-1] if parts else None
        if last is not None and "text" in last and last.get("thought", False) is thought:
            last["text"] += text
        elif thought:
            self._part(parts, {"text": text, "thought": True})
        else:
            self._part(parts, {"text": text})

    def _sign(self, parts: list[dict[str, Any]], signature: str) -> None:
        if not self._show:
            self._signature = signature
            return
        last = parts[-1] if parts else None
        if last is not None and last.get("thought") and "thoughtSignature" not in last:
            last["thoughtSignature"] = signature
        else:
            parts.append({"text": "", "thought": True, "thoughtSignature": signature})

    def _start(self, parts: list[dict[str, Any]], ev: BlockStart) -> None:
        part = ev.part
        if isinstance(part, ToolCallPart):
            self._kinds[ev.index] = "tool"
            self._calls[ev.index] = (part, [part.arguments] if part.arguments else [])
        elif isinstance(part, ThinkingPart):
            self._kinds[ev.index] = "thinking"
            if part.text and self._show:
                self._text(parts, part.text, True)
            if part.signature:
                self._sign(parts, part.signature)
        else:
            self._kinds[ev.index] = "text"
            if part.text:
                self._text(parts, part.text, False)

    def _on_text(self, parts: list[dict[str, Any]], ev: TextDelta) -> None:
        if ev.text:
            self._text(parts, ev.text, False)

    def _on_thinking(self, parts: list[dict[str, Any]], ev: ThinkingDelta) -> None:
        if ev.text and self._show:
            self._text(parts, ev.text, True)

    def _on_arguments(self, parts: list[dict[str, Any]], ev: ToolArgumentsDelta) -> None:
        call = self._calls.get(ev.index)
        if call is not None:
            call[1].append(ev.partial_json)

    def _on_stop(self, parts: list[dict[str, Any]], ev: BlockStop) -> None:
        call = self._calls.pop(ev.index, None)
        if call is not None:
            start, pieces = call
            args = call_args("".join(pieces)) or {}
            self._part(parts, {"functionCall": {"id": start.id, "name": start.name, "args": args}})

    def _on_signature(self, parts: list[dict[str, Any]], ev: SignatureDelta) -> None:
        self._sign(parts, ev.signature)

    def _on_finish(self, parts: list[dict[str, Any]], ev: Finish) -> None:
        self._stop = ev.stop_reason

    def _on_usage(self, parts: list[dict[str, Any]], ev: UsageUpdate) -> None:
        self._usage = ev.usage

    def _on_message(self, parts: list[dict[str, Any]], ev: MessageStart) -> None:
        if ev.usage is not None:
            self._usage = ev.usage

    def events(self, events: list[StreamEvent]) -> bytes:
        """The chunk for these events (``b""`` when they complete no part)."""
        if self._closed:
            return b""
        parts: list[dict[str, Any]] = []
        handlers = _HANDLERS
        for ev in events:
            if isinstance(ev, StreamError):
                out = self._frame(self._chunk(parts)) if parts else b""
                return out + self.error(GatewayError(ErrorType.UPSTREAM_ERROR, ev.message))
            handlers[type(ev)](self, parts, ev)
        return self._frame(self._chunk(parts)) if parts else b""

    def _chunk(self, parts: list[dict[str, Any]]) -> bytes:
        return self._head + orjson.dumps(parts) + b',"role":"model"},"index":0}]' + self._tail

    def end(self, usage: Usage | None) -> bytes:
        """The last chunk (finishReason, usageMetadata) and, for the array form, the closing bracket."""
        if self._closed:
            return b""
        self._closed = True
        candidate: dict[str, Any] = {}
        if self._signature is not None:
            candidate["content"] = {"parts": [{"text": "", "thoughtSignature": self._signature}], "role": "model"}
        candidate["finishReason"] = FINISH_FROM_CANONICAL[self._stop or StopReason.STOP]
        candidate["index"] = 0
        last: dict[str, Any] = {"candidates": [candidate]}
        usage = usage or self._usage
        if usage is not None:
            last["usageMetadata"] = usage_metadata(usage)
        out = self._frame(orjson.dumps(last)[:-1] + self._tail)
        return out if self._sse else out + b"]"

    def error(self, err: GatewayError) -> bytes:
        """An ``{"error": {...}}`` element closing the stream (the google-genai SDK raises it as an APIError)."""
        if self._closed:
            return b""
        self._closed = True
        body = orjson.dumps(error_object(err, self._request_id))
        if self._sse:
            return b"data: " + body + b"\r\n\r\n"
        return (b",\r\n" if self._started else b"[") + body + b"]"


# One dict lookup per event instead of a chain of isinstance tests (events run per network read).
_HANDLERS: dict[type, Callable[[GeminiStreamEncoder, list[dict[str, Any]], Any], None]] = {
    TextDelta: GeminiStreamEncoder._on_text,
    ThinkingDelta: GeminiStreamEncoder._on_thinking,
    ToolArgumentsDelta: GeminiStreamEncoder._on_arguments,
    BlockStart: GeminiStreamEncoder._start,
    BlockStop: GeminiStreamEncoder._on_stop,
    SignatureDelta: GeminiStreamEncoder._on_signature,
    Finish: GeminiStreamEncoder._on_finish,
    UsageUpdate: GeminiStreamEncoder._on_usage,
    MessageStart: GeminiStreamEncoder._on_message,
}
