"""The Anthropic Messages wire of the mock upstream: ``/v1/messages``, ``count_tokens``, the model list, errors.

* ``POST /v1/messages`` -- a ``message`` object, or with ``"stream": true`` the SSE events ``message_start``,
  ``content_block_start`` / ``ping`` / ``content_block_delta`` (``thinking_delta``, ``signature_delta``,
  ``text_delta``, ``input_json_delta``) / ``content_block_stop``, ``message_delta`` and ``message_stop``;
* ``POST /v1/messages/count_tokens`` -- ``{"input_tokens": N}``, the same N that ``/v1/messages`` reports as its
  whole prompt (``input_tokens`` + cache reads + cache writes);
* ``GET /v1/models`` (and ``/v1/models/{id}``) when the request carries ``anthropic-version`` -- Anthropic's list
  shape (see :mod:`.server`).

Requests need ``anthropic-version`` (else 400) and, when the mock expects a key, ``x-api-key`` (or
``Authorization: Bearer``, which the API accepts too and the ``anthropic`` SDK 2.x sends). Errors are
``{"type": "error", "error": {"type", "message"}, "request_id"}``. Prompt tokens: ``ceil(B / 4) + 3 * turns`` where
``B`` counts the UTF-8 bytes of the system text, the text blocks and the tool results' text, and ``turns`` is
``len(messages)``. ``output_config: {"format": {"type": "json_schema", "schema": ...}}`` asks for structured output
(the text block is then the JSON the schema asks for, see :mod:`.behaviour`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import orjson
from aiohttp import web

from keyrelay.testing.mock_upstream.behaviour import Plan, Tool, Turn, plan_reply
from keyrelay.testing.mock_upstream.core import (
    FAULT_CUT_STREAM,
    FAULT_PROMPT_TOO_LONG,
    FAULT_STREAM_ERROR,
    INVALID_JSON,
    MockState,
    abort_connection,
    content_chunks_before_fault,
    fault_status,
    json_response,
    new_id,
    redirect_fault,
    text_tokens,
)

ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
"""Anthropic's error type for each status (other 4xx: ``invalid_request_error``, other 5xx: ``api_error``)."""
STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_calls": "tool_use",
    "safety": "refusal",
}
PROMPT_TOO_LONG_MESSAGE: Final = "prompt is too long: 200001 tokens > 200000 maximum"
MODEL_CREATED_AT: Final = "2025-01-01T00:00:00Z"
_PING: Final = b'event: ping\ndata: {"type": "ping"}\n\n'


def error_type(status: int) -> str:
    """Anthropic's error type string for an HTTP status."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An Anthropic error response, with the same id in its ``request-id`` header and body."""
    request_id = f"req_{new_id()}"
    body = {"type": "error", "error": {"type": error_type(status), "message": message}, "request_id": request_id}
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"request-id": request_id, **(headers or {})},
    )


def _fault_error(model: str) -> web.Response | None:
    """The error a ``fail-NNN`` / ``prompt-too-long`` / ``redirect-3NN`` model name asks for, if any."""
    if FAULT_PROMPT_TOO_LONG in model:
        return error_response(400, PROMPT_TOO_LONG_MESSAGE)
    status = fault_status(model)
    if status == 429:
        return error_response(
            429,
            "Number of request tokens has exceeded your per-minute rate limit (keyrelay mock fault injection)",
            headers={"retry-after": "1", "anthropic-ratelimit-requests-remaining": "0"},
        )
    if status == 529:
        return error_response(529, "Overloaded")
    if status is not None:
        return error_response(status, f"Mock failure {status} for model {model} (keyrelay mock fault injection)")
    return redirect_fault(model)


def _text_bytes(content: Any) -> int:
    """UTF-8 bytes of a content (string or blocks): text blocks, and tool results' string or text-block content."""
    if isinstance(content, str):
        return len(content.encode())
    total = 0
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            text = block.get("text")
            if isinstance(text, str):
                total += len(text.encode())
            elif block.get("type") == "tool_result":
                total += _text_bytes(block.get("content"))
    return total


