"""Mock OpenAI upstream server used by keyrelay's tests, ``make demo`` and the benchmark.

This module owns a small, fast :mod:`aiohttp.web` application that speaks the OpenAI HTTP wire format the way
``api.openai.com`` does, so that the official ``openai`` SDK (and keyrelay itself) can talk to it unchanged:

* ``POST /v1/chat/completions`` -- ``chat.completion`` objects, or ``chat.completion.chunk`` SSE frames when
  ``"stream": true`` (with the trailing usage-only chunk when ``stream_options.include_usage`` is set).
* ``POST /v1/embeddings`` -- deterministic, L2-normalised vectors, as floats or base64 little-endian float32.
* ``GET /v1/models`` and ``GET /v1/models/{id}`` -- the configured model list.
* Anything else -- OpenAI's ``404 Invalid URL`` error.

Replies are deterministic: the assistant text is :data:`REPLY_TEXT` cycled word by word to
:attr:`MockOptions.reply_words` words (9 by default, i.e. exactly :data:`REPLY_TEXT`), cut short by
``max_completion_tokens`` / ``max_tokens`` (then ``finish_reason`` is ``"length"``).

Token-counting rule (documented so that tests can compute expected usage):

* chat prompt tokens = ``ceil(B / 4) + 3 * len(messages)`` where ``B`` is the total number of UTF-8 bytes of the
  message contents (string contents, plus the ``text`` of list-of-parts contents; other parts count 0 bytes);
* chat completion tokens = number of reply words emitted (one streamed content chunk per word);
* embedding prompt tokens = sum over inputs of ``ceil(utf8_bytes / 4)`` for strings, ``len(tokens)`` for token
  arrays.

Fault injection is chosen per request through the model name (substring match), see :func:`create_mock_app`:
``fail-429``, ``fail-500``, ``fail-503``, ``fail-400``, ``redirect-3NN`` (that 3xx status with a ``Location``),
``slow-ttfb``, ``hang``, ``held``, ``cut-stream``, ``no-usage`` and ``paced``; ``framing-crlf`` and ``framing-cr``
end every SSE line with CRLF or a lone CR instead of LF. Every request received is recorded (bounded) in
:attr:`MockState.requests`.

Given an :class:`ssl.SSLContext`, :class:`MockUpstream` serves HTTPS instead of HTTP (for TLS tests).

The server can run inside the current event loop (:class:`MockUpstream`, an async context manager), in a daemon
thread with its own loop (:func:`run_in_thread`, for synchronous tests), or from the command line
(``python -m keyrelay.testing.mock_upstream --port 8099``).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
import os
import re
import signal
import ssl
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import orjson
from aiohttp import web

from keyrelay.clock import Clock, SystemClock

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "MOCK_KEY",
    "REPLY_TEXT",
    "MockOptions",
    "MockState",
    "MockUpstream",
    "RecordedRequest",
    "count_embedding_tokens",
    "count_prompt_tokens",
    "create_mock_app",
    "embedding_vector",
    "main",
    "reply_words",
    "run_in_thread",
]

REPLY_TEXT: Final = "This is a mock reply from keyrelay's test upstream."
"""The deterministic assistant reply (cycled/truncated word by word)."""

_REPLY_WORDS: Final = tuple(REPLY_TEXT.split(" "))
DEFAULT_EMBEDDING_DIMENSIONS: Final = 8
"""Embedding size used when the request has no ``dimensions``."""
MAX_EMBEDDING_DIMENSIONS: Final = 8192
SYSTEM_FINGERPRINT: Final = "fp_kr0mock01"
MODEL_CREATED: Final = 1_700_000_000
DEFAULT_CLI_PORT: Final = 8099

# Fault-injection markers (matched as substrings of the requested model id).
FAULT_429: Final = "fail-429"
FAULT_500: Final = "fail-500"
FAULT_503: Final = "fail-503"
FAULT_400: Final = "fail-400"
FAULT_SLOW_TTFB: Final = "slow-ttfb"
FAULT_HANG: Final = "hang"
FAULT_HELD: Final = "held"
FAULT_CUT_STREAM: Final = "cut-stream"
FAULT_NO_USAGE: Final = "no-usage"
FAULT_PACED: Final = "paced"
# SSE line endings other than LF, chosen by the model name (valid SSE, and the default of several servers).
FRAMING: Final = (("framing-crlf", b"\r\n"), ("framing-cr", b"\r"))
FAULT_REDIRECT: Final = re.compile(r"redirect-(3\d\d)")
REDIRECT_LOCATION: Final = "https://moved.upstream.example/v1"

_PACED_FIRST_S: Final = 0.020
_PACED_GAP_S: Final = 0.005
_CUT_STREAM_CONTENT_CHUNKS: Final = 3
_SHUTDOWN_TIMEOUT_S: Final = 1.0

_INVALID_JSON: Final = object()
_SSE_DONE: Final = b"data: [DONE]\n\n"
_SSE_HEADERS: Final = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
_JSON_CONTENT_TYPE: Final = "application/json"
_BAD_JSON_MESSAGE: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble "
    "figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)

_ID_PREFIX: Final = os.urandom(5).hex()
_id_counter = itertools.count(1)


def _new_id() -> str:
    """Return a process-unique, cheap identifier suffix (10 random hex chars + a counter)."""
    return f"{_ID_PREFIX}{next(_id_counter):014x}"


@dataclass
class MockOptions:
    """Configuration of the mock upstream (read on every request, so it may be changed while running).

    Attributes:
        delay_ms: Delay added before every answer, in milliseconds.
        slow_ms: Delay applied to models containing ``slow-ttfb``, in milliseconds.
        expected_key: When set, requests must carry ``Authorization: Bearer <expected_key>`` (else 401).
        models: Model ids listed by ``GET /v1/models`` (chat/embeddings accept any model id).
        reply_words: Number of words of the (cycled) deterministic reply when no token limit applies.
        max_recorded: How many received requests are kept in :attr:`MockState.requests`.
        clock: Source of the ``created`` timestamps (whole seconds since the epoch); a test may pass a FakeClock.
        sleep: Every pause the mock makes (``delay_ms``, ``slow-ttfb``, the ``paced`` gaps) is ``await sleep(s)``
            with ``s`` in seconds. A test may pass ``FakeClock.sleep`` (time passes at once on the fake clock)
            or its own function to observe the pauses or hold the mock at one.
    """

    delay_ms: float = 0
    slow_ms: float = 300
    expected_key: str | None = None
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    reply_words: int = len(_REPLY_WORDS)
    max_recorded: int = 1000
    clock: Clock = field(default_factory=SystemClock)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request received by the mock.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: URL path, e.g. ``"/v1/chat/completions"``.
        query: Query-string parameters (last value wins).
        headers: Request headers with lower-cased names (repeated headers keep the last value).
        body: Parsed JSON body, or ``None`` when the body was empty or not valid JSON.
        raw_body: The raw request body.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes


# ---------------------------------------------------------------------------------------------------------------------
# Deterministic content helpers
# ---------------------------------------------------------------------------------------------------------------------


def reply_words(count: int) -> list[str]:
    """Return the first ``count`` words of the deterministic reply (:data:`REPLY_TEXT` cycled).

    Args:
        count: Number of words wanted (negative counts are treated as 0).

    Returns:
        The words, without separators; ``" ".join(words)`` is the reply text.
    """
    return list(itertools.islice(itertools.cycle(_REPLY_WORDS), max(count, 0)))


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
    return math.ceil(total / 4) + 3 * len(messages)


def count_embedding_tokens(inputs: list[str | list[int]]) -> int:
    """Count embedding prompt tokens: ``ceil(utf8_bytes / 4)`` per string, ``len(tokens)`` per token array.

    Args:
        inputs: The normalised list of inputs.

    Returns:
        The token count reported in ``usage.prompt_tokens`` / ``usage.total_tokens``.
    """
    total = 0
    for item in inputs:
        total += math.ceil(len(item.encode()) / 4) if isinstance(item, str) else len(item)
    return total


def embedding_vector(item: str | list[int], dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """Return the deterministic, L2-normalised embedding of one input.

    The values are derived from SHAKE-256 of the text (or of the JSON of a token array) and rounded to float32, so
    the ``float`` and ``base64`` encodings carry exactly the same numbers.

    Args:
        item: A string or a token array.
        dimensions: Vector length.

    Returns:
        The vector as Python floats (exactly representable as float32).
    """
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    digest = hashlib.shake_256(seed).digest(2 * dimensions)
    raw = [int.from_bytes(digest[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dimensions, 2)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return array.array("f", [v / norm for v in raw]).tolist()


def _float32_base64(values: list[float]) -> str:
    """Encode floats as base64 of little-endian float32 (OpenAI's ``encoding_format: "base64"``)."""
    packed = array.array("f", values)
    if sys.byteorder == "big":  # pragma: no cover - exercised only on big-endian hosts
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """Build a chat ``usage`` object as OpenAI sends it."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


# ---------------------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------------------


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Serialise ``payload`` with orjson into an ``application/json`` response carrying an ``x-request-id``."""
    response_headers = {"x-request-id": f"req_{_new_id()}"}
    if headers:
        response_headers.update(headers)
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=_JSON_CONTENT_TYPE, headers=response_headers
    )


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
    return _json_response(body, status=status, headers=headers)


