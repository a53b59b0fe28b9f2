"""Responses API bodies of the mock: a Plan written as a ``response`` object or as its stream of events.

Output items come in the API's order: a ``reasoning`` item when the model thought (its ``summary`` only when
``reasoning.summary`` was set, its ``encrypted_content`` only when ``include`` asked for it), then the ``message``
(one ``output_text`` part), then one ``function_call`` (or ``custom_tool_call``) item per tool call. A reply cut by
``max_output_tokens`` is ``status: "incomplete"`` with ``incomplete_details.reason`` ``"max_output_tokens"`` (its
message ``"incomplete"`` too); ``safety`` / ``blocked-prompt`` give an incomplete reply with no output and the reason
``"content_filter"``; ``no-usage`` gives ``"usage": null``.

A stream is ``event: <type>`` / ``data: <json>`` frames, ``sequence_number`` counting from 0: ``response.created``,
``response.in_progress``, then per item ``response.output_item.added``, its content events (reasoning:
``response.reasoning_summary_part.added``, ``response.reasoning_summary_text.delta`` per word, ``.done``,
``response.reasoning_summary_part.done``; message: ``response.content_part.added``, ``response.output_text.delta``
per piece, ``response.output_text.done``, ``response.content_part.done``; function call:
``response.function_call_arguments.delta`` per piece and ``.done``; custom tool call:
``response.custom_tool_call_input.delta`` and ``.done``) and ``response.output_item.done``; then one terminal event,
``response.completed``, ``response.incomplete`` or ``response.failed``; no ``[DONE]``. Every delta event carries an
``obfuscation`` string (the API's default; none with ``stream_options.include_obfuscation: false``).

``stream-error`` ends the stream after 3 content deltas with ``response.failed`` (``error.code``
``"server_error"``), ``cut-stream`` aborts the connection there; their ``early-`` forms do so right after
``response.in_progress``, before any output item.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from keyrelay.testing.mock_upstream.behaviour import Plan, ToolCall
from keyrelay.testing.mock_upstream.core import FAULT_NO_USAGE, content_chunks_before_fault, new_id

CUSTOM_TOOL_INPUT: Final = "x"
"""The ``input`` of every custom tool call (custom tools have no schema to build one from)."""
STREAM_ERROR: Final = {
    "code": "server_error",
    "message": "An error occurred while processing your request. (keyrelay mock fault injection)",
}
OBFUSCATION_BLOCK: Final = 16
"""A delta event's ``delta`` and ``obfuscation`` together are a multiple of this many characters long."""
ENCRYPTED_INCLUDE: Final = "reasoning.encrypted_content"


def obfuscation(delta: str) -> str:
    """A delta event's ``obfuscation``: deterministic letters and digits padding ``delta`` to a 16-character block."""
    size = OBFUSCATION_BLOCK - len(delta) % OBFUSCATION_BLOCK
    letters = "".join(c for c in base64.b64encode(hashlib.sha256(delta.encode()).digest()).decode() if c.isalnum())
    return letters[:size]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


