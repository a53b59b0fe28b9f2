"""Canonical stream events → an Anthropic Messages SSE stream for the client.

Wire format: https://docs.anthropic.com/en/docs/build-with-claude/streaming. A complete stream is
``message_start``, then per content block ``content_block_start``, deltas and ``content_block_stop``,
then ``message_delta`` (stop reason and cumulative usage) and ``message_stop``. The canonical Finish
is held until ``end`` so that usage reported after it still reaches the ``message_delta``.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.errors import GatewayError
from keyrelay.protocols.anthropic import STOP_REASONS, error_body, message_id, thinking_block, usage_object
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Finish,
    MessageStart,
    SignatureDelta,
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

__all__ = ["AnthropicStreamEncoder"]

_BLOCK_DELTA = b"event: content_block_delta\ndata: "
_BLOCK_STOP = b"event: content_block_stop\ndata: "
_END = b"\n\n"


def _frame(event: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + event + b"\ndata: " + orjson.dumps(data) + _END


class AnthropicStreamEncoder:
    """Canonical events → Anthropic SSE frames; one per request.

    Args:
        request: The canonical request (its ``model`` is the model the client asked for).
        response_id: The id of the answer (prefixed ``msg_`` when it is not already).
        input_tokens_estimate: The input tokens ``message_start`` reports when the upstream reports none
            that early (Anthropic clients read input usage there).
    """

    __slots__ = ("_model", "_id", "_estimate", "_started", "_open", "_finish", "_usage", "_closed", "_next")

    def __init__(self, request: ChatRequest, response_id: str, input_tokens_estimate: int) -> None:
        self._model = request.model
        self._id = message_id(response_id)
        self._estimate = max(0, input_tokens_estimate)
        self._started = False
        self._open: dict[int, int] = {}  # canonical block index → Anthropic block index, while open
        self._next = 0
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._closed = False

    def _start(self, usage: Usage | None) -> bytes:
        self._started = True
        if usage is not None:
            self._usage = usage
            counts = usage_object(usage)
        else:
            counts = usage_object(None)
            counts["input_tokens"] = self._estimate
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": counts,
        }
        return _frame(b"message_start", {"type": "message_start", "message": message})

    def _block_start(self, event: BlockStart) -> bytes:
        index = self._next
        self._next += 1
        self._open[event.index] = index
        part = event.part
        block: dict[str, Any]
        if isinstance(part, TextPart):
            block = {"type": "text", "text": ""}
        elif isinstance(part, ThinkingPart):
            block = thinking_block(ThinkingPart("", "", part.redacted))
        else:
            block = {"type": "tool_use", "id": part.id, "name": part.name, "input": {}}
        out = _frame(b"content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        # A start that already holds content (canonical starts are empty, but a decoder may fill them).
        if isinstance(part, ToolCallPart) and part.arguments:
            out += self._delta(index, {"type": "input_json_delta", "partial_json": part.arguments})
        elif isinstance(part, TextPart) and part.text:
            out += self._delta(index, {"type": "text_delta", "text": part.text})
        elif isinstance(part, ThinkingPart) and part.redacted is None:
            if part.text:
                out += self._delta(index, {"type": "thinking_delta", "thinking": part.text})
            if part.signature:
                out += self._delta(index, {"type": "signature_delta", "signature": part.signature})
        return out

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": index, "delta": delta}
        return _BLOCK_DELTA + orjson.dumps(data) + _END

    def _event(self, event: StreamEvent) -> bytes:
        match event:
            case BlockStart():
                return self._block_start(event)
            case TextDelta(index=i, text=text) if i in self._open:
                return self._delta(self._open[i], {"type": "text_delta", "text": text})
            case ThinkingDelta(index=i, text=text) if i in self._open:
                return self._delta(self._open[i], {"type": "thinking_delta", "thinking": text})
            case SignatureDelta(index=i, signature=signature) if i in self._open:
                return self._delta(self._open[i], {"type": "signature_delta", "signature": signature})
            case ToolArgumentsDelta(index=i, partial_json=text) if i in self._open:
                return self._delta(self._open[i], {"type": "input_json_delta", "partial_json": text})
            case BlockStop(index=i) if i in self._open:
                return _BLOCK_STOP + b'{"type":"content_block_stop","index":%d}' % self._open.pop(i) + _END
            case Finish():
                self._finish = event
            case UsageUpdate(usage=usage):
                self._usage = usage
            case StreamError(message=message):
                self._closed = True
                body = {"type": "error", "error": {"type": "api_error", "message": message}}
                return _frame(b"error", body)
        return b""

    def events(self, events: list[StreamEvent]) -> bytes:
        """The frames for these events; Finish and usage are held for ``end``."""
        out = b""
        for event in events:
            if self._closed:
                break
            if not self._started:
                out += self._start(event.usage if isinstance(event, MessageStart) else None)
                if isinstance(event, MessageStart):
                    continue
            out += self._event(event)
        return out

    def _close_blocks(self) -> bytes:
        out = b"".join(
            _BLOCK_STOP + b'{"type":"content_block_stop","index":%d}' % index + _END for index in self._open.values()
        )
        self._open.clear()
        return out

    def end(self, usage: Usage | None) -> bytes:
        """``message_delta`` with the stop reason and cumulative usage, then ``message_stop``."""
        if self._closed:
            return b""
        out = b"" if self._started else self._start(None)
        self._closed = True
        out += self._close_blocks()
        finish = self._finish
        reason = STOP_REASONS[finish.stop_reason] if finish is not None else "end_turn"
        totals = usage or self._usage
        counts = usage_object(totals)
        if totals is None:
            counts["input_tokens"] = self._estimate
        delta = {"stop_reason": reason, "stop_sequence": finish.stop_sequence if finish is not None else None}
        if reason != "stop_sequence":
            delta["stop_sequence"] = None
        out += _frame(b"message_delta", {"type": "message_delta", "delta": delta, "usage": counts})
        return out + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

    def error(self, err: GatewayError) -> bytes:
        """An ``event: error`` frame in Anthropic's error shape; nothing follows it."""
        if self._closed:
            return b""
        self._closed = True
        return _frame(b"error", error_body(err, None))
