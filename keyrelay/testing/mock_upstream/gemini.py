r"""The Gemini generateContent wire of the mock upstream, under ``/v1beta/`` and ``/v1/``.

* ``POST /{version}/models/{model}:generateContent`` -- a ``GenerateContentResponse``;
* ``POST /{version}/models/{model}:streamGenerateContent`` -- with ``?alt=sse``, one ``data: <response JSON>``
  event per chunk, events ended by CRLF CRLF; without it, one JSON array written element by element
  (``[{...}\\n,\\r\\n{...}\\n]``, elements indented by two spaces);
* ``POST /{version}/models/{model}:countTokens`` -- ``{"totalTokens": N}``, the ``promptTokenCount`` of the same
  request;
* ``GET /{version}/models`` and ``GET /{version}/models/{model}`` -- the configured models in Gemini's shape.

The credential is ``x-goog-api-key`` or ``?key=``; errors are ``{"error": {"code", "message", "status"}}``.
Function calls come whole in one part (the Gemini API does not stream arguments), without an ``id``. Prompt
tokens: ``ceil(B / 4) + 3 * len(contents)``, ``B`` counting the UTF-8 bytes of the text parts (system instruction
included) and of the compact JSON of each ``functionResponse.response``. ``generationConfig.responseJsonSchema`` (or
``responseSchema``) asks for structured output (the text is then the JSON the schema asks for, see :mod:`.behaviour`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Final

import orjson
from aiohttp import web

from keyrelay.testing.mock_upstream.behaviour import FAULT_BLOCKED_PROMPT, Plan, Tool, Turn, plan_reply
from keyrelay.testing.mock_upstream.core import (
    FAULT_CUT_STREAM,
    FAULT_NO_USAGE,
    FAULT_PROMPT_TOO_LONG,
    FAULT_STREAM_ERROR,
    FRAMING,
    MockState,
    abort_connection,
    content_chunks_before_fault,
    fault_status,
    new_id,
    redirect_fault,
    text_tokens,
)

STATUSES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""Google's status string for each HTTP status (other 4xx: ``INVALID_ARGUMENT``, other 5xx: ``INTERNAL``)."""
FINISH_REASONS: Final = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "stop_sequence": "STOP",
    "tool_calls": "STOP",
    "safety": "SAFETY",
}
PROMPT_TOO_LONG_MESSAGE: Final = (
    "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
)
_SAFETY_RATINGS: Final = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
_SSE_END: Final = b"\r\n\r\n"


def error_status(code: int) -> str:
    """Google's status string for an HTTP status."""
    return STATUSES.get(code, "INTERNAL" if code >= 500 else "INVALID_ARGUMENT")