@dataclass
class Answer:
    """What one request answers: its plan, with the ids of the response and of its output items.

    Attributes:
        model: The requested model (echoed).
        body: The validated request body (its settings are echoed in the ``response`` object).
        plan: What the model answers.
        created: ``created_at``.
        custom_tools: The names of the custom tools (their calls are ``custom_tool_call`` items).
    """

    model: str
    body: dict[str, Any]
    plan: Plan
    created: int
    custom_tools: frozenset[str] = frozenset()
    response_id: str = field(default_factory=lambda: f"resp_{new_id()}")
    reasoning_id: str = field(default_factory=lambda: f"rs_{new_id()}")
    message_id: str = field(default_factory=lambda: f"msg_{new_id()}")
    call_ids: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Give each tool call its item id and its call id."""
        self.call_ids = [
            (f"{'ctc' if call.name in self.custom_tools else 'fc'}_{new_id()}", f"call_{new_id()}")
            for call in self.plan.tool_calls
        ]

    @property
    def reasoning(self) -> dict[str, Any]:
        """The request's ``reasoning`` object (empty when none)."""
        reasoning = self.body.get("reasoning")
        return reasoning if isinstance(reasoning, dict) else {}

    @property
    def summary(self) -> bool:
        """The reasoning item shows its summary."""
        return self.reasoning.get("summary") is not None

    @property
    def encrypted(self) -> bool:
        """The reasoning item carries its ``encrypted_content``."""
        include = self.body.get("include")
        return isinstance(include, list) and ENCRYPTED_INCLUDE in include

    @property
    def has_message(self) -> bool:
        """The output has a message item."""
        plan = self.plan
        return bool(plan.pieces) or (not plan.tool_calls and plan.finish not in ("safety", "length"))

    @property
    def status(self) -> str:
        """The final ``status``: ``completed``, or ``incomplete`` when cut by the limit or the content filter."""
        return "incomplete" if self.plan.finish in ("length", "safety") else "completed"

    @property
    def obfuscate(self) -> bool:
        """Delta events carry ``obfuscation`` (unless ``stream_options.include_obfuscation`` is false)."""
        options = self.body.get("stream_options")
        return not (isinstance(options, dict) and options.get("include_obfuscation") is False)


# ---------------------------------------------------------------------------------------------------------------------
# Output items
# ---------------------------------------------------------------------------------------------------------------------


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def _reasoning_item(answer: Answer, *, done: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"id": answer.reasoning_id, "type": "reasoning"}
    if answer.encrypted:
        item["encrypted_content"] = answer.plan.signature
    item["summary"] = [_summary_part(answer.plan.thinking)] if done and answer.summary else []
    return item


def _message_item(answer: Answer, *, done: bool) -> dict[str, Any]:
    status = ("incomplete" if answer.plan.finish == "length" else "completed") if done else "in_progress"
    content = [_text_part(answer.plan.text)] if done else []
    return {"id": answer.message_id, "type": "message", "status": status, "content": content, "role": "assistant"}


def _call_item(answer: Answer, index: int, *, done: bool) -> dict[str, Any]:
    call = answer.plan.tool_calls[index]
    item_id, call_id = answer.call_ids[index]
    status = "completed" if done else "in_progress"
    if call.name in answer.custom_tools:
        payload = CUSTOM_TOOL_INPUT if done else ""
        return {"id": item_id, "type": "custom_tool_call", "status": status, "call_id": call_id, "input": payload}
    arguments = call.arguments_json if done else ""
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id}


def _call(answer: Answer, index: int, *, done: bool) -> dict[str, Any]:
    return {**_call_item(answer, index, done=done), "name": answer.plan.tool_calls[index].name}


def output_items(answer: Answer) -> list[dict[str, Any]]:
    """The ``output`` of the finished response."""
    items = [_reasoning_item(answer, done=True)] if answer.plan.thinking else []
    if answer.has_message:
        items.append(_message_item(answer, done=True))
    items.extend(_call(answer, index, done=True) for index in range(len(answer.plan.tool_calls)))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# The response object
# ---------------------------------------------------------------------------------------------------------------------


def responses_usage(plan: Plan) -> dict[str, Any]:
    """The ``usage`` object: cached and reasoning tokens are parts of the input and output totals."""
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached_tokens},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.thinking_tokens},
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
    }


def _tool_echo(tool: Any) -> Any:
    """A tool as the response echoes it (function and custom tools with every field, others as sent)."""
    if not isinstance(tool, dict) or tool.get("type") not in ("function", "custom"):
        return tool
    description = tool.get("description")
    if tool["type"] == "custom":
        custom_format = _get(tool, "format", {"type": "text"})
        return {"type": "custom", "description": description, "format": custom_format, "name": tool["name"]}
    parameters, strict = tool.get("parameters"), _get(tool, "strict", True)
    return {
        "type": "function",
        "description": description,
        "name": tool["name"],
        "parameters": parameters,
        "strict": strict,
    }


