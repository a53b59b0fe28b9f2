"""The OpenAI wire of the mock upstream: ``/v1/chat/completions``, ``/v1/models`` and the OpenAI error shape.

* ``POST /v1/chat/completions`` -- ``chat.completion`` objects, or ``chat.completion.chunk`` SSE frames when
  ``"stream": true`` (with the trailing usage-only chunk when ``stream_options.include_usage`` is set).
* ``GET /v1/models`` and ``GET /v1/models/{id}`` -- the configured model list.
* Anything else -- OpenAI's ``404 Invalid URL`` error.

``POST /v1/embeddings`` lives in :mod:`.embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from keyrelay.testing.mock_upstream.behaviour import plan_reply
from keyrelay.testing.mock_upstream.core import (
    FAULT_400,
    FAULT_429,
    FAULT_500,
    FAULT_503,
    FAULT_CUT_STREAM,
    FAULT_NO_USAGE,
    FAULT_PROMPT_TOO_LONG,
    FAULT_STREAM_ERROR,
    MockOptions,
    MockState,
    abort_connection,
    fault_status,
    json_response,
    redirect_fault,
    text_tokens,
)
from keyrelay.testing.mock_upstream.openai_chat import chunk_frames, completion, openai_turn

MODEL_CREATED: Final = 1_700_000_000
_ERROR_TYPES: Final = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error"}
SSE_DONE: Final = b"data: [DONE]\n\n"
BAD_JSON_MESSAGE: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble "
    "figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)


def _content_bytes(content: Any) -> int:
    """Return the number of UTF-8 bytes of a chat message ``content`` (string or list of parts)."""
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part.encode())
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text.encode())
        return total
    return 0


def count_prompt_tokens(messages: list[Any]) -> int:
    """Count chat prompt tokens with the mock's rule: ``ceil(content_bytes / 4) + 3 * len(messages)``.

    Args:
        messages: The request's ``messages`` list.

    Returns:
        The prompt token count reported in ``usage.prompt_tokens``.
    """
    total = 0
    for message in messages:
        if isinstance(message, dict):
            total += _content_bytes(message.get("content"))
    return text_tokens(total, len(messages))


def _error(
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build an OpenAI error response ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return json_response(body, status=status, headers=headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    """Build a 400 ``invalid_request_error``."""
    return _error(400, message, "invalid_request_error", code=code, param=param)


def _fault_error(model: str) -> web.Response | None:
    """Return the error response injected by a ``fail-*`` model name, if any."""
    if FAULT_429 in model:
        return _error(
            429,
            f"Rate limit reached for {model} on requests per min (RPM): Limit 1, Used 1, Requested 1. "
            "Please try again in 1s. (keyrelay mock fault injection)",
            "requests",
            code="rate_limit_exceeded",
            headers={"retry-after": "1", "x-ratelimit-remaining-requests": "0"},
        )
    if FAULT_500 in model:
        return _error(
            500,
            "The server had an error while processing your request. Sorry about that! (keyrelay mock fault injection)",
            "server_error",
        )
    if FAULT_503 in model:
        return _error(
            503,
            "The server is overloaded or not ready yet. (keyrelay mock fault injection)",
            "server_error",
        )
    if FAULT_400 in model:
        return invalid_request(f"Invalid request for model {model}. (keyrelay mock fault injection)")
    if FAULT_PROMPT_TOO_LONG in model:
        return invalid_request(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 200001 tokens. "
            "Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    status = fault_status(model)
    if status is not None:
        kind = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
        return _error(status, f"Mock failure {status} for model {model}. (keyrelay mock fault injection)", kind)
    return redirect_fault(model)


# ---------------------------------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    """The validated parts of a chat completion request the mock uses."""

    model: str
    messages: list[Any]
    limit: int | None
    stream: bool
    include_usage: bool


def _parse_token_limit(body: dict[str, Any]) -> int | None | web.Response:
    """Return ``max_completion_tokens`` (preferred) or ``max_tokens``, ``None``, or a 400 response."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return invalid_request(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1.",
                param=name,
                code="integer_below_min_value",
            )
        return value
    return None