def error_body(code: int, message: str) -> dict[str, Any]:
    """A Google API error object."""
    return {"error": {"code": code, "message": message, "status": error_status(code)}}


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A Google API error response (indented by two spaces, as Google's front end writes it)."""
    body = orjson.dumps(error_body(code, message), option=orjson.OPT_INDENT_2)
    return web.Response(body=body, status=code, content_type="application/json", headers=headers)


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _fault_error(model: str) -> web.Response | None:
    """The error a ``fail-NNN`` / ``prompt-too-long`` / ``redirect-3NN`` model name asks for, if any."""
    if FAULT_PROMPT_TOO_LONG in model:
        return error_response(400, PROMPT_TOO_LONG_MESSAGE)
    status = fault_status(model)
    if status == 429:
        return error_response(
            429,
            "Resource has been exhausted (e.g. check quota). (keyrelay mock fault injection)",
            headers={"retry-after": "1"},
        )
    if status is not None:
        return error_response(status, f"Mock failure {status} for model {model} (keyrelay mock fault injection)")
    return redirect_fault(model)


def _get(obj: Any, camel: str, snake: str) -> Any:
    """A field by its camelCase name or its snake_case one (the REST API accepts both)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _parts(content: Any) -> list[Any]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _part_bytes(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    text = part.get("text")
    if isinstance(text, str):
        return len(text.encode())
    response = _get(part, "functionResponse", "function_response")
    return len(orjson.dumps(response.get("response"))) if isinstance(response, dict) else 0


def count_gemini_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of a generateContent (or countTokens) body, by the mock's rule (module docstring)."""
    contents = body.get("contents")
    contents = contents if isinstance(contents, list) else []
    total = sum(_part_bytes(part) for part in _parts(_get(body, "systemInstruction", "system_instruction")))
    for content in contents:
        total += sum(_part_bytes(part) for part in _parts(content))
    return text_tokens(total, len(contents))


def _tool_results(contents: list[Any]) -> tuple[str, ...] | None:
    responses = [_get(p, "functionResponse", "function_response") for p in _parts(contents[-1])]
    texts = [orjson.dumps(r.get("response")).decode() for r in responses if isinstance(r, dict)]
    return tuple(texts) if texts else None


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    tools: list[Tool] = []
    raw = body.get("tools")
    for entry in raw if isinstance(raw, list) else []:
        declarations = _get(entry, "functionDeclarations", "function_declarations")
        for decl in declarations if isinstance(declarations, list) else []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                schema = _get(decl, "parametersJsonSchema", "parameters_json_schema") or decl.get("parameters")
                tools.append(Tool(decl["name"], schema))
    config = _get(_get(body, "toolConfig", "tool_config"), "functionCallingConfig", "function_calling_config")
    mode = config.get("mode") if isinstance(config, dict) else None
    allowed = _get(config, "allowedFunctionNames", "allowed_function_names")
    forced = allowed[0] if mode == "ANY" and isinstance(allowed, list) and allowed else None
    return tuple(tools), forced if isinstance(forced, str) else None, mode == "NONE"


def _parse(body: Any) -> dict[str, Any] | web.Response:
    if not isinstance(body, dict):
        return error_response(400, "Invalid JSON payload received. Expected an object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents or not all(isinstance(c, dict) for c in contents):
        return error_response(400, "* GenerateContentRequest.contents: contents is not specified\n")
    config = _get(body, "generationConfig", "generation_config")
    limit = _get(config, "maxOutputTokens", "max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        return error_response(400, "* GenerateContentRequest.generation_config.max_output_tokens: must be positive\n")
    stop = _get(config, "stopSequences", "stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return error_response(400, "Invalid value at 'generation_config.stop_sequences'")
    return body


def _thinking(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the model thinks, and whether its thoughts are shown (``includeThoughts``)."""
    config = _get(_get(body, "generationConfig", "generation_config"), "thinkingConfig", "thinking_config")
    include = _get(config, "includeThoughts", "include_thoughts") is True
    budget = _get(config, "thinkingBudget", "thinking_budget")
    level = _get(config, "thinkingLevel", "thinking_level")
    budgeted = isinstance(budget, int) and not isinstance(budget, bool) and (budget > 0 or budget == -1)
    return include or budgeted or isinstance(level, str), include


def _turn(model: str, body: dict[str, Any], reply_words: int) -> tuple[Turn, bool]:
    tools, forced, disabled = _tools(body)
    config = _get(body, "generationConfig", "generation_config")
    thinking, shown = _thinking(body)
    schema = _get(config, "responseJsonSchema", "response_json_schema")
    if schema is None:
        schema = _get(config, "responseSchema", "response_schema")
    turn = Turn(
        model=model,
        prompt_tokens=count_gemini_tokens(body),
        limit=_get(config, "maxOutputTokens", "max_output_tokens"),
        stop=tuple(_get(config, "stopSequences", "stop_sequences") or ()),
        tools=tools,
        forced_tool=forced,
        tools_disabled=disabled,
        tool_results=_tool_results(body["contents"]),
        thinking=thinking,
        reply_words=reply_words,
        json_schema=schema,
    )
    return turn, shown


def usage_metadata(plan: Plan, candidates_tokens: int | None = None) -> dict[str, Any]:
    """``usageMetadata``: ``promptTokenCount`` includes the cached tokens; thoughts are counted apart."""
    candidates = plan.output_tokens - plan.thinking_tokens if candidates_tokens is None else candidates_tokens
    usage: dict[str, Any] = {"promptTokenCount": plan.prompt_tokens}
    if plan.finish != "safety" or plan.output_tokens:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = plan.prompt_tokens + candidates + plan.thinking_tokens
    if plan.cached_tokens:
        usage["cachedContentTokenCount"] = plan.cached_tokens
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}]
    if plan.thinking_tokens:
        usage["thoughtsTokenCount"] = plan.thinking_tokens
    return usage


def _signed(parts: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Put the thought signature on the first part after the thoughts (when the model thought)."""
    for part in parts:
        if plan.thinking and not part.get("thought"):
            part["thoughtSignature"] = plan.signature
            break
    return parts


def _chunks(plan: Plan, shown: bool) -> list[list[dict[str, Any]]]:
    """The parts of each streamed chunk: the thought, one text piece per chunk, then every function call."""
    chunks: list[list[dict[str, Any]]] = []
    if plan.thinking and shown:
        chunks.append([{"text": plan.thinking, "thought": True}])
    chunks.extend([{"text": piece}] for piece in plan.pieces)
    if plan.tool_calls:
        chunks.append([{"functionCall": {"name": c.name, "args": c.arguments}} for c in plan.tool_calls])
    if not plan.pieces and not plan.tool_calls and plan.finish != "safety":
        chunks.append([{"text": ""}])
    first_answer = 1 if plan.thinking and shown else 0
    if plan.thinking and len(chunks) > first_answer:
        _signed(chunks[first_answer], plan)
    return chunks


def _response(model: str, plan: Plan, parts: list[dict[str, Any]] | None, *, final: bool, usage: bool) -> Any:
    response: dict[str, Any] = {}
    if plan.finish == "safety" and FAULT_BLOCKED_PROMPT in model:
        response["promptFeedback"] = {"blockReason": "SAFETY", "safetyRatings": _SAFETY_RATINGS}
    else:
        candidate: dict[str, Any] = {}
        if parts is not None and plan.finish != "safety":
            candidate["content"] = {"parts": parts, "role": "model"}
        if final:
            candidate["finishReason"] = FINISH_REASONS[plan.finish]
            if plan.finish == "safety":
                candidate["safetyRatings"] = _SAFETY_RATINGS
        candidate["index"] = 0
        response["candidates"] = [candidate]
    if usage:
        response["usageMetadata"] = usage_metadata(plan)
    response["modelVersion"] = model
    response["responseId"] = new_id()
    return response


def stream_responses(model: str, plan: Plan, shown: bool) -> Iterator[dict[str, Any]]:
    """The chunk responses of a streamed answer; usage on each one, the finish reason on the last."""
    chunks = _chunks(plan, shown) or [[]]
    response_id = new_id()
    with_usage = FAULT_NO_USAGE not in model
    so_far = 0
    for index, parts in enumerate(chunks):
        final = index == len(chunks) - 1
        response = _response(model, plan, parts, final=final, usage=False)
        so_far += sum(1 for part in parts if part.get("text") and not part.get("thought"))
        so_far += sum(_call_tokens(part["functionCall"]) for part in parts if "functionCall" in part)
        if with_usage:
            # Cumulative, as Google sends it: the last chunk's usage is the whole answer's.
            response["usageMetadata"] = usage_metadata(plan, None if final else so_far)
        response["responseId"] = response_id
        yield response


def _call_tokens(call: dict[str, Any]) -> int:
    return math.ceil(len((call["name"] + orjson.dumps(call["args"]).decode()).encode()) / 4)


def _sse(responses: Iterator[dict[str, Any]], model: str, end: bytes) -> Iterator[bytes]:
    cut = FAULT_CUT_STREAM in model or FAULT_STREAM_ERROR in model
    for index, response in enumerate(responses):
        if cut and index == content_chunks_before_fault(model):
            if FAULT_STREAM_ERROR in model:
                yield b"data: " + orjson.dumps(error_body(503, "The model is overloaded.")) + end
            return
        yield b"data: " + orjson.dumps(response) + end


def _array(responses: Iterator[dict[str, Any]], model: str) -> Iterator[bytes]:
    cut = FAULT_CUT_STREAM in model or FAULT_STREAM_ERROR in model
    separator = b"["
    for index, response in enumerate(responses):
        if cut and index == content_chunks_before_fault(model):
            if FAULT_STREAM_ERROR in model:
                error = orjson.dumps(error_body(503, "The model is overloaded."), option=orjson.OPT_INDENT_2)
                yield separator + error + b"\n]"
            return
        yield separator + orjson.dumps(response, option=orjson.OPT_INDENT_2)
        separator = b"\n,\r\n"
    yield b"\n]"


class GeminiWire:
    """The Gemini request handlers, answering through one :class:`MockState`."""

    def __init__(self, state: MockState) -> None:
        """Answer through ``state``."""
        self.state = state

    async def prologue(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the request, apply the global delay and check ``x-goog-api-key`` / ``?key=``."""
        body = await self.state.receive(request)
        await self.state.delay()
        expected = self.state.options.expected_key
        if expected is not None:
            key = request.headers.get("x-goog-api-key", request.query.get("key"))
            if key is None:
                return body, error_response(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). "
                    "Please use API Key or other form of API consumer identity to call this API.",
                )
            if key != expected:
                return body, error_response(400, "API key not valid. Please pass a valid API key.")
        return body, None

    async def model_action(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /{version}/models/{model}:{method}``."""
        body, failure = await self.prologue(request)
        if failure is not None:
            return failure
        model, method = request.match_info["model"], request.match_info["method"]
        if method not in ("generateContent", "streamGenerateContent", "countTokens"):
            return error_response(404, f"Method not found: {method}")
        parsed = _parse(body)
        if isinstance(parsed, web.Response):
            return parsed
        waited = await self.state.wait_faults(request, model)
        fault = waited if waited is not None else _fault_error(self.state.fault_model(model, request))
        if fault is not None:
            return fault
        if method == "countTokens":
            return _json({"totalTokens": count_gemini_tokens(parsed)})
        turn, shown = _turn(model, parsed, self.state.options.reply_words)
        plan = plan_reply(turn)
        if method == "streamGenerateContent":
            return await self._stream(request, model, plan, shown)
        if FAULT_CUT_STREAM in model:
            return abort_connection(request)
        parts = [part for chunk in _chunks(plan, shown) for part in chunk]
        return _json(_response(model, plan, _merge_text(parts), final=True, usage=FAULT_NO_USAGE not in model))

    async def _stream(self, request: web.Request, model: str, plan: Plan, shown: bool) -> web.StreamResponse:
        responses = stream_responses(model, plan, shown)
        cut = FAULT_CUT_STREAM in model
        if request.query.get("alt") == "sse":
            end = b"\n\n" if any(name in model for name, _ in FRAMING) else _SSE_END
            return await self.state.write_stream(request, model, _sse(responses, model, end), cut=cut)
        frames = _array(responses, model)
        return await self.state.write_stream(request, model, frames, cut=cut, content_type="application/json")

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /{version}/models``."""
        _, failure = await self.prologue(request)
        if failure is not None:
            return failure
        return _json({"models": [_model_object(model) for model in self.state.options.models]})

    async def retrieve_model(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /{version}/models/{model}``."""
        _, failure = await self.prologue(request)
        if failure is not None:
            return failure
        model = request.match_info["model"]
        if model not in self.state.options.models:
            return error_response(404, f"models/{model} is not found for API version v1beta")
        return _json(_model_object(model))


def _merge_text(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join the answer's consecutive plain text parts into one (a non-streamed answer has one text part)."""
    merged: list[dict[str, Any]] = []
    for part in parts:
        previous = merged[-1] if merged else None
        plain = set(part) <= {"text", "thoughtSignature"} and "thoughtSignature" not in part
        if previous is not None and plain and set(previous) <= {"text", "thoughtSignature"}:
            previous["text"] += part["text"]
        else:
            merged.append(dict(part))
    return merged


def _model_object(model: str) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "version": "001",
        "displayName": model,
        "description": f"Mock model {model}",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens", "streamGenerateContent"],
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2.0,
        "thinking": True,
    }
