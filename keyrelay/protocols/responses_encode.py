"""Canonical answer → what an OpenAI Responses client of another wire receives: the ``response`` object and stream.

References: https://platform.openai.com/docs/api-reference/responses/object and
https://platform.openai.com/docs/api-reference/responses-streaming, with the ``openai`` SDK's
``types/responses`` (``response.py``, ``response_stream_event.py``) for the exact field sets.

Output items, in the order of the canonical parts: a ``ThinkingPart`` is a ``reasoning`` item (its text as
a ``summary_text`` when the client asked for ``reasoning.summary``; text and signature sealed in
``encrypted_content`` when the client asked for it with ``include: ["reasoning.encrypted_content"]``, as
stateless clients such as Codex CLI do, so that it can be sent back: ``protocols/responses.py``), text a
``message`` item with one ``output_text`` part, a tool call a ``function_call`` item, or a
``custom_tool_call`` item when the tool was a ``custom`` one (its input unwrapped from ``{"input": ...}``).

The stream: ``response.created`` and ``response.in_progress``; per item ``response.output_item.added``, its
parts' events and ``response.output_item.done``; then exactly one terminal event, ``response.completed``,
``response.incomplete`` (cut by the output limit or a content filter) or ``response.failed`` (with
``error.code``). Every event carries ``sequence_number``, from 0. A custom tool's input is sent whole in
one ``response.custom_tool_call_input.delta`` when its call is complete (the upstream streams it as JSON).
"""

from __future__ import annotations

import random
import string
import time
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import InboundRequest
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    Finish,
    ImagePart,
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
from keyrelay.protocols.responses import seal_reasoning
from keyrelay.protocols.responses_translate import free_form_input, wants_summary

__all__ = [
    "ResponsesStreamEncoder",
    "canonical_to_responses_response",
    "encode_error",
    "failed_event",
    "response_id",
    "responses_usage_body",
]

_OBFUSCATION_ALPHABET = string.ascii_letters + string.digits
# Why a response is incomplete (``incomplete_details.reason``), by canonical stop reason.
_INCOMPLETE: dict[StopReason | None, str] = {
    StopReason.LENGTH: "max_output_tokens",
    StopReason.CONTENT_FILTER: "content_filter",
}
# ``error.code`` of a failed response (the SDK's ``ResponseError.code`` values), by keyrelay error type.
_FAILED_CODES = {
    ErrorType.RATE_LIMIT_EXCEEDED: "rate_limit_exceeded",
    ErrorType.UPSTREAM_RATE_LIMITED: "rate_limit_exceeded",
    ErrorType.API_KEY_QUOTA_EXHAUSTED: "rate_limit_exceeded",
    ErrorType.INVALID_REQUEST: "invalid_prompt",
}


def response_id(upstream_id: str) -> str:
    """A ``resp_`` id for an upstream answer's (or a request's) id."""
    return upstream_id if upstream_id.startswith("resp_") else f"resp_{upstream_id}"


def responses_usage_body(usage: Usage) -> dict[str, object]:
    """A Responses ``usage`` object (``ResponseUsage``) for canonical usage (cache writes only when some)."""
    details: dict[str, int] = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": details,
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def obfuscation(delta: str) -> str:
    """Random letters and digits padding a delta's length to a multiple of 16 (at least one character).

    OpenAI adds this ``obfuscation`` field to every delta event against length side channels, unless the request
    sets ``stream_options.include_obfuscation: false``; keyrelay does the same on the streams it writes.
    """
    return "".join(random.choices(_OBFUSCATION_ALPHABET, k=16 - len(delta) % 16))


def encode_error(err: GatewayError, request_id: str | None) -> bytes:
    """The error body of a refused request: OpenAI's shape (``GatewayError.to_body``), as the Responses API uses."""
    return orjson.dumps(err.to_body(request_id))


def failed_event(err: GatewayError, sequence_number: int, response: dict[str, object] | None = None) -> bytes:
    """A ``response.failed`` event: ``response`` (the one created, when known) failed with ``err``."""
    body: dict[str, object] = dict(response) if response is not None else {"id": "resp_failed", "object": "response"}
    body["status"] = "failed"
    body["error"] = {"code": _FAILED_CODES.get(err.error_type, "server_error"), "message": err.message}
    event = {"type": "response.failed", "sequence_number": sequence_number, "response": body}
    return b"event: response.failed\ndata: " + orjson.dumps(event) + b"\n\n"