def count_anthropic_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of a Messages (or count_tokens) body, by the mock's rule (see the module docstring)."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    total = _text_bytes(body.get("system"))
    for message in messages:
        if isinstance(message, dict):
            total += _text_bytes(message.get("content"))
    return text_tokens(total, len(messages))


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _tool_results(messages: list[Any]) -> tuple[str, ...] | None:
    """The last user turn's tool results, when the conversation ends with some."""
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) and last.get("role") == "user" else None
    if not isinstance(content, list):
        return None
    results = [
        _tool_result_text(b.get("content")) for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    return tuple(results) if results else None


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    """The offered tools, the forced tool's name and whether tool use is disabled."""
    raw = body.get("tools")
    tools = tuple(
        Tool(t["name"], t.get("input_schema"))
        for t in (raw if isinstance(raw, list) else [])
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    )
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    forced = choice.get("name") if isinstance(choice, dict) and kind == "tool" else None
    return tools, forced if isinstance(forced, str) else None, kind == "none"


def _invalid(message: str) -> web.Response:
    return error_response(400, message)


def _parse(body: Any, *, count_only: bool) -> tuple[str, dict[str, Any]] | web.Response:
    """Validate the fields the mock needs, as the API does; return ``(model, body)`` or a 400."""
    if body is INVALID_JSON or not isinstance(body, dict):
        return _invalid("There was an error parsing the body of your request: invalid JSON")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return _invalid("messages: Field required" if messages is None else "messages: Input should be a valid list")
    if count_only:
        return model, body
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        return _invalid(
            "max_tokens: Field required" if max_tokens is None else "max_tokens: Input should be an integer"
        )
    if max_tokens < 1:
        return _invalid("max_tokens: Input should be greater than or equal to 1")
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return _invalid("stop_sequences: Input should be a valid list")
    return model, body


def _json_schema(body: dict[str, Any]) -> Any:
    """The schema of ``output_config: {"format": {"type": "json_schema", "schema": ...}}``, else ``None``."""
    config = body.get("output_config")
    output_format = config.get("format") if isinstance(config, dict) else None
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        return None
    return output_format.get("schema")


def _turn(model: str, body: dict[str, Any], reply_words: int) -> Turn:
    tools, forced, disabled = _tools(body)
    thinking = body.get("thinking")
    return Turn(
        model=model,
        prompt_tokens=count_anthropic_tokens(body),
        limit=body["max_tokens"],
        stop=tuple(body.get("stop_sequences") or ()),
        tools=tools,
        forced_tool=forced,
        tools_disabled=disabled,
        tool_results=_tool_results(body["messages"]),
        thinking=isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
        reply_words=reply_words,
        json_schema=_json_schema(body),
    )


def anthropic_usage(plan: Plan, *, output_tokens: int | None = None) -> dict[str, Any]:
    """A ``usage`` object: ``input_tokens`` excludes the cache reads and writes, reported beside it."""
    return {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens,
        "cache_creation_input_tokens": plan.cache_write_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": plan.output_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }


def _blocks(plan: Plan) -> list[dict[str, Any]]:
    """The content blocks of the message, with ids for the tool calls."""
    blocks: list[dict[str, Any]] = []
    if plan.thinking:
        blocks.append({"type": "thinking", "thinking": plan.thinking, "signature": plan.signature})
    if plan.pieces or (plan.finish != "safety" and not plan.tool_calls):
        blocks.append({"type": "text", "text": plan.text})
    for call in plan.tool_calls:
        blocks.append({"type": "tool_use", "id": f"toolu_{new_id()}", "name": call.name, "input": call.arguments})
    return blocks


def _message(model: str, plan: Plan, content: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
    return {
        "id": f"msg_{new_id()}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS[plan.finish] if final else None,
        "stop_sequence": plan.stop_sequence if final else None,
        "usage": anthropic_usage(plan, output_tokens=None if final else 1),
    }


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def _block_events(index: int, block: dict[str, Any], plan: Plan) -> Iterator[tuple[bytes, bool]]:
    """The events of one content block; the flag marks content deltas (counted by ``cut-stream``)."""
    kind = block["type"]
    if kind == "thinking":
        start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": w} for w in _word_pieces(plan.thinking)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in plan.pieces]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        call = next(c for c in plan.tool_calls if c.name == block["name"] and c.arguments == block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in call.pieces()]
    yield _event("content_block_start", {"index": index, "content_block": start}), False
    if index == 0:
        yield _PING, False
    for delta in deltas:
        yield _event("content_block_delta", {"index": index, "delta": delta}), True
    yield _event("content_block_stop", {"index": index}), False


def _word_pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def stream_events(model: str, plan: Plan, *, cut: bool, error: bool) -> Iterator[bytes]:
    """The SSE events of a streamed message (``cut`` / ``error``: stop after 3 content deltas, error event)."""
    yield _event("message_start", {"message": _message(model, plan, [], final=False)})
    blocks = _blocks(plan)
    if not blocks:
        yield _PING
    deltas = 0
    for index, block in enumerate(blocks):
        for frame, is_delta in _block_events(index, block, plan):
            if (cut or error) and deltas == content_chunks_before_fault(model):
                if error:
                    yield _event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                return
            yield frame
            deltas += is_delta
    if cut or error:
        if error:
            yield _event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
        return
    usage = anthropic_usage(plan)
    del usage["service_tier"]
    delta = {"stop_reason": STOP_REASONS[plan.finish], "stop_sequence": plan.stop_sequence}
    yield _event("message_delta", {"delta": delta, "usage": usage})
    yield _event("message_stop", {})


class AnthropicWire:
    """The Anthropic request handlers, answering through one :class:`MockState`."""

    def __init__(self, state: MockState) -> None:
        """Answer through ``state``."""
        self.state = state

    async def prologue(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the request, apply the global delay, check the key (``x-api-key`` or bearer) and version."""
        body = await self.state.receive(request)
        await self.state.delay()
        expected = self.state.options.expected_key
        if expected is not None:
            key = request.headers.get("x-api-key")
            if key is None:
                # The API also takes the key as a bearer token (what the anthropic SDK >= 2 sends for api_key).
                bearer = request.headers.get("authorization", "")
                key = bearer[7:] if bearer[:7].lower() == "bearer " else None
            if key is None:
                return body, error_response(401, "x-api-key header is required")
            if key != expected:
                return body, error_response(401, "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return body, error_response(400, "anthropic-version: header is required")
        return body, None

    async def _faults(self, request: web.Request, model: str) -> web.StreamResponse | None:
        waited = await self.state.wait_faults(request, model)
        return waited if waited is not None else _fault_error(self.state.fault_model(model, request))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/messages`` (JSON or SSE)."""
        body, failure = await self.prologue(request)
        if failure is not None:
            return failure
        parsed = _parse(body, count_only=False)
        if isinstance(parsed, web.Response):
            return parsed
        model, body = parsed
        fault = await self._faults(request, model)
        if fault is not None:
            return fault
        plan = plan_reply(_turn(model, body, self.state.options.reply_words))
        cut = FAULT_CUT_STREAM in model
        if body.get("stream") is True:
            frames = stream_events(model, plan, cut=cut, error=FAULT_STREAM_ERROR in model)
            return await self.state.write_stream(
                request, model, frames, cut=cut, headers={"request-id": f"req_{new_id()}"}
            )
        if cut:
            return abort_connection(request)
        message = _message(model, plan, _blocks(plan), final=True)
        return json_response(message, request_id_header="request-id")

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/messages/count_tokens``."""
        body, failure = await self.prologue(request)
        if failure is not None:
            return failure
        parsed = _parse(body, count_only=True)
        if isinstance(parsed, web.Response):
            return parsed
        model, body = parsed
        fault = await self._faults(request, model)
        if fault is not None:
            return fault
        return json_response({"input_tokens": count_anthropic_tokens(body)}, request_id_header="request-id")

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models`` in Anthropic's shape (one page, every configured model)."""
        _, failure = await self.prologue(request)
        if failure is not None:
            return failure
        data = [_model_object(model) for model in self.state.options.models]
        page = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return json_response(page, request_id_header="request-id")

    async def retrieve_model(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models/{model}`` in Anthropic's shape."""
        _, failure = await self.prologue(request)
        if failure is not None:
            return failure
        model = request.match_info["model"]
        if model not in self.state.options.models:
            return error_response(404, f"model: {model}")
        return json_response(_model_object(model), request_id_header="request-id")


def _model_object(model: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": MODEL_CREATED_AT}
