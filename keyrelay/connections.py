"""Bounded client connections: a header timeout and a per-process connection cap on uvicorn's HTTP protocol.

uvicorn's httptools protocol closes a keep-alive connection left idle after a response
(``timeout_keep_alive``), but bounds nothing before a request's headers are complete: a client that
opens a connection and sends a header line every few seconds (slowloris) is kept for ever, and nothing
bounds how many such connections one process holds. ``BoundedHttpProtocol`` adds both:

- **Header timeout.** From the moment a connection is made, and for each later request from its first
  byte, the request headers must be complete within ``header_timeout_s``; otherwise the client gets
  ``408`` (``REQUEST_TIMEOUT``, ``connection: close``) and the connection is closed. As nginx's
  ``client_header_timeout`` and Apache's ``mod_reqtimeout`` do. While a response is still being sent on the
  connection (a pipelined request behind a long stream), the clock starts again instead. One timer per
  server visits the connections four times per timeout (at most once a second), so a request pays two
  assignments for it, and a slow connection is closed within 1.25 times the timeout (or the timeout plus 1 s).
- **Connection cap.** A request whose headers complete while the process holds more than
  ``max_connections`` open connections is answered ``503`` (``SERVICE_UNAVAILABLE``, ``Retry-After: 1``,
  ``connection: close``) and its connection closed. The answer waits for the headers, as uvicorn's own
  ``limit_concurrency`` does, so that the client reads the 503 rather than a reset connection.

The limits travel on the uvicorn ``Config`` (``CONNECTION_LIMITS`` attribute, set by ``bounded_config``),
which is how they reach ``serve --workers N``'s worker processes too.

The protocol also writes each response's status line and headers together with its first body bytes
(``HeadWithBody``): uvicorn writes them on their own as soon as the application sends ``http.response.start``,
one more ``write(2)`` per response (about 6 µs of CPU on loopback), when the body nearly always follows at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keyrelay.asgi import Receive, Scope, Send, new_request_id, send_error
from keyrelay.config import Settings
from keyrelay.errors import ErrorType, GatewayError

log = logging.getLogger("keyrelay.connections")
CONNECTION_LIMITS = "keyrelay_connection_limits"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds of one process's client connections (seconds; a count)."""

    header_timeout_s: float = 10.0
    max_connections: int = 10_000


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The connection limits ``settings`` ask for (``KEYRELAY_HEADER_TIMEOUT_S``, ``KEYRELAY_MAX_CONNECTIONS``)."""
    return ConnectionLimits(header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections)


def bounded_config(config: uvicorn.Config, limits: ConnectionLimits) -> uvicorn.Config:
    """``config`` serving with ``BoundedHttpProtocol`` under ``limits`` (the same object, changed)."""
    config.http = BoundedHttpProtocol
    setattr(config, CONNECTION_LIMITS, limits)
    return config


def _timeout_response() -> bytes:
    err = GatewayError(
        ErrorType.REQUEST_TIMEOUT, "The request headers did not arrive in time; the connection is closed."
    )
    body = orjson.dumps(err.to_body(new_request_id()))
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI answer to a request that arrives while the process holds too many connections."""
    err = GatewayError(
        ErrorType.SERVICE_UNAVAILABLE,
        "This gateway process holds its maximum number of connections; try again shortly.",
        retry_after=1,
    )
    await send_error(send, err, new_request_id(), [(b"connection", b"close")])


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with a header timeout and a connection cap (see the module doc)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits: ConnectionLimits = getattr(config, CONNECTION_LIMITS, None) or ConnectionLimits()
        self._header_timeout_s = limits.header_timeout_s
        self._max_connections = limits.max_connections
        self._headers_since: float | None = None  # loop time the awaited headers' clock started; None: not waiting

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection and start its headers' clock."""
        super().connection_made(transport)
        self._headers_since = self.loop.time()
        _HeaderSweep.watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing more to wait for."""
        self._headers_since = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A request's first byte: its headers' clock starts (the first request's started with the connection)."""
        super().on_message_begin()
        if self._headers_since is None:
            self._headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        """The headers are in: stop their clock, and answer 503 instead of the app when over the cap."""
        self._headers_since = None
        if len(self.connections) <= self._max_connections:
            cycle = self.cycle
            super().on_headers_complete()
            if self.cycle is not cycle and self.cycle is not None:  # a new request (not an upgrade)
                self.cycle.transport = HeadWithBody(self.transport, self.loop)
            return
        log.warning(
            "%d connections open, over the cap of %d: answering 503", len(self.connections), self._max_connections
        )
        app = self.app
        self.app = _over_capacity
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def header_overdue(self, now: float) -> None:
        """Close the connection with a 408 if its awaited headers are later than the timeout at ``now`` (loop time)."""
        since = self._headers_since
        if since is None or now - since < self._header_timeout_s:
            return
        transport = self.transport
        if transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers wait behind a response still being sent (a long stream): uvicorn
            # stops reading meanwhile, so their clock starts again once it is done, not before.
            self._headers_since = now
            return
        self._headers_since = None
        transport.write(_timeout_response())
        transport.close()


