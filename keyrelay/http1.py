"""keyrelay's HTTP/1.1 server protocol (RFC 9112) for its ASGI app: httptools' parser, served by uvicorn's ``Server``.

It replaces uvicorn's httptools protocol and the wrappers keyrelay had put around it (docs/benchmarks.md,
"2026-12-07, the HTTP protocol"): per request, no ``asyncio.Event``, no scope built from a dict of defaults,
response header names checked once per name and values with one search per response instead of two pattern
searches per header, the head written with the first body bytes, and no keep-alive timer armed and cancelled per
response. The same parser (llhttp, through httptools, as uvicorn and Node.js), the same ASGI messages, and
uvicorn's ``Server`` around it (sockets, workers, signals, lifespan, graceful shutdown: it waits for the
connections and tasks this protocol registers in its ``ServerState``).

Per connection:

- **Requests.** Parsed as they arrive; a malformed request, or an HTTP/1.1 one without ``Host`` (RFC 9112 §3.2), is
  answered ``400`` (a JSON error body, ``connection: close``) and the connection closed; if responses to earlier
  requests are still being made, after them. Each request's app call is a task in the server's task set.
  Pipelined requests wait for the response before theirs (reading pauses meanwhile); more than ``MAX_PIPELINED``
  waiting get ``503`` and the connection closed. The request target's path is percent-decoded into ``path``
  (UTF-8); ``raw_path`` is the target's path as sent and ``query_string`` its query (an absolute-form target keeps
  only those parts). Header names are lowered and trailing whitespace dropped from values (RFC 9110 §5.5);
  trailer fields of a chunked body are not merged into them (RFC 9110 §6.5.1). The request line and headers, and
  the trailers, over ``max_header_bytes`` are answered ``431`` and the connection closed; an unfinished field (which
  the parser holds whole) is refused within ``max_header_bytes`` and one read.
- **Request bodies.** Handed to ``receive()`` as they arrive (the first piece without a copy); reading pauses
  while more than 64 KiB wait unread. ``Expect: 100-continue`` (HTTP/1.1 only, RFC 9110 §10.1.1) is answered when
  the app first asks for the body; a response started without asking closes the connection after it. Once the
  whole body was handed over, ``receive()`` waits for the response's end or the client's disconnect
  (``http.disconnect``), as the ASGI spec asks; tasks waiting in ``receive()`` at once are each told. A malformed
  body while the app reads it is a disconnect for the app (and a ``400`` for the client if no response started).
- **Responses.** The status line and headers go out with the first body bytes in one write, or alone at the end
  of the event-loop tick when no body follows in it. Header names and values are checked (RFC 9110 §5.1, §5.5:
  names are tokens, no control characters but tab in values). The framing headers are this protocol's to write
  (RFC 9112 §6): a transfer coding wins over a ``content-length``, two different lengths are an error, a length is
  held to (an app writing more or less is an error: the connection is closed); without either, the chunked
  coding (RFC 9112 §7.1), or for an HTTP/1.0 client the body up to the connection's close. HEAD and 304 responses
  carry their framing headers and no body, 1xx and 204 neither. HTTP/1.0 clients, ``connection: close`` (either
  side) and upgrade requests (keyrelay switches to no other protocol: answered as plain HTTP, or ``400`` if they
  carry a body, which httptools does not hand over) close the connection after the response.
- **Client EOF.** A client that shuts its sending side (a half-close, or a close: the server cannot tell them
  apart) gets the responses the app makes to the requests received whole, then the connection closes; each such
  request is told ``http.disconnect`` once it has its body, so an app that watches for one stops as it would for a
  client gone; meanwhile the connection stays open and counts against the cap. A request whose body was cut off is
  told its client is gone if in progress, and dropped if it waits behind others. Idle, with a refusal pending, or
  over TLS, the connection closes at once.
- **Flow control.** A ``send()`` waits while the transport's write buffer is above its high-water mark.
- **Bounds** (``keyrelay.connections``): the header timeout (``408``), the idle keep-alive timeout and the send
  timeout, kept by one sweep timer per server rather than a timer per request or connection; the connection cap
  (``503``), checked as each request's headers complete.

uvicorn's access log is not written by this protocol (keyrelay never turns it on: ``server.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import http
import logging
import re
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import httptools
import orjson
import uvicorn
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from keyrelay.asgi import ASGIApp, Headers, Message, Receive, Scope, Send, new_request_id, send_error
from keyrelay.connections import (
    CONNECTION_LIMITS,
    SEND_TIMEOUT_S,
    ClockSweep,
    ConnectionLimits,
    closing_answer,
    over_capacity,
    timeout_response,
)
from keyrelay.errors import ErrorType, GatewayError

log = logging.getLogger("keyrelay.http")

_HIGH_WATER = 64 * 1024  # request body bytes held unread before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NAME_INVALID = re.compile(rb'[\x00-\x20\x7f-\xff()<>@,;:\\"/\[\]?={}]')  # RFC 9110 §5.6.2: tchar only
_VALUE_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 §5.5: VCHAR, obs-text, SP, HTAB
_NO_BODY_STATUS = frozenset((204, 304))
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
MAX_PIPELINED = 32  # requests parsed and waiting behind the one in progress; beyond, 503 and close


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def _malformed() -> bytes:
    return closing_answer(400, GatewayError(ErrorType.INVALID_REQUEST, "The request is not valid HTTP/1.1."))


def _headers_too_large(limit: int) -> bytes:
    err = GatewayError(ErrorType.HEADERS_TOO_LARGE, f"The request line and headers exceed {limit} bytes.")
    return closing_answer(431, err)


_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_NAMES: dict[bytes, bytes] = {}  # response header names seen, each to its lowered form (checked once)
_MAX_NAMES = 1024


def _checked_name(raw: bytes) -> bytes:
    """``raw`` lowered, after checking it is a token (RFC 9110 §5.1); remembered for the next responses."""
    if not raw or _NAME_INVALID.search(raw):
        raise RuntimeError(f"Invalid HTTP header name {raw!r}.")
    name = raw.lower()
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = name
    return name


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bytes, bool]:
    """(content-length, transfer codings, close) from a response's framing headers, in the order the app gave them.

    Raises:
        RuntimeError: A content-length that is not a decimal number, or two that differ (RFC 9110 §8.6).
    """
    length: int | None = None
    coding = b""
    close = False
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise RuntimeError(f"Invalid content-length {value!r}.")
            if length is None:
                length = int(value)
            elif int(value) != length:
                raise RuntimeError("Conflicting content-length values.")
        elif name == b"transfer-encoding":
            coding = coding + b", " + value if coding else value
        elif b"close" in (token.strip().lower() for token in value.split(b",")):  # connection
            close = True
    return length, coding, close


def _has_body(headers: Headers) -> bool:
    """Whether request ``headers`` announce a body (a transfer coding, or a content-length other than 0)."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0") != b"")
        for name, value in headers
    )


