"""Canonical answer → what an OpenAI client of another wire receives: the ``chat.completion`` body and the stream.

``canonical_to_openai_response`` writes the body (https://platform.openai.com/docs/api-reference/chat/object);
``OpenAIStreamEncoder`` the stream (https://platform.openai.com/docs/api-reference/chat-streaming).

The first chunk carries ``role: assistant``; text goes out as ``content`` deltas, reasoning as
``reasoning_content`` deltas (the DeepSeek/vLLM extension), tool calls as ``tool_calls`` deltas numbered
0, 1, 2 in the order the calls begin (not by canonical block index): the first delta of a call carries
its id, type and name with ``arguments: ""``, later ones only arguments. A chunk with ``finish_reason``
follows, then (when the client asked for ``stream_options.include_usage``) the usage chunk with
``choices: []``, then ``data: [DONE]``. Thinking signatures and redacted thinking have no place on this
wire and are dropped.
"""

from __future__ import annotations

import time

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    Finish,
    ImagePart,
    MessageStart,
    Part,
    SignatureDelta,
    StopReason,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ToolArgumentsDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
    UsageUpdate,
)

__all__ = [
    "FINISH_REASONS",
    "OpenAIStreamEncoder",
    "canonical_to_openai_response",
    "encode_error",
    "openai_usage_body",
]

# canonical → OpenAI finish_reason (canonical.StopReason's table).
FINISH_REASONS: dict[StopReason | None, str] = {
    StopReason.STOP: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.LENGTH: "length",
    StopReason.TOOL_CALLS: "tool_calls",
    StopReason.CONTENT_FILTER: "content_filter",
    StopReason.OTHER: "stop",
    None: "stop",
}

_DONE = b"data: [DONE]\n\n"


# --- the answer body ---------------------------------------------------------------------------------


def openai_usage_body(usage: Usage) -> dict[str, object]:
    """An OpenAI ``usage`` object (``CompletionUsage``) for canonical usage."""
    details: dict[str, int] = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def completion_id(upstream_id: str) -> str:
    """An OpenAI-style ``chatcmpl-`` id for an upstream's answer id."""
    return upstream_id if upstream_id.startswith("chatcmpl-") else f"chatcmpl-{upstream_id}"


def _message(parts: list[Part]) -> dict[str, object]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, object]] = []
    for part in parts:
        match part:
            case TextPart(text=text):
                texts.append(text)
            case ThinkingPart(text=text):
                thinking.append(text)  # the signature has no place on OpenAI's wire
            case ToolCallPart(id=call_id, name=name, arguments=arguments):
                calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
            case ImagePart() | ToolResultPart():
                raise GatewayError(
                    ErrorType.UPSTREAM_ERROR,
                    f"The upstream answered with a {type(part).__name__}, which a chat completion cannot carry.",
                )
    message: dict[str, object] = {
        "role": "assistant",
        "content": None if calls and not texts else "".join(texts),
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


def canonical_to_openai_response(resp: ChatResponse, request: ChatRequest) -> bytes:
    """The ``chat.completion`` JSON body for a canonical answer, named with the client's model."""
    body = {
        "id": completion_id(resp.id),
        "object": "chat.completion",
        "created": resp.created or int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": _message(resp.parts),
                "logprobs": None,
                "finish_reason": FINISH_REASONS[resp.stop_reason],
            }
        ],
        "usage": None if resp.usage is None else openai_usage_body(resp.usage),
    }
    return orjson.dumps(body)


def encode_error(err: GatewayError, request_id: str | None) -> bytes:
    """The OpenAI-shaped error body (``GatewayError.to_body``); the status stays ``err.status``."""
    return orjson.dumps(err.to_body(request_id))


# --- the stream ---