def _text_echo(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    text = text if isinstance(text, dict) else {}
    text_format = text.get("format")
    if not isinstance(text_format, dict):
        text_format = {"type": "text"}
    elif text_format.get("type") == "json_schema":
        text_format = {
            "type": "json_schema",
            "description": text_format.get("description"),
            "name": text_format.get("name"),
            "schema": text_format.get("schema"),
            "strict": _get(text_format, "strict", False),
        }
    return {"format": text_format, "verbosity": _get(text, "verbosity", "medium")}


def _final(answer: Answer) -> dict[str, Any]:
    """The fields that change when the response finishes."""
    plan = answer.plan
    reason = {"length": "max_output_tokens", "safety": "content_filter"}.get(plan.finish)
    return {
        "status": answer.status,
        "completed_at": answer.created if answer.status == "completed" else None,
        "incomplete_details": None if reason is None else {"reason": reason},
        "output": output_items(answer),
        "usage": None if FAULT_NO_USAGE in answer.model else responses_usage(plan),
    }


def response_object(
    answer: Answer, state: dict[str, Any] | None = None, *, streamed: bool = False, final: bool = True
) -> dict[str, Any]:
    """The ``response`` object, every field the API returns, in its order.

    Args:
        answer: What the response answers.
        state: Fields replacing the finished response's (``status``, ``output``, ``usage``, ``error`` ...).
        streamed: The object goes in a stream event (no ``billing``, as the API sends it).
        final: The response has finished (else ``service_tier`` is the requested one, ``"auto"`` by default).
    """
    body = answer.body
    fields = {**_final(answer), "error": None, **(state or {})}
    tier = _get(body, "service_tier", "auto")
    response: dict[str, Any] = {
        "id": answer.response_id,
        "object": "response",
        "created_at": answer.created,
        "status": fields["status"],
        "background": _get(body, "background", False),
    }
    if not streamed:
        response["billing"] = {"payer": "developer"}
    response |= {
        "completed_at": fields["completed_at"],
        "error": fields["error"],
        "frequency_penalty": _get(body, "frequency_penalty", 0.0),
        "incomplete_details": fields["incomplete_details"],
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": answer.model,
        "output": fields["output"],
        "parallel_tool_calls": _get(body, "parallel_tool_calls", True),
        "presence_penalty": _get(body, "presence_penalty", 0.0),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": {"effort": answer.reasoning.get("effort"), "summary": answer.reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default" if final and tier == "auto" else tier,
        "store": _get(body, "store", True),
        "temperature": _get(body, "temperature", 1.0),
        "text": _text_echo(body),
        "tool_choice": _get(body, "tool_choice", "auto"),
        "tools": [_tool_echo(tool) for tool in body.get("tools") or []],
        "top_logprobs": _get(body, "top_logprobs", 0),
        "top_p": _get(body, "top_p", 1.0),
        "truncation": _get(body, "truncation", "disabled"),
        "usage": fields["usage"],
        "user": body.get("user"),
        "metadata": _get(body, "metadata", {}),
    }
    return response


# ---------------------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------------------

Event = tuple[str, dict[str, Any], bool]
"""An event: its type, its fields (without ``type`` and ``sequence_number``), and whether it is a content delta."""


def _delta(answer: Answer, kind: str, fields: dict[str, Any], delta: str) -> Event:
    """A delta event (``fields`` give its position), with its ``obfuscation`` unless turned off."""
    payload = {**fields, "delta": delta}
    if answer.obfuscate:
        payload["obfuscation"] = obfuscation(delta)
    return kind, payload, True


def _reasoning_events(answer: Answer, output_index: int) -> Iterator[Event]:
    at = {"item_id": answer.reasoning_id, "output_index": output_index}
    yield (
        "response.output_item.added",
        {"item": _reasoning_item(answer, done=False), "output_index": output_index},
        False,
    )
    if answer.summary:
        thinking = answer.plan.thinking
        yield "response.reasoning_summary_part.added", {**at, "part": _summary_part(""), "summary_index": 0}, False
        for word in _words(thinking):
            yield _delta(answer, "response.reasoning_summary_text.delta", {**at, "summary_index": 0}, word)
        yield "response.reasoning_summary_text.done", {**at, "summary_index": 0, "text": thinking}, False
        part = _summary_part(thinking)
        yield "response.reasoning_summary_part.done", {**at, "part": part, "summary_index": 0}, False
    yield "response.output_item.done", {"item": _reasoning_item(answer, done=True), "output_index": output_index}, False


def _message_events(answer: Answer, output_index: int) -> Iterator[Event]:
    at = {"item_id": answer.message_id, "output_index": output_index}
    part_at = {"content_index": 0, **at}
    text = answer.plan.text
    yield "response.output_item.added", {"item": _message_item(answer, done=False), "output_index": output_index}, False
    yield "response.content_part.added", {**part_at, "part": _text_part("")}, False
    for piece in answer.plan.pieces:
        kind, payload, _ = _delta(answer, "response.output_text.delta", part_at, piece)
        yield kind, {**payload, "logprobs": []}, True
    yield "response.output_text.done", {**part_at, "logprobs": [], "text": text}, False
    yield "response.content_part.done", {**part_at, "part": _text_part(text)}, False
    yield "response.output_item.done", {"item": _message_item(answer, done=True), "output_index": output_index}, False


def _call_events(answer: Answer, index: int, output_index: int) -> Iterator[Event]:
    call: ToolCall = answer.plan.tool_calls[index]
    at = {"item_id": answer.call_ids[index][0], "output_index": output_index}
    yield "response.output_item.added", {"item": _call(answer, index, done=False), "output_index": output_index}, False
    if call.name in answer.custom_tools:
        yield _delta(answer, "response.custom_tool_call_input.delta", at, CUSTOM_TOOL_INPUT)
        yield "response.custom_tool_call_input.done", {**at, "input": CUSTOM_TOOL_INPUT}, False
    else:
        for piece in call.pieces():
            yield _delta(answer, "response.function_call_arguments.delta", at, piece)
        yield "response.function_call_arguments.done", {**at, "arguments": call.arguments_json}, False
    yield "response.output_item.done", {"item": _call(answer, index, done=True), "output_index": output_index}, False


def _item_events(answer: Answer) -> Iterator[Event]:
    """The events of every output item, in order."""
    output_index = 0
    if answer.plan.thinking:
        yield from _reasoning_events(answer, output_index)
        output_index += 1
    if answer.has_message:
        yield from _message_events(answer, output_index)
        output_index += 1
    for index in range(len(answer.plan.tool_calls)):
        yield from _call_events(answer, index, output_index + index)


def stream_frames(answer: Answer, *, cut: bool, error: bool) -> Iterator[bytes]:
    """The SSE frames of a streamed response, lazily (``cut`` / ``error``: see the module docstring)."""
    numbers = itertools.count()

    def frame(kind: str, payload: dict[str, Any]) -> bytes:
        event = {"type": kind, **payload, "sequence_number": next(numbers)}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    pending: dict[str, Any] = {
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    started = response_object(answer, pending, streamed=True, final=False)
    yield frame("response.created", {"response": started})
    yield frame("response.in_progress", {"response": started})
    before = content_chunks_before_fault(answer.model)
    deltas = 0
    for kind, payload, is_delta in _item_events(answer):
        if (cut or error) and deltas == before:
            break
        yield frame(kind, payload)
        deltas += is_delta
    if cut:
        return
    if error:
        failed = {**pending, "status": "failed", "error": STREAM_ERROR}
        yield frame("response.failed", {"response": response_object(answer, failed, streamed=True)})
        return
    terminal = "response.completed" if answer.status == "completed" else "response.incomplete"
    yield frame(terminal, {"response": response_object(answer, streamed=True)})