# --- the response object ----------------------------------------------------------------------------


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _Shape:
    """What every response object of one request repeats: the client's settings, echoed as the API does."""

    __slots__ = ("fields", "summary", "free_form", "obfuscate", "sealed")

    def __init__(self, canonical: ChatRequest, request: InboundRequest) -> None:
        body = request.body
        reasoning = _dict(body.get("reasoning"))
        text = _dict(body.get("text"))
        self.summary = wants_summary(body)
        self.free_form = frozenset(tool.name for tool in canonical.tools if tool.free_form)
        self.obfuscate = _dict(body.get("stream_options")).get("include_obfuscation") is not False
        include = body.get("include")
        self.sealed = isinstance(include, list) and "reasoning.encrypted_content" in include
        self.fields: dict[str, object] = {
            "background": False,
            "completed_at": None,
            "error": None,
            "frequency_penalty": 0.0,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": canonical.model,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "presence_penalty": 0.0,
            "previous_response_id": None,
            "prompt_cache_key": body.get("prompt_cache_key"),
            "prompt_cache_retention": body.get("prompt_cache_retention"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default",
            "store": False,  # keyrelay stores no response, whatever the client asked
            "temperature": body.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity", "medium")},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def response(
        self,
        rid: str,
        created_at: int,
        status: str,
        output: list[dict[str, object]],
        usage: Usage | None,
        incomplete: str | None = None,
    ) -> dict[str, object]:
        body: dict[str, object] = {"id": rid, "object": "response", "created_at": created_at, "status": status}
        body.update(self.fields)
        body["output"] = output
        body["usage"] = None if usage is None else responses_usage_body(usage)
        if incomplete is not None:
            body["incomplete_details"] = {"reason": incomplete}
        if status == "completed":
            body["completed_at"] = int(time.time())
        return body


def _status(stop_reason: StopReason | None) -> tuple[str, str | None]:
    reason = _INCOMPLETE.get(stop_reason)
    return ("incomplete", reason) if reason is not None else ("completed", None)


def _output_text(text: str) -> dict[str, object]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _reasoning_item(item_id: str, part: ThinkingPart, shape: _Shape) -> dict[str, object]:
    shown = shape.summary and part.text
    item: dict[str, object] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": part.text}] if shown else [],
    }
    if shape.sealed:
        item["encrypted_content"] = seal_reasoning(part)
    return item


def _call_item(item_id: str, part: ToolCallPart, free_form: frozenset[str], status: str) -> dict[str, object]:
    if part.name in free_form:
        return {
            "id": item_id,
            "type": "custom_tool_call",
            "status": status,
            "call_id": part.id,
            "name": part.name,
            "input": free_form_input(part.arguments),
        }
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": part.arguments,
        "call_id": part.id,
        "name": part.name,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, object]:
    return {"id": item_id, "type": "message", "status": status, "content": [_output_text(text)], "role": "assistant"}


