"""Shared machinery of the mock upstream: options, recording, ids, pauses, held/hanging requests and stream writing.

Every wire module (:mod:`.openai`, :mod:`.anthropic`, :mod:`.gemini`) answers through one :class:`MockState`: it
records each request (bounded), applies the global delay and the wire-independent faults chosen by model name
(``slow-ttfb``, ``held``, ``hang``), and writes SSE streams with the ``paced`` gaps (and the ``linger`` one before
the body's end), the ``framing-*`` line endings
and the ``cut-stream`` abort. What an error or a frame looks like is the wire module's business.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from keyrelay.clock import Clock, SystemClock

REPLY_TEXT: Final = "This is a mock reply from keyrelay's test upstream."
"""The deterministic assistant reply (cycled/truncated word by word)."""

_REPLY_WORDS: Final = tuple(REPLY_TEXT.split(" "))

# Fault-injection markers (matched as substrings of the requested model id).
FAULT_429: Final = "fail-429"
FAULT_500: Final = "fail-500"
FAULT_503: Final = "fail-503"
FAULT_400: Final = "fail-400"
FAULT_STATUS: Final = re.compile(r"fail-([45]\d\d)")
FAULT_SLOW_TTFB: Final = "slow-ttfb"
FAULT_HANG: Final = "hang"
FAULT_HELD: Final = "held"
FAULT_CUT_STREAM: Final = "cut-stream"
FAULT_STREAM_ERROR: Final = "stream-error"
FAULT_EARLY: Final = "early-"  # early-stream-error, early-cut-stream: the fault before any content
FAULT_NO_USAGE: Final = "no-usage"
FAULT_PACED: Final = "paced"
# A stream whose body ends (its chunked terminator) one PACED_GAP_S after its last event, in a read of its own.
FAULT_LINGER: Final = "linger"
FAULT_PROMPT_TOO_LONG: Final = "prompt-too-long"
# SSE line endings other than LF, chosen by the model name (valid SSE, and the default of several servers).
FRAMING: Final = (("framing-crlf", b"\r\n"), ("framing-cr", b"\r"))
FAULT_REDIRECT: Final = re.compile(r"redirect-(3\d\d)")
REDIRECT_LOCATION: Final = "https://moved.upstream.example/v1"

PACED_FIRST_S: Final = 0.020
PACED_GAP_S: Final = 0.005
CUT_STREAM_CONTENT_CHUNKS: Final = 3

INVALID_JSON: Final = object()
"""Marker returned by :meth:`MockState.receive` for a body that is not JSON."""

JSON_CONTENT_TYPE: Final = "application/json"
SSE_HEADERS: Final = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}

_ID_PREFIX: Final = os.urandom(5).hex()
_id_counter = itertools.count(1)


def new_id() -> str:
    """Return a process-unique, cheap identifier suffix (10 random hex chars + a counter)."""
    return f"{_ID_PREFIX}{next(_id_counter):014x}"


@dataclass
class MockOptions:
    """Configuration of the mock upstream (read on every request, so it may be changed while running).

    Attributes:
        delay_ms: Delay added before every answer, in milliseconds.
        slow_ms: Delay applied to models containing ``slow-ttfb``, in milliseconds.
        expected_key: When set, requests must carry this key in their wire's credential (OpenAI
            ``Authorization: Bearer``, Anthropic ``x-api-key``, Gemini ``x-goog-api-key`` or ``?key=``), else the
            wire's authentication error.
        models: Model ids listed by ``GET /v1/models`` (chat/embeddings accept any model id).
        reply_words: Number of words of the (cycled) deterministic reply when no token limit applies.
        max_recorded: How many received requests are kept in :attr:`MockState.requests`.
        clock: Source of the ``created`` timestamps (whole seconds since the epoch); a test may pass a FakeClock.
        sleep: Every pause the mock makes (``delay_ms``, ``slow-ttfb``, the ``paced`` gaps) is ``await sleep(s)``
            with ``s`` in seconds. A test may pass ``FakeClock.sleep`` (time passes at once on the fake clock)
            or its own function to observe the pauses or hold the mock at one.
        fail_status: When set (400-599), every generation request answers the wire's error for this status, as
            a ``fail-NNN`` model would: a test makes a running upstream fail, then recover by setting it back
            to ``None``.
        key_status: Per provider key (as the wire carries it), the status of the error every generation request
            with that key answers (``fail-NNN``): a credential of a pool that is rate limited or refused.
    """

    delay_ms: float = 0
    slow_ms: float = 300
    expected_key: str | None = None
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    reply_words: int = len(_REPLY_WORDS)
    max_recorded: int = 1000
    clock: Clock = field(default_factory=SystemClock)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    fail_status: int | None = None
    key_status: dict[str, int] = field(default_factory=dict)


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
        anthropic_beta: The ``anthropic-beta`` values, every header and every comma-separated item, in order.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    anthropic_beta: tuple[str, ...] = ()


def reply_words(count: int) -> list[str]:
    """Return the first ``count`` words of the deterministic reply (:data:`REPLY_TEXT` cycled).

    Args:
        count: Number of words wanted (negative counts are treated as 0).

    Returns:
        The words, without separators; ``" ".join(words)`` is the reply text.
    """
    return list(itertools.islice(itertools.cycle(_REPLY_WORDS), max(count, 0)))


def text_tokens(byte_count: int, turns: int) -> int:
    """The mock's prompt-token rule, on every wire: ``ceil(byte_count / 4) + 3 * turns``."""
    return math.ceil(byte_count / 4) + 3 * turns


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None, *, request_id_header: str = "x-request-id"
) -> web.Response:
    """Serialise ``payload`` with orjson into an ``application/json`` response carrying a request id header."""
    response_headers = {request_id_header: f"req_{new_id()}"}
    if headers:
        response_headers.update(headers)
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=JSON_CONTENT_TYPE, headers=response_headers
    )