async def _upgrade_with_body(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to an upgrade request with a body (see ``HttpProtocol.on_headers_complete``)."""
    err = GatewayError(
        ErrorType.INVALID_REQUEST,
        "keyrelay does not switch protocols, and cannot read the body of a request that asks it to (Upgrade); "
        "send the request without the Upgrade header.",
    )
    await send_error(send, err, new_request_id(), [(b"connection", b"close")])


class _HeadersTooLarge(Exception):
    """Raised in a parser callback when the request line and headers pass ``max_header_bytes``."""


class _Refused(Exception):
    """Raised in a parser callback for a request answered without the app: ``answer`` (whole, then close)."""

    def __init__(self, answer: bytes) -> None:
        super().__init__(answer.split(b"\r\n", 1)[0].decode("ascii"))
        self.answer = answer


def _too_many_pipelined() -> bytes:
    err = GatewayError(
        ErrorType.SERVICE_UNAVAILABLE,
        f"More than {MAX_PIPELINED} requests wait on this connection; send them after their answers.",
        retry_after=1,
    )
    return closing_answer(503, err)


def _no_host() -> bytes:
    return closing_answer(400, GatewayError(ErrorType.INVALID_REQUEST, "An HTTP/1.1 request must carry a Host header."))


def _wake(waiter: asyncio.Future[None], _done: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Cycle:
    """One request and its response: the ``receive`` and ``send`` of one ASGI app call."""

    __slots__ = (
        "conn",
        "transport",
        "scope",
        "body",
        "more_body",
        "delivered",
        "waiter",
        "disconnected",
        "client_done",
        "told_done",
        "keep_alive",
        "expect_100",
        "head_only",
        "until_close",
        "started",
        "complete",
        "chunked",
        "remaining",
        "held",
        "flush",
    )

    def __init__(
        self, conn: HttpProtocol, scope: dict[str, Any], keep_alive: bool, expect_100: bool, until_close: bool
    ) -> None:
        self.conn = conn
        self.transport = conn.transport
        self.scope = scope
        self.body: bytes | bytearray = b""  # received, not yet handed to the app
        self.more_body = True  # the request's body is not complete yet
        self.delivered = False  # the app has been handed the body's end
        self.waiter: asyncio.Future[None] | None = None  # a receive() waiting for news
        self.disconnected = False
        self.client_done = False  # the client shut its sending side (EOF): it may still read the response
        self.told_done = False  # receive() answered http.disconnect for that EOF
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.head_only = scope["method"] == "HEAD"
        self.until_close = until_close  # an HTTP/1.0 client: a body without a length ends with the connection
        self.started = False
        self.complete = False
        self.chunked = False
        self.remaining: int | None = None  # content-length bytes still owed; None: no length
        self.held: bytes | None = None  # the head, until the first body bytes (or the end of the tick)
        self.flush: asyncio.Handle | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self, app: ASGIApp) -> None:
        """Call the app; an error before the response started gets a 500, after it the connection is closed."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                log.debug("request task cancelled")
            else:
                log.error("Exception in ASGI application", exc_info=exc)
            if not self.started and not self.disconnected:
                await self._send_500()
            elif not self.complete:
                self.close()
            return
        if self.disconnected or self.complete:
            return
        if self.told_done:  # the app stopped at the disconnect it was told after the client's EOF: no fault of its
            self.close()
        elif not self.started:
            log.error("ASGI callable returned without starting a response.")
            await self._send_500()
        else:
            log.error("ASGI callable returned without completing its response.")
            self.close()

    async def _send_500(self) -> None:
        body = orjson.dumps(GatewayError(ErrorType.INTERNAL_ERROR).to_body(new_request_id()))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await self.send({"type": "http.response.start", "status": 500, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    def over(self) -> bool:
        """Whether what is left for ``receive()`` is ``http.disconnect``.

        So it is once the client is gone, once the response is complete, and once the client shut its sending side
        (EOF) after its whole body was handed over: a server cannot tell that half-close from a client that closed
        and went away, so an app watching for a disconnect (keyrelay's streams: ``tasks.DisconnectWatch``) is told
        one, while a response the app makes regardless still goes out.
        """
        return self.disconnected or self.complete or (self.client_done and self.delivered)

    async def receive(self) -> Message:
        """The next ASGI request message: body bytes as they arrive, then ``http.disconnect`` at the end."""
        if self.expect_100:
            self.expect_100 = False
            if not self.transport.is_closing():
                self.transport.write(_CONTINUE)
        while not self.body and not self.over() and (self.more_body or self.delivered):
            conn = self.conn
            if not conn.pipeline:
                conn.resume_reading()
            waiter = conn.loop.create_future()
            earlier = self.waiter
            if earlier is not None and not earlier.done():
                # Another task waits in receive() too: waking (or cancelling) this one wakes it as well, and it
                # looks again for news, so that neither waits for ever (the loop above).
                waiter.add_done_callback(functools.partial(_wake, earlier))
            self.waiter = waiter
            try:
                await waiter
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        if self.over():
            if not (self.disconnected or self.complete):
                self.told_done = True
            return {"type": "http.disconnect"}
        body = self.body
        self.body = b""
        more = self.more_body
        if not more:
            self.delivered = True
        elif self.conn.reading_paused and not self.conn.pipeline:
            self.conn.resume_reading()
        return {"type": "http.request", "body": body if type(body) is bytes else bytes(body), "more_body": more}

    async def send(self, message: Message) -> None:
        """Write an ASGI response message (``http.response.start``, then ``http.response.body`` until the last)."""
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            self._start_response(message)
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} sent, after the response was complete.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {kind!r}.")
        more = message.get("more_body", False)
        data = self._frame(message.get("body", b""), more)
        held = self.held
        transport = self.transport
        if held is not None:
            self.held = None
            self.flush.cancel()  # type: ignore[union-attr]
            self.flush = None
            if data:
                transport.writelines((held, data))  # one send for both
            else:
                transport.write(held)
        elif data:
            transport.write(data)
        if not more:
            if self.remaining and not self.head_only:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            if not self.keep_alive:
                transport.close()
            conn.response_complete(self)

    def _start_response(self, message: Message) -> None:
        """Hold the response's head until its first body bytes, or until the end of this event-loop tick."""
        if message["type"] != "http.response.start":
            raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {message['type']!r}.")
        if self.expect_100 and self.more_body:
            # Answered without asking for the body: the client may or may not send it now (RFC 9110 §10.1.1), so
            # what follows on the connection cannot be told apart; it is closed after this response.
            self.keep_alive = False
        self.held = self._head(message["status"], message.get("headers", ()))
        self.started = True
        self.expect_100 = False
        self.flush = self.conn.loop.call_soon(self._write_held)

    def _frame(self, body: bytes, more: bool) -> bytes:
        """``body`` as it goes on the wire, counted against the content-length if there is one.

        Nothing for HEAD; in the chunked coding, a chunk, and the last chunk too when ``more`` is false.

        Raises:
            RuntimeError: More bytes than the content-length announced.
        """
        if self.head_only:
            return b""
        if self.chunked:
            if body:
                return b"%x\r\n%b\r\n" % (len(body), body) if more else b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
            return b"" if more else b"0\r\n\r\n"
        remaining = self.remaining
        if remaining is not None:
            if len(body) > remaining:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining = remaining - len(body)
        return body

    def _head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers of a response, with the framing headers this protocol decides (RFC 9112 §6).

        Raises:
            RuntimeError: A status outside 100-599, a header name or value not allowed (RFC 9110 §5.1, §5.5), or
                a ``content-length`` that is not a number or differs from another.
        """
        line = _STATUS_LINES.get(status)
        if line is None:
            raise RuntimeError(f"Invalid HTTP status code {status!r}.")
        parts = [line]
        values: list[bytes] = []
        framing: list[tuple[bytes, bytes]] = []
        for raw_name, value in (*self.conn.server_state.default_headers, *headers):
            name = _NAMES.get(raw_name) or _checked_name(raw_name)
            values.append(value)
            if name in _FRAMING:
                framing.append((name, value))  # written below, once the framing is decided
            else:
                parts += (name, b": ", value, b"\r\n")
        if _VALUE_INVALID.search(b"".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        parts += self._framing_headers(status, framing)
        parts.append(b"\r\n")
        return b"".join(parts)

    def _framing_headers(self, status: int, framing: list[tuple[bytes, bytes]]) -> list[bytes]:
        """Decide how the body is framed and whether the connection stays open; the headers that say so.

        RFC 9112 §6: a transfer coding wins over a content-length (which is then not sent); the chunked coding is
        this protocol's to apply; without either, the chunked coding for an HTTP/1.1 client and the end of the
        connection for an HTTP/1.0 one (which knows no transfer coding). HEAD and 304 carry the framing headers of
        the body they stand for, and no body; 1xx and 204 neither (RFC 9110 §8.6).
        """
        length, coding, close = _framing(framing) if framing else (None, b"", False)
        out: list[bytes] = []
        if self.head_only or status < 200 or status in _NO_BODY_STATUS:
            self.head_only = True
            if status >= 200 and status != 204:
                if coding:
                    out += (b"transfer-encoding: ", coding, b"\r\n")
                elif length is not None:
                    out.append(b"content-length: %d\r\n" % length)
        elif coding and not self.until_close:
            out += (b"transfer-encoding: ", coding, b"\r\n")
            if coding.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                self.chunked = True
            else:
                close = True  # a body in another coding ends with the connection
        elif length is not None and not coding:
            self.remaining = length
            out.append(b"content-length: %d\r\n" % length)
        elif self.until_close:
            close = True
        else:
            self.chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        if close:
            self.keep_alive = False
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        else:
            out += (part for name, value in framing if name == b"connection" for part in (name, b": ", value, b"\r\n"))
        return out

    def _write_held(self) -> None:
        self.flush = None
        held, self.held = self.held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        """Write what is held, then close the connection."""
        self._write_held()
        self.transport.close()


class HttpProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests in, ASGI app calls, responses out (see the module doc).

    Constructed by uvicorn's ``Server`` for each connection, as its own protocols are: ``config`` (with the
    ``ConnectionLimits`` that ``bounded_config`` put on it), the server's shared ``ServerState`` (its connections and
    tasks, which a graceful shutdown waits for) and the lifespan's state (copied into each request's scope).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self.fresh_context = bool(getattr(config, "reset_contextvars", False))
        limits: ConnectionLimits = getattr(config, CONNECTION_LIMITS, None) or ConnectionLimits()
        self.limits = limits
        self.keepalive_timeout_s = float(config.timeout_keep_alive)
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # answer the request before a close
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.reading_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.pipeline: deque[tuple[_Cycle, ASGIApp]] = deque()  # parsed requests waiting for the active one
        self.cycle: _Cycle | None = None  # the request last parsed (bodies go to it)
        self.active: _Cycle | None = None  # the request whose response is being made
        # The request being parsed.
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0  # its request line and headers so far, counted as the parser hands them over
        self._headers_done = False  # later fields are trailers
        self._host = False  # a Host header came
        # The parser holds the bytes of an unfinished field: of a head, a chunk size line or the trailers.
        self._in_framing = True  # the next bytes are such bytes (the first request's head)
        self._head_reads = 0  # bytes of the reads that began in the unfinished framing
        self.max_header_bytes = limits.max_header_bytes
        self._refusal: bytes | None = None  # an answer to write after the responses in progress, then close
        self.stopped = False  # nothing more is read: a refusal is pending, an upgrade, or the client's EOF
        self._paused_since: float | None = None  # loop time the transport's buffer filled
        self._expect_100 = False
        # The bounds' clocks (loop time), visited by the sweep: None when not running.
        self.headers_since: float | None = None  # awaited request headers
        self.idle_since: float | None = None  # an idle keep-alive connection
        self._closing_since: float | None = None  # first seen closing by the sweep

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Register the connection with the server and start its first request's header clock."""
        self.connections.add(self)
        self.transport = transport
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.headers_since = self.loop.time()
        ClockSweep.watch(self.server_state, self.loop, self.connections, self.limits, self.keepalive_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the requests in progress that their client is gone, and let waiting writers go on."""
        self.connections.discard(self)
        self.headers_since = self.idle_since = None
        for cycle in (self.active, self.cycle):
            if cycle is not None and not cycle.complete:
                cycle.disconnected = True
                cycle.wake()
        self.pipeline.clear()
        self.cycle = self.active = None
        self.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None  # type: ignore[assignment]  # it holds this protocol's methods: no cycle left to collect

    def eof_received(self) -> bool | None:
        """The client shut its sending side: requests received whole are still answered, then the connection closes.

        An EOF may be a client that closed and went away or one that half-closed once its requests were sent and still
        reads: the server cannot tell them apart (uvicorn's protocols close at once, losing the latter's responses;
        Node.js keeps such a connection open only when asked, ``allowHalfOpen``). Kept open for writing: each request
        received whole is told ``http.disconnect`` once it has its body (``_Cycle.over``), so an app watching for one
        stops as before, while a response the app makes regardless goes out; the last one closes the connection. A
        request whose body was still arriving can never end: the connection closes at once when it is the one in
        progress (its app is told its client is gone), and it is dropped while it waits behind others. Idle, with a
        refusal pending, or over TLS (whose transports in asyncio and uvloop do not stay open after an EOF), the
        connection closes at once.

        Returns:
            True to keep the transport open for the responses, None to have it closed.
        """
        if self.scheme == "https" or self._refusal is not None:
            return None
        cycle, pipeline = self.cycle, self.pipeline
        if cycle is not None and cycle.more_body and not cycle.complete:  # its body ends nowhere
            if pipeline and pipeline[-1][0] is cycle:
                pipeline.pop()  # never started
            elif cycle is self.active:
                return None  # closed: connection_lost tells the request its client is gone
        last = pipeline[-1][0] if pipeline else self.active
        if last is None or last.complete:
            return None
        # Nothing more is read: ``stopped`` keeps resume_reading from asking the transport to read again (it would
        # report the EOF again at once, for ever).
        self.stopped = True
        self.headers_since = self.idle_since = None
        last.keep_alive = False  # the last response closes the connection
        for waiting in (self.active, *(queued for queued, _ in pipeline)):
            if waiting is not None:
                waiting.client_done = True
                waiting.wake()
        return True

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a malformed request is answered 400 and the connection closed."""
        if self.stopped:
            return  # a refusal is pending, or the rest is another protocol's: nothing more is parsed
        if self._in_framing:
            self._head_reads += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The bytes after the headers belong to another protocol, which keyrelay does not serve: the request
            # is answered as plain HTTP, and the connection closed after it (on_headers_complete saw to that).
            self.stopped = True
            self.pause_reading()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadersTooLarge):
                answer = _headers_too_large(self.max_header_bytes)
            elif isinstance(cause, _Refused):
                answer = cause.answer
            else:
                if cause is not None:  # a fault of this protocol, not of the request: logged as one
                    log.warning("HTTP parser callback failed", exc_info=cause)
                answer = _malformed()
            self._refuse(answer, exc)
        else:
            # A field that never ends reaches no callback (httptools holds it whole): heads, chunk size lines and
            # trailers are also bounded by the reads that began in them, which are all such bytes while one is
            # unfinished. (A read that began in a body is not counted: the bound is max_header_bytes and one read.)
            if self._in_framing and self._head_reads > self.max_header_bytes:
                self._refuse(_headers_too_large(self.max_header_bytes), _HeadersTooLarge())

    def pause_writing(self) -> None:
        """The transport's write buffer is full: sends wait (for at most ``SEND_TIMEOUT_S``: see ``overdue``)."""
        self.write_paused = True
        self._paused_since = self.loop.time()

    def resume_writing(self) -> None:
        """The write buffer drained: waiting sends go on."""
        self.write_paused = False
        self._paused_since = None
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        """A request's first byte: its header clock starts (the first request's started with the connection)."""
        self.idle_since = None
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._headers_done = False
        self._host = False
        self._expect_100 = False
        if self.headers_since is None:
            self.headers_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        """One request header: its name lowered, trailing whitespace dropped from its value (RFC 9110 §5.5)."""
        self._header_bytes += len(name) + len(value) + 4  # with ": " and CRLF
        if self._header_bytes > self.max_header_bytes:
            raise _HeadersTooLarge
        if self._headers_done:
            return  # a trailer field: counted, not merged into the header section (RFC 9110 §6.5.1)
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"host":
            self._host = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The headers are in: build the ASGI scope and start the app (or queue it behind the active request)."""
        self.headers_since = None
        self._in_framing = False
        self._headers_done = True
        parser = self.parser
        version = parser.get_http_version()
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        # The request line (method, target, version, three separators) and the blank line after the headers.
        if self._header_bytes + len(method) + 14 > self.max_header_bytes:
            raise _HeadersTooLarge
        if not self._host and version == "1.1":
            raise _Refused(_no_host())  # RFC 9112 §3.2
        url = self._url
        if url[:1] == b"/" and b"?" not in url and b"%" not in url and b"#" not in url:
            raw_path, query = url, b""
            path = url.decode("ascii")
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"", parsed.query or b""
            path = raw_path.decode("ascii")
            if "%" in path:
                path = unquote(path)
        if self.root_path:
            path = self.root_path + path
            raw_path = self.root_path.encode("ascii") + raw_path
        scope = {
            "type": "http",
            "asgi": self.asgi,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": self.root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.app_state.copy(),
        }
        upgrade = parser.should_upgrade()
        keep_alive = version == "1.1" and parser.should_keep_alive() and not upgrade
        # RFC 9110 §10.1.1: an HTTP/1.0 client's 100-continue expectation is ignored.
        cycle = _Cycle(self, scope, keep_alive, self._expect_100 and version == "1.1", until_close=version != "1.1")
        app = self.app
        if upgrade and _has_body(self._headers):
            # httptools hands over no body of an upgrade request (the bytes after its head are the new protocol's),
            # and keyrelay switches to no other protocol: refused rather than served with its body missing.
            app = _upgrade_with_body
        elif len(self.connections) > self.limits.max_connections:
            log.warning(
                "%d connections open, over the cap of %d: answering 503",
                len(self.connections),
                self.limits.max_connections,
            )
            app = over_capacity
        self.cycle = cycle
        active = self.active
        if active is None or active.complete:
            self._start(cycle, app)
        elif len(self.pipeline) < MAX_PIPELINED:  # pipelined: after the response in progress
            self.pause_reading()
            self.pipeline.append((cycle, app))
        else:
            raise _Refused(_too_many_pipelined())

    def on_body(self, body: bytes) -> None:
        """A piece of the request body, for the last parsed request (dropped once its response is complete)."""
        self._in_framing = False
        cycle = self.cycle
        if cycle is None or cycle.complete:
            return
        held = cycle.body
        if not held:
            cycle.body = body
        elif type(held) is bytearray:
            held += body
        else:
            cycle.body = bytearray(held) + body
        if len(cycle.body) > _HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_chunk_header(self) -> None:
        """A chunk's size line was read: until its data, or in the trailers after the last one, bytes are framing."""
        self._in_framing, self._head_reads = True, 0

    def on_message_complete(self) -> None:
        """The request's body is complete."""
        self._in_framing, self._head_reads = True, 0  # whatever follows is the next request's head
        cycle = self.cycle
        if cycle is None or cycle.complete:
            return
        cycle.more_body = False
        cycle.wake()

    # The requests' side

    def _start(self, cycle: _Cycle, app: ASGIApp) -> None:
        self.active = cycle
        coro = cycle.run(app)
        task = (
            self.loop.create_task(coro, context=contextvars.Context())
            if self.fresh_context
            else self.loop.create_task(coro)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def response_complete(self, cycle: _Cycle) -> None:
        """``cycle``'s response is out: start the next pipelined request, or start the idle clock."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            self._start(*self.pipeline.popleft())
        elif self._refusal is not None:
            self.transport.write(self._refusal)
            self.transport.close()
            return
        elif self.headers_since is None:  # no next request's head under way (its own clock runs)
            self.idle_since = self.loop.time()  # a body still arriving after its answer must end within this too
        if self.reading_paused:
            self.resume_reading()

    def pause_reading(self) -> None:
        """Stop reading from the client (a full body buffer, a pipelined request waiting)."""
        if not self.reading_paused and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the client again (not once a refusal is pending, after an upgrade, or after the client's EOF)."""
        if self.reading_paused and not self.stopped:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark (or the client is gone)."""
        if self.write_paused:
            drain = self._drain
            if drain is None or drain.done():
                drain = self._drain = self.loop.create_future()
            await asyncio.shield(drain)  # one waiter cancelled (its client gone) leaves the others waiting

    def _refuse(self, answer: bytes, exc: Exception) -> None:
        """Answer a request that cannot be served (400, 431) and close the connection.

        A request whose body is malformed while its app reads it is told its client is gone (``http.disconnect``),
        and gets the answer if its response has not started. A malformed request behind others gets its answer after
        their responses.
        """
        log.info("refused a request from %s: %s", self.client[0] if self.client else "?", exc)
        self.headers_since = None
        self._in_framing = False
        transport = self.transport
        cycle, active = self.cycle, self.active
        if cycle is not None and cycle.more_body and not cycle.complete:  # its body is the malformed part
            if cycle is active:
                cycle.disconnected = True
                cycle.wake()
                if not cycle.started and not transport.is_closing():
                    transport.write(answer)
                transport.close()
                return
            if self.pipeline and self.pipeline[-1][0] is cycle:
                self.pipeline.pop()  # never started: it is the one answered
        if active is not None and not active.complete:
            self._refusal = answer
            self.stopped = True
            self.pause_reading()
            return
        if not transport.is_closing():
            transport.write(answer)
            transport.close()

    # The server's side

    def shutdown(self) -> None:
        """Graceful shutdown (uvicorn's ``Server``): close now if idle, else after the response in progress."""
        active = self.active
        if active is None or active.complete:
            self.transport.close()
        else:
            active.keep_alive = False

    def overdue(self, now: float) -> None:
        """Close the connection if a clock of it is past its timeout at ``now`` (loop time).

        Headers late: a 408 first. A pipelined request's headers that wait behind a response still being sent
        (reading is paused meanwhile) get their clock started again instead. Idle past the keep-alive timeout:
        closed. A client that reads nothing for ``SEND_TIMEOUT_S`` while a send waits, or while the connection
        closes with bytes still to send: aborted.
        """
        transport = self.transport
        if transport.is_closing():
            if self._closing_since is None:
                self._closing_since = now
            elif now - self._closing_since >= SEND_TIMEOUT_S:
                transport.abort()
            return
        paused = self._paused_since
        if paused is not None and now - paused >= SEND_TIMEOUT_S:
            log.info("aborted a connection whose client read nothing for %.0f s", now - paused)
            transport.abort()
            return
        since = self.headers_since
        if since is not None and now - since >= self.limits.header_timeout_s:
            active = self.active
            if active is not None and not active.complete:
                self.headers_since = now
                return
            self.headers_since = None
            transport.write(timeout_response())
            transport.close()
            return
        idle = self.idle_since
        if idle is not None and now - idle >= self.keepalive_timeout_s:
            self.idle_since = None
            transport.close()


def bounded_config(config: uvicorn.Config, limits: ConnectionLimits) -> uvicorn.Config:
    """``config`` serving with ``HttpProtocol`` under ``limits`` (the same object, changed)."""
    config.http = HttpProtocol
    setattr(config, CONNECTION_LIMITS, limits)
    return config
