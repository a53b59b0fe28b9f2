"""Serving the mock upstream: the routes of every wire, the server wrappers and the command line.

:func:`create_mock_app` builds the application, :class:`MockUpstream` serves it in the running loop,
:func:`run_in_thread` in a daemon thread, and :func:`main` is ``python -m keyrelay.testing.mock_upstream``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import threading
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Final

from aiohttp import web

from keyrelay.testing.mock_upstream.anthropic import AnthropicWire
from keyrelay.testing.mock_upstream.completions import CompletionsHandler
from keyrelay.testing.mock_upstream.core import MockOptions, MockState, RecordedRequest
from keyrelay.testing.mock_upstream.embeddings import EmbeddingsHandler
from keyrelay.testing.mock_upstream.gemini import GeminiWire
from keyrelay.testing.mock_upstream.openai import OpenAIWire
from keyrelay.testing.mock_upstream.responses import ResponsesWire

DEFAULT_CLI_PORT: Final = 8099
SHUTDOWN_TIMEOUT_S: Final = 1.0


def _shutdown_timeout() -> float:
    # Read from the package at start-up, so that a test may monkeypatch ``mock_upstream._SHUTDOWN_TIMEOUT_S``.
    from keyrelay.testing import mock_upstream

    return float(getattr(mock_upstream, "_SHUTDOWN_TIMEOUT_S", SHUTDOWN_TIMEOUT_S))


class _ModelsByWire:
    """``GET /v1/models[/{id}]``, shared by three wires.

    Anthropic's shape when the request carries ``anthropic-version``, Gemini's when it carries ``x-goog-api-key`` or
    ``?key=``, else OpenAI's.
    """

    def __init__(self, openai: OpenAIWire, anthropic: AnthropicWire, gemini: GeminiWire) -> None:
        self._openai, self._anthropic, self._gemini = openai, anthropic, gemini

    def _wire(self, request: web.Request) -> OpenAIWire | AnthropicWire | GeminiWire:
        if "anthropic-version" in request.headers:
            return self._anthropic
        if "x-goog-api-key" in request.headers or "key" in request.query:
            return self._gemini
        return self._openai

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """List the models in the caller's wire's shape."""
        return await self._wire(request).list_models(request)

    async def retrieve_model(self, request: web.Request) -> web.StreamResponse:
        """Describe one model in the caller's wire's shape."""
        return await self._wire(request).retrieve_model(request)


MOCK_KEY: Final = web.AppKey("keyrelay_mock", MockState)
"""Typed application key of the :class:`MockState` (``app[MOCK_KEY]``)."""


def create_mock_app(options: MockOptions | None = None) -> web.Application:
    """Create the mock OpenAI application.

    The state is available as ``app[MOCK_KEY]`` (typed) and, for convenience, ``app["mock"]``.

    Routes: OpenAI ``/v1/chat/completions``, ``/v1/responses`` (the Responses API), ``/v1/completions`` (legacy
    text completions), ``/v1/embeddings``; Anthropic ``/v1/messages``,
    ``/v1/messages/count_tokens``; Gemini ``/{v1beta|v1}/models/{model}:{generateContent|streamGenerateContent|
    countTokens}`` and ``GET /v1beta/models[/{model}]``; ``GET /v1/models[/{id}]`` answers in Anthropic's shape when
    the request carries ``anthropic-version``, Gemini's with ``x-goog-api-key`` or ``?key=``, else OpenAI's.

    Fault injection, by substring of the requested model id (chat and embeddings):

    * ``fail-429`` -> 429 ``rate_limit_exceeded`` (type ``requests``) with ``retry-after: 1``;
    * ``fail-500`` / ``fail-503`` -> 500 / 503 ``server_error``; ``fail-400`` -> 400 ``invalid_request_error``;
    * ``slow-ttfb`` -> waits ``options.slow_ms`` before answering;
    * ``hang`` -> never answers (until the client disconnects or the server shuts down);
    * ``held`` -> answers normally once the test calls :meth:`MockState.release` for it (requests are numbered
      in arrival order in :attr:`MockState.held`); dropped if the server shuts down first;
    * ``cut-stream`` -> streaming: role chunk + 3 content chunks, then the connection is aborted without
      ``[DONE]``; non-streaming: the connection is aborted without a response;
    * ``no-usage`` -> no ``usage`` in the JSON answer, no usage chunk (nor ``"usage": null``) in streams
      (Responses: ``"usage": null``);
    * ``paced`` -> streams with 20 ms before the first chunk and 5 ms between chunks;
    * ``fail-NNN`` (any other 4xx/5xx) -> that status in the wire's error shape (Anthropic ``fail-529`` is
      ``overloaded_error``); ``prompt-too-long`` -> the wire's context-length 400;
    * ``stream-error`` -> streaming: 3 content deltas, then the wire's in-stream error (OpenAI ``data: {"error"}``
      without ``[DONE]``, Responses ``response.failed`` with ``error.code: "server_error"``, Anthropic
      ``event: error`` ``overloaded_error``, Gemini a ``{"error"}`` 503 chunk);
    * ``early-stream-error`` / ``early-cut-stream`` -> the same before any content (Responses and Anthropic: after
      their opening events, ``response.created`` + ``response.in_progress`` / ``message_start``).

    The same names work on the Anthropic and Gemini routes, in their error shapes; :mod:`.behaviour` lists the
    names that change the answer (``parallel``, ``cache-hit``, ``cache-write``, ``safety``, ``blocked-prompt``).

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
    openai, anthropic, gemini = OpenAIWire(state), AnthropicWire(state), GeminiWire(state)
    models = _ModelsByWire(openai, anthropic, gemini)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_post("/v1/responses", ResponsesWire(openai).responses)
    app.router.add_post("/v1/completions", CompletionsHandler(openai).completions)
    app.router.add_post("/v1/embeddings", EmbeddingsHandler(openai).embeddings)
    app.router.add_post("/v1/messages", anthropic.messages)
    app.router.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
    app.router.add_post(r"/{version:v1beta|v1}/models/{model:[^/:]+}:{method:[A-Za-z]+}", gemini.model_action)
    app.router.add_get("/v1beta/models", gemini.list_models, allow_head=False)
    app.router.add_get("/v1beta/models/{model:[^/:]+}", gemini.retrieve_model, allow_head=False)
    app.router.add_get("/v1/models", models.list_models, allow_head=False)
    app.router.add_get("/v1/models/{model:.+}", models.retrieve_model, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", openai.not_found)
    app.on_shutdown.append(state.on_shutdown)
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
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=_shutdown_timeout()
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