class _HeaderSweep:
    """One timer per server, not one per request: it visits the server's connections a few times per timeout.

    A request's cost is two assignments (its headers' clock started and stopped); a connection is closed between
    ``header_timeout_s`` and that plus the sweep interval (a quarter of it, at most 1 s) after its clock started.
    """

    @staticmethod
    def watch(protocol: BoundedHttpProtocol) -> None:
        """Make sure a sweep runs for the server of ``protocol`` (started with its first connection)."""
        state = protocol.server_state
        if getattr(state, "keyrelay_header_sweep", None) is None:
            interval = min(1.0, protocol._header_timeout_s / 4)
            state.keyrelay_header_sweep = protocol.loop.call_later(  # type: ignore[attr-defined]
                interval, _HeaderSweep.sweep, protocol.loop, protocol.connections, state, interval
            )

    @staticmethod
    def sweep(loop: asyncio.AbstractEventLoop, connections: set[Any], state: Any, interval: float) -> None:
        """Close the overdue connections, then come again while any connection is open."""
        now = loop.time()
        for protocol in list(connections):
            if isinstance(protocol, BoundedHttpProtocol):
                protocol.header_overdue(now)
        state.keyrelay_header_sweep = (
            loop.call_later(interval, _HeaderSweep.sweep, loop, connections, state, interval) if connections else None
        )


class HeadWithBody(asyncio.Transport):
    """A response's view of its connection: the first write (the head) waits for the next one, within one tick.

    uvicorn's request cycle writes the status line and headers as soon as the application sends
    ``http.response.start``, and the body with each ``http.response.body``: two ``write(2)`` calls where the body
    follows at once (the gateway sends both in one event-loop tick). Here the first write is held and goes out with
    the second in one call; if no second write comes in the same tick (an application that sends its body later,
    a HEAD answer), it goes out alone at the end of that tick. Later writes pass straight through.

    uvicorn's ``RequestResponseCycle`` uses its transport for ``write``, ``close`` and ``is_closing`` only; the rest of
    the ``Transport`` interface is left to the connection's own transport, which the protocol keeps.
    """

    __slots__ = ("_transport", "_loop", "_held", "_flush")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | bytearray | memoryview | None = None
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold the first write until the next one or the end of the tick; pass the others on."""
        held = self._held
        if held is not None:
            self._held = None
            assert self._flush is not None
            self._flush.cancel()
            self._transport.writelines((held, data))  # one send for both
        elif self._flush is None:
            self._held = data
            self._flush = self._loop.call_soon(self._write_held)
        else:
            self._transport.write(data)

    def _write_held(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Write what is held, then close the connection."""
        self._write_held()
        self._transport.close()

    def is_closing(self) -> bool:
        """Whether the connection is closing or closed."""
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The connection's own transport's information (peer name, socket, ...)."""
        return self._transport.get_extra_info(name, default)
