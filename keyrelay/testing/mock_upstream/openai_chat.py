"""Chat Completions bodies of the mock's OpenAI wire: a request read as a Turn, a Plan written as JSON or SSE.

The :class:`~.behaviour.Plan` is written as a ``chat.completion`` or as ``chat.completion.chunk`` SSE frames.

Tool calls are ``message.tool_calls`` (``finish_reason: "tool_calls"``, ``content: null``), streamed as a first
delta with the call's id and name and then its arguments in several pieces; reasoning (``reasoning_effort`` set
to anything but ``"none"``) shows only as ``completion_tokens_details.reasoning_tokens``; cache reads are
``prompt_tokens_details.cached_tokens``; ``safety`` gives ``finish_reason: "content_filter"`` with no content;
``response_format: {"type": "json_schema", "json_schema": {"schema": ...}}`` asks for structured output (the
content is then the JSON the schema asks for, see :mod:`.behaviour`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import orjson

from keyrelay.testing.mock_upstream.behaviour import Plan, Tool, Turn
from keyrelay.testing.mock_upstream.core import content_chunks_before_fault, new_id

SYSTEM_FINGERPRINT: Final = "fp_kr0mock01"
FINISH_REASONS: Final = {
    "stop": "stop",
    "length": "length",
    "stop_sequence": "stop",
    "tool_calls": "tool_calls",
    "safety": "content_filter",
}
STREAM_ERROR: Final = {
    "message": "The server had an error while processing your request. (keyrelay mock fault injection)",
    "type": "server_error",
    "param": None,
    "code": None,
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    """The offered function tools, the forced one's name, and whether tool calls are disabled (any JSON: no error)."""
    raw = body.get("tools")
    tools = []
    for entry in raw if isinstance(raw, list) else []:
        function = entry.get("function") if isinstance(entry, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            tools.append(Tool(function["name"], function.get("parameters")))
    choice = body.get("tool_choice")
    function = choice.get("function") if isinstance(choice, dict) else None
    forced = function.get("name") if isinstance(function, dict) else None
    return tuple(tools), forced if isinstance(forced, str) else None, choice == "none"


def _tool_results(messages: list[Any]) -> tuple[str, ...] | None:
    """The contents of the trailing ``tool`` messages, when the conversation ends with some."""
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, _text(message.get("content")))
    return tuple(results) if results else None


def _json_schema(body: dict[str, Any]) -> Any:
    """The schema of ``response_format: {"type": "json_schema", "json_schema": {"schema": ...}}``, else ``None``."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    return spec.get("schema") if isinstance(spec, dict) else None


def openai_turn(
    model: str, body: dict[str, Any], messages: list[Any], limit: int | None, prompt: int, words: int
) -> Turn:
    """Read a (validated) Chat Completions body into a :class:`Turn`."""
    tools, forced, disabled = _tools(body)
    stop = body.get("stop")
    stops = (
        (stop,)
        if isinstance(stop, str)
        else tuple(s for s in stop if isinstance(s, str))
        if isinstance(stop, list)
        else ()
    )
    effort = body.get("reasoning_effort")
    return Turn(
        model=model,
        prompt_tokens=prompt,
        limit=limit,
        stop=stops,
        tools=tools,
        forced_tool=forced,
        tools_disabled=disabled,
        tool_results=_tool_results(messages),
        thinking=isinstance(effort, str) and effort != "none",
        reply_words=words,
        json_schema=_json_schema(body),
    )


def openai_usage(plan: Plan) -> dict[str, Any]:
    """A chat ``usage`` object as OpenAI sends it (cached and reasoning tokens are parts of the totals)."""
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.output_tokens,
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.thinking_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _call_ids(plan: Plan) -> list[str]:
    return [f"call_{new_id()}" for _ in plan.tool_calls]


def completion(model: str, plan: Plan, created: int, *, usage: bool) -> dict[str, Any]:
    """The ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []}
    if plan.tool_calls or plan.finish == "safety":
        message["content"] = None
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
            for call_id, call in zip(_call_ids(plan), plan.tool_calls, strict=True)
        ]
    result: dict[str, Any] = {
        "id": f"chatcmpl-{new_id()}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_REASONS[plan.finish]}],
    }
    if usage:
        result["usage"] = openai_usage(plan)
    result["service_tier"] = "default"
    result["system_fingerprint"] = SYSTEM_FINGERPRINT
    return result


def _deltas(plan: Plan) -> Iterator[dict[str, Any]]:
    """The content deltas after the role chunk: one per text piece, then each tool call's head and argument pieces."""
    for piece in plan.pieces:
        yield {"content": piece}
    for index, (call_id, call) in enumerate(zip(_call_ids(plan), plan.tool_calls, strict=True)):
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield {"tool_calls": [head]}
        for piece in call.pieces():
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def chunk_frames(
    model: str, plan: Plan, created: int, *, include_usage: bool, null_usage: bool, cut: bool, error: bool
) -> Iterator[bytes]:
    """The SSE frames of a streamed completion, lazily (``[DONE]`` is the caller's).

    Role chunk, the deltas, the finish chunk, then the usage-only chunk when ``include_usage``. Every chunk carries
    ``"usage": null`` when ``null_usage``. With ``cut`` / ``error``, stops after the role chunk and 3 deltas (then an
    ``{"error": ...}`` frame for ``error``); with their ``early-`` forms, before the role chunk.
    """
    chunk_id = f"chatcmpl-{new_id()}"

    def frame(choices: list[dict[str, Any]], usage_value: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if null_usage or usage_value is not None:
            chunk["usage"] = usage_value
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(delta: dict[str, Any], reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]

    content = None if plan.tool_calls else ""
    before = content_chunks_before_fault(model)
    if not ((cut or error) and before == 0):  # the early faults come before any event
        yield frame(choice({"role": "assistant", "content": content, "refusal": None}))
    for index, delta in enumerate(_deltas(plan)):
        if (cut or error) and index == before:
            break
        yield frame(choice(delta))
    else:
        if not (cut or error):
            yield frame(choice({}, FINISH_REASONS[plan.finish]))
            if include_usage:
                yield frame([], openai_usage(plan))
            return
    if error:
        yield b"data: " + orjson.dumps({"error": STREAM_ERROR}) + b"\n\n"