def _parse_chat_request(body: Any) -> _ChatRequest | web.Response:
    """Validate a chat completion body like OpenAI does (the subset the mock needs); return a 400 when invalid."""
    if not isinstance(body, dict):
        return invalid_request(BAD_JSON_MESSAGE)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return invalid_request("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list):
        return invalid_request("'messages' is a required property", param="messages")
    if not messages:
        return invalid_request("[] is too short - 'messages'", param="messages", code="empty_array")
    if not all(isinstance(message, dict) for message in messages):
        return invalid_request("Invalid type for 'messages': expected an array of objects.", param="messages")
    limit = _parse_token_limit(body)
    if isinstance(limit, web.Response):
        return limit
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        return invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return _ChatRequest(model=model, messages=messages, limit=limit, stream=stream, include_usage=include_usage)


def _model_object(model: str) -> dict[str, Any]:
    """Build one ``model`` object."""
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


class OpenAIWire:
    """The OpenAI request handlers, answering through one :class:`MockState`."""

    def __init__(self, state: MockState) -> None:
        """Answer through ``state``."""
        self.state = state

    @property
    def options(self) -> MockOptions:
        """The live options."""
        return self.state.options

    async def prologue(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the request, apply the global delay and check the API key."""
        body = await self.state.receive(request)
        await self.state.delay()
        expected = self.options.expected_key
        if expected is not None:
            header = request.headers.get("Authorization")
            if header is None:
                return body, _error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
            if header != f"Bearer {expected}":
                return body, _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        return body, None

    async def pre_answer_faults(self, request: web.Request, model: str) -> web.StreamResponse | None:
        """Apply the ``slow-ttfb``, ``hang``, ``held`` and ``fail-*`` faults; return the response to send instead."""
        waited = await self.state.wait_faults(request, model)
        if waited is not None:
            return waited
        return _fault_error(self.state.fault_model(model, request))

    # -- chat completions ----------------------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/chat/completions`` (JSON or SSE)."""
        body, failure = await self.prologue(request)
        if failure is not None:
            return failure
        parsed = _parse_chat_request(body)
        if isinstance(parsed, web.Response):
            return parsed
        model = parsed.model
        fault = await self.pre_answer_faults(request, model)
        if fault is not None:
            return fault
        prompt = count_prompt_tokens(parsed.messages)
        turn = openai_turn(model, body, parsed.messages, parsed.limit, prompt, self.options.reply_words)
        plan = plan_reply(turn)
        no_usage = FAULT_NO_USAGE in model
        cut = FAULT_CUT_STREAM in model
        if parsed.stream:
            error = FAULT_STREAM_ERROR in model
            frames = chunk_frames(
                model,
                plan,
                self.state.created(),
                include_usage=parsed.include_usage and not no_usage,
                null_usage=parsed.include_usage and not no_usage,
                cut=cut,
                error=error,
            )
            return await self.state.write_stream(request, model, frames, cut=cut, tail=b"" if error else SSE_DONE)
        if cut:
            return abort_connection(request)
        return json_response(completion(model, plan, self.state.created(), usage=not no_usage))

    # -- models --------------------------------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models``."""
        _, failure = await self.prologue(request)
        if failure is not None:
            return failure
        return json_response({"object": "list", "data": [_model_object(model) for model in self.options.models]})

    async def retrieve_model(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models/{model}``."""
        _, failure = await self.prologue(request)
        if failure is not None:
            return failure
        model = request.match_info["model"]
        if model not in self.options.models:
            return _error(
                404,
                f"The model '{model}' does not exist",
                "invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return json_response(_model_object(model))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Answer any other route with OpenAI's ``Invalid URL`` 404."""
        await self.state.receive(request)
        return _error(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