def abort_connection(request: web.Request) -> web.StreamResponse:
    """Abort the TCP connection and return a dummy response that aiohttp will quietly fail to send."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def redirect_fault(model: str) -> web.Response | None:
    """Return the ``redirect-3NN`` answer for ``model``, if it names one (the same on every wire)."""
    redirect = FAULT_REDIRECT.search(model)
    if redirect is None:
        return None
    # As a web server answers a moved endpoint (e.g. http:// to https://): an HTML body, or none for 304.
    status = int(redirect.group(1))
    body = None if status == 304 else b"<html><body>Moved</body></html>"
    return web.Response(
        status=status,
        body=body,
        content_type=None if body is None else "text/html",
        headers={"location": REDIRECT_LOCATION},
    )


def content_chunks_before_fault(model: str) -> int:
    """Content chunks a ``cut-stream`` / ``stream-error`` stream sends first: 0 for its ``early-`` form, else 3."""
    return (
        0 if FAULT_EARLY + "stream-error" in model or FAULT_EARLY + "cut-stream" in model else CUT_STREAM_CONTENT_CHUNKS
    )


def fault_status(model: str) -> int | None:
    """The HTTP status a ``fail-NNN`` model name asks for (400-599), if any."""
    match = FAULT_STATUS.search(model)
    return int(match.group(1)) if match else None


def _credential(request: web.Request) -> str | None:
    """The provider key a request carries, in any of the three wires' places."""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key") or request.query.get("key")


def _anthropic_beta(request: web.Request) -> tuple[str, ...]:
    values = request.headers.getall("anthropic-beta", [])
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


class MockState:
    """Shared state of one mock application (reachable as ``app[MOCK_KEY]`` or ``app["mock"]``).

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

    def created(self) -> int:
        """Now, in whole seconds since the epoch, from the options' clock."""
        return int(self.options.clock.now_utc().timestamp())

    def clear_requests(self) -> None:
        """Forget every recorded request."""
        self.requests.clear()

    async def on_shutdown(self, _app: web.Application) -> None:
        """Release hanging and held handlers so that shutdown never waits for them."""
        self._closing.set()
        for gate in self.held:
            gate.set()

    _on_shutdown = on_shutdown

    async def receive(self, request: web.Request) -> Any:
        """Read, parse and record the request; return the JSON body, ``None`` (no body) or :data:`INVALID_JSON`."""
        raw = await request.read() if request.body_exists else b""
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = INVALID_JSON
        requests = self.requests
        requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={name.lower(): value for name, value in request.headers.items()},
                body=None if body is INVALID_JSON else body,
                raw_body=raw,
                anthropic_beta=_anthropic_beta(request),
            )
        )
        excess = len(requests) - max(self.options.max_recorded, 0)
        if excess > 0:
            del requests[:excess]
        return body

    async def delay(self) -> None:
        """Apply the global ``delay_ms``."""
        if self.options.delay_ms > 0:
            await self.options.sleep(self.options.delay_ms / 1000)

    def fault_model(self, model: str, request: web.Request) -> str:
        """``model`` with the ``fail-NNN`` of ``options.fail_status`` (or of the request's key) added."""
        options = self.options
        status = options.fail_status
        if status is None and options.key_status:
            status = options.key_status.get(_credential(request) or "")
        return model if status is None else f"{model}-fail-{status}"

    async def wait_faults(self, request: web.Request, model: str) -> web.StreamResponse | None:
        """Apply ``slow-ttfb``, ``held`` and ``hang``; return an aborted response when the server stops first."""
        if FAULT_SLOW_TTFB in model:
            await self.options.sleep(self.options.slow_ms / 1000)
        if FAULT_HELD in model:
            # Answer only once the test releases this request (or drop it when the server shuts down),
            # so a test decides when a request finishes without sleeping.
            gate = asyncio.Event()
            self.held.append(gate)
            await gate.wait()
            if self._closing.is_set():
                return abort_connection(request)
        if FAULT_HANG in model:
            # Never answer: wait for the server to shut down (a client disconnect cancels this handler when the
            # runner uses handler_cancellation, as MockUpstream does), then drop the connection.
            await self._closing.wait()
            return abort_connection(request)
        return None

    async def write_stream(
        self,
        request: web.Request,
        model: str,
        frames: Iterable[bytes],
        *,
        cut: bool,
        tail: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> web.StreamResponse:
        """Write ``frames`` one by one (``paced`` gaps, ``framing-*`` line endings), then ``tail`` at once.

        With ``cut``, the connection is aborted after the frames instead of writing ``tail``.
        """
        response_headers = {**SSE_HEADERS, "x-request-id": f"req_{new_id()}", **(headers or {})}
        if content_type is not None:
            response_headers["content-type"] = content_type
        response = web.StreamResponse(headers=response_headers)
        await response.prepare(request)
        pause = PACED_FIRST_S if FAULT_PACED in model else 0.0
        ending = next((end for name, end in FRAMING if name in model), b"\n")
        try:
            for data in frames:
                if pause:
                    await self.options.sleep(pause)
                    pause = PACED_GAP_S
                await response.write(data if ending == b"\n" else data.replace(b"\n", ending))
            if cut:
                return abort_connection(request)
            if tail:
                await response.write(tail if ending == b"\n" else tail.replace(b"\n", ending))
            if FAULT_LINGER in model:
                await self.options.sleep(PACED_GAP_S)
        except ConnectionError:
            pass  # The client went away mid-stream; aiohttp's own write_eof then fails quietly.
        return response