class OpenAIStreamEncoder:
    """Canonical events → OpenAI chunks; one per request.

    Args:
        request: The client's request (its ``model`` names every chunk; ``include_usage`` asks for the usage chunk).
        response_id: The completion id; by default the ``MessageStart`` id, prefixed ``chatcmpl-``.
        created: Unix seconds for every chunk; by default the time the encoder was made.
    """

    __slots__ = ("_request", "_id", "_created", "_head", "_started", "_finished", "_closed", "_tools", "_usage")

    def __init__(self, request: ChatRequest, response_id: str | None = None, created: int | None = None) -> None:
        self._request = request
        self._id = response_id
        self._created = int(time.time()) if created is None else created
        self._head = b""  # every chunk's bytes up to the delta, built once
        self._started = False
        self._finished = False
        self._closed = False
        self._tools: dict[int, int] = {}  # canonical block index → OpenAI tool_calls index
        self._usage: Usage | None = None

    def _chunk_head(self) -> bytes:
        if not self._head:
            head = orjson.dumps(
                {
                    "id": completion_id(self._id or "keyrelay"),
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._request.model,
                }
            )
            self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'
        return self._head

    def _delta(self, delta: dict[str, object], finish: str | None = None) -> bytes:
        tail = (
            b',"logprobs":null,"finish_reason":null}]}\n\n'
            if finish is None
            else (b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]}\n\n')
        )
        return self._chunk_head() + orjson.dumps(delta) + tail

    def _start(self) -> bytes:
        self._started = True
        return self._delta({"role": "assistant", "content": ""})

    def events(self, events: list[StreamEvent]) -> bytes:
        """The chunks for these events."""
        out: list[bytes] = []
        for event in events:
            if self._closed:
                break
            if not self._started:
                if isinstance(event, MessageStart) and self._id is None:
                    self._id = event.id
                out.append(self._start())
            out.append(self._event(event))
        return b"".join(out)

    def _event(self, event: StreamEvent) -> bytes:
        match event:
            case TextDelta(text=text) if text:
                return self._delta({"content": text})
            case ThinkingDelta(text=text) if text:
                return self._delta({"reasoning_content": text})
            case ToolArgumentsDelta(index=index, partial_json=partial) if partial and index in self._tools:
                return self._delta({"tool_calls": [{"index": self._tools[index], "function": {"arguments": partial}}]})
            case BlockStart(index=index, part=part):
                return self._block_start(index, part)
            case Finish(stop_reason=reason) if not self._finished:
                self._finished = True
                return self._delta({}, FINISH_REASONS[reason])
            case UsageUpdate(usage=usage):
                self._usage = usage
            case StreamError(message=message):
                return self.error(GatewayError(ErrorType.UPSTREAM_ERROR, message))
            case MessageStart() | BlockStop() | SignatureDelta() | TextDelta() | ThinkingDelta():
                pass  # no frame of their own (signatures have no place on this wire)
            case ToolArgumentsDelta() | Finish():
                pass  # empty arguments; a second Finish
        return b""

    def _block_start(self, index: int, part: TextPart | ThinkingPart | ToolCallPart) -> bytes:
        match part:
            case ToolCallPart(id=call_id, name=name, arguments=arguments):
                self._tools[index] = position = len(self._tools)
                call = {
                    "index": position,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                return self._delta({"tool_calls": [call]})
            case TextPart(text=text) if text:
                return self._delta({"content": text})
            case ThinkingPart(text=text) if text:
                return self._delta({"reasoning_content": text})
        return b""

    def end(self, usage: Usage | None) -> bytes:
        """The closing chunks: a finish chunk if none was sent, the usage chunk when asked for, ``[DONE]``."""
        if self._closed:
            return b""
        self._closed = True
        out = [] if self._started else [self._start()]
        if not self._finished:
            out.append(self._delta({}, "stop"))
        usage = usage or self._usage
        if self._request.include_usage and usage is not None:
            head = self._chunk_head()
            out.append(
                head[: -len(b'[{"index":0,"delta":')]
                + b'[],"usage":'
                + orjson.dumps(openai_usage_body(usage))
                + b"}\n\n"
            )
        out.append(_DONE)
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        """``data: {"error": ...}`` (the body ``GatewayError.to_body`` gives) and no ``[DONE]``."""
        if self._closed:
            return b""
        self._closed = True
        return b"data: " + orjson.dumps(err.to_body()) + b"\n\n"