def _output(parts: list[Part], base: str, shape: _Shape, status: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    texts: list[str] = []

    def close_text() -> None:
        if texts:
            items.append(_message_item(f"msg_{base}{len(items)}", "".join(texts), "completed"))
            texts.clear()

    for part in parts:
        match part:
            case TextPart(text=text):
                texts.append(text)
            case ThinkingPart():
                close_text()
                items.append(_reasoning_item(f"rs_{base}{len(items)}", part, shape))
            case ToolCallPart():
                close_text()
                prefix = "ctc" if part.name in shape.free_form else "fc"
                items.append(_call_item(f"{prefix}_{base}{len(items)}", part, shape.free_form, "completed"))
            case ImagePart() | ToolResultPart():
                raise GatewayError(
                    ErrorType.UPSTREAM_ERROR,
                    f"The upstream answered with a {type(part).__name__}, which a response cannot carry.",
                )
    close_text()
    if status == "incomplete" and items and items[-1]["type"] == "message":
        items[-1]["status"] = "incomplete"  # the message the output limit cut
    return items


def canonical_to_responses_response(resp: ChatResponse, canonical: ChatRequest, request: InboundRequest) -> bytes:
    """The ``response`` JSON body for a canonical answer, named with the client's model."""
    shape = _Shape(canonical, request)
    rid = response_id(resp.id)
    status, incomplete = _status(resp.stop_reason)
    output = _output(resp.parts, rid.removeprefix("resp_"), shape, status)
    created = resp.created or int(time.time())
    return orjson.dumps(shape.response(rid, created, status, output, resp.usage, incomplete))


# --- the stream ---


class _Item:
    """An output item being streamed: its place, its id, and what has arrived of it."""

    __slots__ = ("index", "item_id", "part", "chunks", "signature", "summary_open")

    def __init__(self, index: int, item_id: str, part: TextPart | ThinkingPart | ToolCallPart) -> None:
        self.index = index
        self.item_id = item_id
        self.part = part
        self.chunks: list[str] = []  # text, reasoning text or arguments
        self.signature: str | None = None
        self.summary_open = False  # a reasoning item's summary part was added (with its first text)


class ResponsesStreamEncoder:
    """Canonical events → Responses stream events; one per request.

    Args:
        canonical: The canonical request (its ``model`` names the response; its free-form tools).
        request: The client's judged request (the settings the response object echoes).
        rid: The response id, ``resp_``-prefixed when it is not already.
        created_at: Unix seconds of the response; by default the time the encoder was made.
    """

    def __init__(
        self, canonical: ChatRequest, request: InboundRequest, rid: str, created_at: int | None = None
    ) -> None:
        self._shape = _Shape(canonical, request)
        self._id = response_id(rid)
        self._base = self._id.removeprefix("resp_")
        self._created = int(time.time()) if created_at is None else created_at
        self._sequence = 0
        self._started = False
        self._closed = False
        self._items: dict[int, _Item] = {}  # canonical block index → the item it streams
        self._output: list[dict[str, object]] = []  # done items, in order
        self._usage: Usage | None = None
        self._stop: StopReason | None = None
        # The item whose block stopped, held until the stop reason says whether it was cut (``incomplete``).
        self._closing: _Item | None = None

    def _event(self, kind: str, fields: dict[str, object]) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _response(self, status: str, incomplete: str | None = None) -> dict[str, object]:
        return self._shape.response(self._id, self._created, status, list(self._output), self._usage, incomplete)

    def _start(self) -> bytes:
        self._started = True
        created = self._event("response.created", {"response": self._response("in_progress")})
        return created + self._event("response.in_progress", {"response": self._response("in_progress")})

    def events(self, events: list[StreamEvent]) -> bytes:
        """The events' frames (the first call opens the response)."""
        out: list[bytes] = []
        for event in events:
            if self._closed:
                break
            if not self._started:
                out.append(self._start())
            out.append(self._one(event))
        return b"".join(out)

    def _one(self, event: StreamEvent) -> bytes:
        match event:
            case TextDelta(index=index, text=text) if text and index in self._items:
                return self._text_delta(self._items[index], text)
            case ThinkingDelta(index=index, text=text) if text and index in self._items:
                return self._thinking_delta(self._items[index], text)
            case SignatureDelta(index=index, signature=signature) if index in self._items:
                self._items[index].signature = signature
            case ToolArgumentsDelta(index=index, partial_json=partial) if partial and index in self._items:
                return self._arguments_delta(self._items[index], partial)
            case BlockStart(index=index, part=part):
                return self._flush() + self._block_start(index, part)
            case BlockStop(index=index) if index in self._items:
                out = self._flush()
                self._closing = self._items.pop(index)
                return out
            case Finish(stop_reason=reason):
                self._stop = reason
                return self._flush()
            case UsageUpdate(usage=usage):
                self._usage = usage
            case StreamError(message=message):
                return self.error(GatewayError(ErrorType.UPSTREAM_ERROR, message))
            case _:
                pass  # MessageStart, empty deltas, deltas of unknown blocks: no frame of their own
        return b""

    def _block_start(self, index: int, part: TextPart | ThinkingPart | ToolCallPart) -> bytes:
        position = len(self._output) + len(self._items)
        match part:
            case TextPart():
                item = _Item(position, f"msg_{self._base}{position}", part)
                self._items[index] = item
                added = self._event(
                    "response.output_item.added",
                    {
                        "output_index": position,
                        "item": {
                            "id": item.item_id,
                            "type": "message",
                            "status": "in_progress",
                            "content": [],
                            "role": "assistant",
                        },
                    },
                )
                out = added + self._event(
                    "response.content_part.added", {**self._place(item), "part": _output_text("")}
                )
                return out + (self._text_delta(item, part.text) if part.text else b"")
            case ThinkingPart():
                item = _Item(position, f"rs_{self._base}{position}", part)
                item.signature = part.signature
                self._items[index] = item
                added = self._event(
                    "response.output_item.added",
                    {"output_index": position, "item": {"id": item.item_id, "type": "reasoning", "summary": []}},
                )
                return added + (self._thinking_delta(item, part.text) if part.text else b"")
            case ToolCallPart():
                free_form = part.name in self._shape.free_form
                item = _Item(position, f"{'ctc' if free_form else 'fc'}_{self._base}{position}", part)
                self._items[index] = item
                opened = _call_item(item.item_id, part, self._shape.free_form, "in_progress")
                if free_form:
                    opened["input"] = ""
                else:
                    opened["arguments"] = ""
                out = self._event("response.output_item.added", {"output_index": position, "item": opened})
                return out + (self._arguments_delta(item, part.arguments) if part.arguments else b"")

    def _place(self, item: _Item) -> dict[str, object]:
        return {"item_id": item.item_id, "output_index": item.index, "content_index": 0}

    def _summary_place(self, item: _Item) -> dict[str, object]:
        return {"item_id": item.item_id, "output_index": item.index, "summary_index": 0}

    def _delta(self, kind: str, fields: dict[str, object], delta: str) -> bytes:
        """A delta event, padded with ``obfuscation`` as the API pads them unless the client opted out."""
        if self._shape.obfuscate:
            fields["obfuscation"] = obfuscation(delta)
        return self._event(kind, {**fields, "delta": delta})

    def _text_delta(self, item: _Item, text: str) -> bytes:
        item.chunks.append(text)
        return self._delta("response.output_text.delta", {**self._place(item), "logprobs": []}, text)

    def _thinking_delta(self, item: _Item, text: str) -> bytes:
        """Reasoning text: shown as the summary when the client asked for one (its part opened with the first)."""
        item.chunks.append(text)
        part = item.part
        if not self._shape.summary or (isinstance(part, ThinkingPart) and part.redacted is not None):
            return b""
        opened = b""
        if not item.summary_open:
            item.summary_open = True
            opened = self._event(
                "response.reasoning_summary_part.added",
                {**self._summary_place(item), "part": {"type": "summary_text", "text": ""}},
            )
        return opened + self._delta("response.reasoning_summary_text.delta", self._summary_place(item), text)

    def _arguments_delta(self, item: _Item, partial: str) -> bytes:
        item.chunks.append(partial)
        part = item.part
        if isinstance(part, ToolCallPart) and part.name in self._shape.free_form:
            return b""  # JSON around the input: sent unwrapped, whole, when the call is complete
        return self._delta(
            "response.function_call_arguments.delta", {"item_id": item.item_id, "output_index": item.index}, partial
        )

    def _flush(self) -> bytes:
        """The done events of the item held since its block stopped (incomplete if the answer was cut)."""
        item, self._closing = self._closing, None
        if item is None:
            return b""
        return self._block_stop(item, "incomplete" if self._stop in _INCOMPLETE else "completed")

    def _block_stop(self, item: _Item, status: str = "completed") -> bytes:
        joined = "".join(item.chunks)
        part = item.part
        out: list[bytes] = []
        done: dict[str, object]
        match part:
            case TextPart():
                out.append(
                    self._event("response.output_text.done", {**self._place(item), "text": joined, "logprobs": []})
                )
                out.append(
                    self._event("response.content_part.done", {**self._place(item), "part": _output_text(joined)})
                )
                done = _message_item(item.item_id, joined, status)
            case ThinkingPart():
                thinking = ThinkingPart(joined, item.signature, part.redacted)
                if item.summary_open:
                    place = self._summary_place(item)
                    out.append(self._event("response.reasoning_summary_text.done", {**place, "text": joined}))
                    summary = {"type": "summary_text", "text": joined}
                    out.append(self._event("response.reasoning_summary_part.done", {**place, "part": summary}))
                done = _reasoning_item(item.item_id, thinking, self._shape)
            case ToolCallPart():
                call = ToolCallPart(part.id, part.name, joined)
                done = _call_item(item.item_id, call, self._shape.free_form, "completed")
                if done["type"] == "custom_tool_call":
                    fields = {"item_id": item.item_id, "output_index": item.index}
                    text = done["input"]
                    out.append(self._delta("response.custom_tool_call_input.delta", dict(fields), str(text)))
                    out.append(self._event("response.custom_tool_call_input.done", {**fields, "input": text}))
                else:
                    fields = {"item_id": item.item_id, "output_index": item.index, "arguments": joined}
                    out.append(self._event("response.function_call_arguments.done", fields))
        out.append(self._event("response.output_item.done", {"output_index": item.index, "item": done}))
        self._output.append(done)
        return b"".join(out)

    def end(self, usage: Usage | None) -> bytes:
        """The closing events of a complete stream: open items closed, then the terminal event."""
        if self._closed:
            return b""
        out = [] if self._started else [self._start()]
        out.append(self._flush())
        for index in sorted(self._items):
            out.append(self._block_stop(self._items[index]))
        self._items.clear()
        self._closed = True
        if usage is not None:
            self._usage = usage
        status, incomplete = _status(self._stop)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": self._response(status, incomplete)}))
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        """``response.failed`` with ``error.code``, closing the stream (the items done so far in its output)."""
        if self._closed:
            return b""
        out = self._flush() if self._started else self._start()
        self._closed = True
        response = self._response("failed")
        response["output"] = []  # as the API's failed responses (tests/data/responses/failed.sse)
        failed = failed_event(err, self._sequence, response)
        self._sequence += 1
        return out + failed