def _invalid_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    """Build a 400 ``invalid_request_error``."""
    return _error(400, message, "invalid_request_error", code=code, param=param)


def _abort_connection(request: web.Request) -> web.StreamResponse:
    """Abort the TCP connection and return a dummy response that aiohttp will quietly fail to send."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


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
        return _invalid_request(f"Invalid request for model {model}. (keyrelay mock fault injection)")
    redirect = FAULT_REDIRECT.search(model)
    if redirect is not None:
        # As a web server answers a moved endpoint (e.g. http:// to https://): an HTML body, or none for 304.
        status = int(redirect.group(1))
        body = None if status == 304 else b"<html><body>Moved</body></html>"
        return web.Response(
            status=status,
            body=body,
            content_type=None if body is None else "text/html",
            headers={"location": REDIRECT_LOCATION},
        )
    return None


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
            return _invalid_request(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1.",
                param=name,
                code="integer_below_min_value",
            )
        return value
    return None


def _parse_chat_request(body: Any) -> _ChatRequest | web.Response:
    """Validate a chat completion body like OpenAI does (the subset the mock needs); return a 400 when invalid."""
    if not isinstance(body, dict):
        return _invalid_request(_BAD_JSON_MESSAGE)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid_request("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _invalid_request("'messages' is a required property", param="messages")
    if not messages:
        return _invalid_request("[] is too short - 'messages'", param="messages", code="empty_array")
    if not all(isinstance(message, dict) for message in messages):
        return _invalid_request("Invalid type for 'messages': expected an array of objects.", param="messages")
    limit = _parse_token_limit(body)
    if isinstance(limit, web.Response):
        return limit
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        return _invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return _ChatRequest(model=model, messages=messages, limit=limit, stream=stream, include_usage=include_usage)


def _chat_sse_frames(
    *,
    model: str,
    words: list[str],
    finish_reason: str,
    usage: dict[str, Any] | None,
    null_usage: bool,
    cut: bool,
    created: int,
) -> Iterator[bytes]:
    """Generate the SSE frames of a streamed chat completion, lazily (one ``data:`` frame per chunk).

    Role chunk, one content chunk per word, finish chunk, then the usage-only chunk when ``usage`` is given. Every
    chunk carries ``"usage": null`` when ``null_usage``. With ``cut``, stops after the role chunk and 3 content chunks.
    """
    chunk_id = f"chatcmpl-{_new_id()}"

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

    yield frame(choice({"role": "assistant", "content": "", "refusal": None}))
    last = len(words) - 1
    for index, word in enumerate(words):
        if cut and index == _CUT_STREAM_CONTENT_CHUNKS:
            return
        yield frame(choice({"content": word if index == last else word + " "}))
    if cut:
        return
    yield frame(choice({}, finish_reason))
    if usage is not None:
        yield frame([], usage)


class MockState:
    """State and request handlers of one mock application (reachable as ``app[MOCK_KEY]`` or ``app["mock"]``).

    Attributes:
        options: The live :class:`MockOptions`.
        requests: The last ``options.max_recorded`` requests received, oldest first.
        held: One gate per ``held`` request received, in arrival order; see :meth:`release`.
    """

    def __init__(self, options: MockOptions) -> None:
        """Create the state for ``options``."""
        self.options = options
        self.requests: list[RecordedRequest] = []
        self.held: list[asyncio.Event] = []
        self._closing = asyncio.Event()

    def release(self, index: int) -> None:
        """Let the ``held`` request number ``index`` (arrival order, from 0) answer normally.

        Raises:
            IndexError: No such held request has arrived yet.
        """
        self.held[index].set()

    def _created(self) -> int:
        return int(self.options.clock.now_utc().timestamp())

    def clear_requests(self) -> None:
        """Forget every recorded request."""
        self.requests.clear()

    async def _on_shutdown(self, _app: web.Application) -> None:
        """Release hanging and held handlers so that shutdown never waits for them."""
        self._closing.set()
        for gate in self.held:
            gate.set()

    # -- common prologue -----------------------------------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> Any:
        """Read, parse and record the request; return the JSON body, ``None`` (no body) or ``_INVALID_JSON``."""
        raw = await request.read() if request.body_exists else b""
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = _INVALID_JSON
        requests = self.requests
        requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={name.lower(): value for name, value in request.headers.items()},
                body=None if body is _INVALID_JSON else body,
                raw_body=raw,
            )
        )
        excess = len(requests) - max(self.options.max_recorded, 0)
        if excess > 0:
            del requests[:excess]
        return body

    async def _prologue(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the request, apply the global delay and check the API key."""
        body = await self._receive(request)
        options = self.options
        if options.delay_ms > 0:
            await options.sleep(options.delay_ms / 1000)
        expected = options.expected_key
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

    async def _pre_answer_faults(self, request: web.Request, model: str) -> web.StreamResponse | None:
        """Apply the ``slow-ttfb``, ``hang``, ``held`` and ``fail-*`` faults; return the response to send instead."""
        if FAULT_SLOW_TTFB in model:
            await self.options.sleep(self.options.slow_ms / 1000)
        if FAULT_HELD in model:
            # Answer only once the test releases this request (or drop it when the server shuts down),
            # so a test decides when a request finishes without sleeping.
            gate = asyncio.Event()
            self.held.append(gate)
            await gate.wait()
            if self._closing.is_set():
                return _abort_connection(request)
        if FAULT_HANG in model:
            # Never answer: wait for the server to shut down (a client disconnect cancels this handler when the
            # runner uses handler_cancellation, as MockUpstream does), then drop the connection.
            await self._closing.wait()
            return _abort_connection(request)
        return _fault_error(model)

    # -- chat completions ----------------------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/chat/completions`` (JSON or SSE)."""
        body, failure = await self._prologue(request)
        if failure is not None:
            return failure
        parsed = _parse_chat_request(body)
        if isinstance(parsed, web.Response):
            return parsed
        model = parsed.model
        fault = await self._pre_answer_faults(request, model)
        if fault is not None:
            return fault

        word_count = self.options.reply_words
        finish_reason = "stop"
        if parsed.limit is not None and parsed.limit < word_count:
            word_count = parsed.limit
            finish_reason = "length"
        words = reply_words(word_count)
        no_usage = FAULT_NO_USAGE in model
        usage = None if no_usage else _usage(count_prompt_tokens(parsed.messages), len(words))
        if parsed.stream:
            return await self._stream_chat(
                request,
                model=model,
                words=words,
                finish_reason=finish_reason,
                usage=usage if parsed.include_usage else None,
                null_usage=parsed.include_usage and not no_usage,
            )
        if FAULT_CUT_STREAM in model:
            return _abort_connection(request)
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{_new_id()}",
            "object": "chat.completion",
            "created": self._created(),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words), "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if usage is not None:
            completion["usage"] = usage
        completion["service_tier"] = "default"
        completion["system_fingerprint"] = SYSTEM_FINGERPRINT
        return _json_response(completion)

    async def _stream_chat(
        self,
        request: web.Request,
        *,
        model: str,
        words: list[str],
        finish_reason: str,
        usage: dict[str, Any] | None,
        null_usage: bool,
    ) -> web.StreamResponse:
        """Write the ``chat.completion.chunk`` SSE frames one by one, then ``data: [DONE]``."""
        cut = FAULT_CUT_STREAM in model
        frames = _chat_sse_frames(
            model=model,
            words=words,
            finish_reason=finish_reason,
            usage=usage,
            null_usage=null_usage,
            cut=cut,
            created=self._created(),
        )
        response = web.StreamResponse(headers={**_SSE_HEADERS, "x-request-id": f"req_{_new_id()}"})
        await response.prepare(request)
        pause = _PACED_FIRST_S if FAULT_PACED in model else 0.0
        ending = next((end for name, end in FRAMING if name in model), b"\n")
        try:
            for data in frames:
                if pause:
                    await self.options.sleep(pause)
                    pause = _PACED_GAP_S
                await response.write(data if ending == b"\n" else data.replace(b"\n", ending))
            if cut:
                return _abort_connection(request)
            await response.write(_SSE_DONE if ending == b"\n" else _SSE_DONE.replace(b"\n", ending))
        except ConnectionError:
            pass  # The client went away mid-stream; aiohttp's own write_eof then fails quietly.
        return response

    # -- embeddings ----------------------------------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/embeddings``."""
        body, failure = await self._prologue(request)
        if failure is not None:
            return failure
        if not isinstance(body, dict):
            return _invalid_request(_BAD_JSON_MESSAGE)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _invalid_request("you must provide a model parameter")
        inputs = _normalise_embedding_input(body.get("input"))
        if inputs is None:
            return _invalid_request(
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                param="input",
            )
        dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if dimensions is None:
            dimensions = DEFAULT_EMBEDDING_DIMENSIONS
        if (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
        ):
            return _invalid_request(f"Invalid 'dimensions': {dimensions!r}.", param="dimensions")
        encoding_format = body.get("encoding_format")
        if encoding_format not in (None, "float", "base64"):
            return _invalid_request(
                f"{encoding_format!r} is not one of ['float', 'base64'] - 'encoding_format'", param="encoding_format"
            )

        fault = await self._pre_answer_faults(request, model)
        if fault is not None:
            return fault
        if FAULT_CUT_STREAM in model:
            return _abort_connection(request)

        as_base64 = encoding_format == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, dimensions)
            data.append(
                {"object": "embedding", "index": index, "embedding": _float32_base64(vector) if as_base64 else vector}
            )
        result: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if FAULT_NO_USAGE not in model:
            tokens = count_embedding_tokens(inputs)
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json_response(result)

    # -- models --------------------------------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models``."""
        _, failure = await self._prologue(request)
        if failure is not None:
            return failure
        return _json_response({"object": "list", "data": [_model_object(model) for model in self.options.models]})

    async def retrieve_model(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models/{model}``."""
        _, failure = await self._prologue(request)
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
        return _json_response(_model_object(model))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Answer any other route with OpenAI's ``Invalid URL`` 404."""
        await self._receive(request)
        return _error(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")


def _model_object(model: str) -> dict[str, Any]:
    """Build one ``model`` object."""
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


def _normalise_embedding_input(value: Any) -> list[str | list[int]] | None:
    """Normalise an embeddings ``input`` to a list of strings / token arrays, or ``None`` when invalid."""

    def is_tokens(item: Any) -> bool:
        return (
            isinstance(item, list)
            and bool(item)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item)
        )

    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if is_tokens(value):
        return [value]
    if all(isinstance(item, str) and item for item in value):
        return list(value)
    if all(is_tokens(item) for item in value):
        return list(value)
    return None


MOCK_KEY: Final = web.AppKey("keyrelay_mock", MockState)
"""Typed application key of the :class:`MockState` (``app[MOCK_KEY]``)."""


def create_mock_app(options: MockOptions | None = None) -> web.Application:
    """Create the mock OpenAI application.

    The state is available as ``app[MOCK_KEY]`` (typed) and, for convenience, ``app["mock"]``.

    Fault injection, by substring of the requested model id (chat and embeddings):

    * ``fail-429`` -> 429 ``rate_limit_exceeded`` (type ``requests``) with ``retry-after: 1``;
    * ``fail-500`` / ``fail-503`` -> 500 / 503 ``server_error``; ``fail-400`` -> 400 ``invalid_request_error``;
    * ``slow-ttfb`` -> waits ``options.slow_ms`` before answering;
    * ``hang`` -> never answers (until the client disconnects or the server shuts down);
    * ``held`` -> answers normally once the test calls :meth:`MockState.release` for it (requests are numbered
      in arrival order in :attr:`MockState.held`); dropped if the server shuts down first;
    * ``cut-stream`` -> streaming: role chunk + 3 content chunks, then the connection is aborted without
      ``[DONE]``; non-streaming: the connection is aborted without a response;
    * ``no-usage`` -> no ``usage`` in the JSON answer, no usage chunk (nor ``"usage": null``) in streams;
    * ``paced`` -> streams with 20 ms before the first chunk and 5 ms between chunks.

    Args:
        options: Configuration; defaults to ``MockOptions()``.

    Returns:
        A fresh, not yet started :class:`aiohttp.web.Application`.
    """
    state = MockState(options if options is not None else MockOptions())
    app = web.Application()
    app[MOCK_KEY] = state
    with warnings.catch_warnings():
        # Plain-string key kept for convenience (``app["mock"]``); aiohttp recommends AppKey instances.
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["mock"] = state
    app.router.add_post("/v1/chat/completions", state.chat_completions)
    app.router.add_post("/v1/embeddings", state.embeddings)
    app.router.add_get("/v1/models", state.list_models, allow_head=False)
    app.router.add_get("/v1/models/{model:.+}", state.retrieve_model, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", state.not_found)
    app.on_shutdown.append(state._on_shutdown)
    return app


# ---------------------------------------------------------------------------------------------------------------------
# Server wrappers
# ---------------------------------------------------------------------------------------------------------------------


class MockUpstream:
    """The mock upstream served on a TCP port; an async context manager (``async with MockUpstream() as mock``).

    The server uses aiohttp's handler cancellation (a client disconnect cancels its handler), no access log and a
    1 s shutdown timeout. An instance can be started once.
    """

    def __init__(
        self,
        options: MockOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Prepare (but do not start) the server.

        Args:
            options: Configuration; defaults to ``MockOptions()``.
            host: Interface to bind.
            port: TCP port; 0 picks a free port (see :attr:`port` once started).
            ssl_context: A server-side TLS context (certificate loaded): serve HTTPS instead of HTTP.
        """
        self.options = options if options is not None else MockOptions()
        self.ssl_context = ssl_context
        self.app = create_mock_app(self.options)
        self.state = self.app[MOCK_KEY]
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._used = False

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far (bounded by ``options.max_recorded``), oldest first."""
        return self.state.requests

    @property
    def port(self) -> int:
        """The bound TCP port (only valid once started)."""
        if self._port is None:
            raise RuntimeError("MockUpstream is not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://HOST:PORT``, or ``https://`` with an SSL context (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http(s)://HOST:PORT/v1``."""
        return f"{self.origin}/v1"

    async def start(self) -> None:
        """Start serving in the running event loop.

        Raises:
            RuntimeError: If this instance was already started.
        """
        if self._used:
            raise RuntimeError("MockUpstream can only be started once")
        self._used = True
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving (idempotent); hanging requests are released and their connections dropped."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self) -> Callable[[], None]:
        """Start serving on a new event loop in a daemon thread.

        Returns:
            An idempotent ``stop()`` callable that shuts the server down and joins the thread (do not call it from
            the server's own thread).

        Raises:
            BaseException: Whatever :meth:`start` raised in the thread (e.g. ``OSError`` when the port is taken).
        """
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failures: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    loop.run_until_complete(self.start())
                except BaseException as exc:
                    failures.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_forever()
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

        thread = threading.Thread(target=serve, name="keyrelay-mock-upstream", daemon=True)
        thread.start()
        ready.wait()
        if failures:
            thread.join()
            raise failures[0]

        lock = threading.Lock()
        stopped = False

        def stop() -> None:
            nonlocal stopped
            with lock:
                if stopped:
                    return
                stopped = True
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(loop.stop)
            thread.join()

        return stop


def run_in_thread(
    options: MockOptions | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Run a :class:`MockUpstream` on its own event loop in a daemon thread (for synchronous tests).

    Args:
        options: Configuration; defaults to ``MockOptions()``.
        host: Interface to bind.
        port: TCP port; 0 picks a free port.

    Returns:
        ``(base_url, stop)`` where ``base_url`` is ``http://HOST:PORT/v1`` and ``stop()`` shuts the server down.
    """
    mock = MockUpstream(options, host, port)
    stop = mock.start_in_thread()
    return mock.base_url, stop


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


async def _serve(options: MockOptions, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM."""
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # pragma: no cover - Windows
            loop.add_signal_handler(sig, stop_event.set)
    async with MockUpstream(options, host, port) as mock:
        sys.stdout.write(f"keyrelay mock upstream listening on {mock.base_url}\n")
        sys.stdout.flush()
        await stop_event.wait()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m keyrelay.testing.mock_upstream [options]``; runs until SIGINT/SIGTERM.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).
    """
    defaults = MockOptions()
    parser = argparse.ArgumentParser(
        prog="python -m keyrelay.testing.mock_upstream",
        description="Mock OpenAI upstream for keyrelay tests, demos and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_CLI_PORT, help="port, 0 = any (default: %(default)s)")
    parser.add_argument("--delay-ms", type=float, default=defaults.delay_ms, help="delay before every answer")
    parser.add_argument("--slow-ms", type=float, default=defaults.slow_ms, help="delay for 'slow-ttfb' models")
    parser.add_argument("--expected-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument(
        "--models", default=",".join(defaults.models), help="comma-separated model ids listed by /v1/models"
    )
    parser.add_argument("--reply-words", type=int, default=defaults.reply_words, help="words per reply")
    args = parser.parse_args(argv)
    options = MockOptions(
        delay_ms=args.delay_ms,
        slow_ms=args.slow_ms,
        expected_key=args.expected_key,
        models=tuple(model.strip() for model in args.models.split(",") if model.strip()),
        reply_words=args.reply_words,
    )
    asyncio.run(_serve(options, args.host, args.port))


if __name__ == "__main__":
    main()
