"""Bounded client connections: the limits, their canned answers, and the one sweep timer that keeps the clocks.

The HTTP protocol (``keyrelay/http1.py``) keeps each connection's clocks; this module holds what bounds them:

- **Header timeout.** From the moment a connection is made, and for each later request from its first
  byte, the request headers must be complete within ``header_timeout_s``; otherwise the client gets
  ``408`` (``REQUEST_TIMEOUT``, ``connection: close``) and the connection is closed. As nginx's
  ``client_header_timeout`` and Apache's ``mod_reqtimeout`` do. While a response is still being sent on the
  connection (a pipelined request behind a long stream), the clock starts again instead.
- **Idle keep-alive timeout.** A connection left idle after a response for ``keepalive_timeout_s``
  (uvicorn's ``timeout_keep_alive``, ``KEYRELAY_KEEPALIVE_TIMEOUT_S``) is closed.
- **Header size.** A request line and headers over ``max_header_bytes`` are answered ``431``
  (``HEADERS_TOO_LARGE``) and the connection closed (nginx's ``large_client_header_buffers``, Node.js'
  ``maxHeaderSize``).
- **Connection cap.** A request whose headers complete while the process holds more than
  ``max_connections`` open connections is answered ``503`` (``SERVICE_UNAVAILABLE``, ``Retry-After: 1``,
  ``connection: close``) and its connection closed. The answer waits for the headers, as uvicorn's own
  ``limit_concurrency`` does, so that the client reads the 503 rather than a reset connection.

- **Send timeout.** A connection whose client reads nothing of what is sent to it for ``SEND_TIMEOUT_S`` (60 s,
  nginx's ``send_timeout``) while more waits to be written, or that is closing with unsent bytes that long, is
  aborted: a response to a client that stopped reading does not hold the connection, its task and its upstream
  call for ever.

The clocks are kept by one timer per server (``ClockSweep``), not one per request: it visits the connections every
quarter of the shorter of the two timeouts, and at least once a second (at most twenty times a second), so a
request pays a few assignments for them, and a connection is closed within 1.25 times its timeout (or the timeout
plus 1 s).

The limits travel on the uvicorn ``Config`` (``CONNECTION_LIMITS`` attribute, set by ``http1.bounded_config``),
which is how they reach ``serve --workers N``'s worker processes too.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from keyrelay.asgi import Receive, Scope, Send, new_request_id, send_error
from keyrelay.config import Settings
from keyrelay.errors import ErrorType, GatewayError

CONNECTION_LIMITS = "keyrelay_connection_limits"
SEND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds of one process's client connections (seconds; a count; bytes)."""

    header_timeout_s: float = 10.0
    max_connections: int = 10_000
    max_header_bytes: int = 64 * 1024


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The connection limits ``settings`` ask for.

    From ``KEYRELAY_HEADER_TIMEOUT_S``, ``KEYRELAY_MAX_CONNECTIONS`` and ``KEYRELAY_MAX_HEADER_BYTES``.
    """
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
    )


def closing_answer(status: int, err: GatewayError) -> bytes:
    """A whole ``connection: close`` response carrying ``err``'s JSON body, for answers made below the app."""
    body = orjson.dumps(err.to_body(new_request_id()))
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def timeout_response() -> bytes:
    """The whole 408 answer to a connection whose request headers are late (``connection: close``)."""
    err = GatewayError(
        ErrorType.REQUEST_TIMEOUT, "The request headers did not arrive in time; the connection is closed."
    )
    return closing_answer(408, err)


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI answer to a request that arrives while the process holds too many connections."""
    err = GatewayError(
        ErrorType.SERVICE_UNAVAILABLE,
        "This gateway process holds its maximum number of connections; try again shortly.",
        retry_after=1,
    )
    await send_error(send, err, new_request_id(), [(b"connection", b"close")])


class ClockSweep:
    """One timer per server, not one per request: it visits the server's connections a few times per timeout.

    A connection is closed between its timeout and that plus the sweep interval (a quarter of the shorter
    timeout, at most 1 s and at least 50 ms) after its clock started.
    """

    @staticmethod
    def watch(
        state: Any,
        loop: asyncio.AbstractEventLoop,
        connections: Iterable[Any],
        limits: ConnectionLimits,
        keepalive_timeout_s: float,
    ) -> None:
        """Make sure a sweep runs for the server whose shared state is ``state`` (started with its first connection)."""
        if getattr(state, "keyrelay_clock_sweep", None) is None:
            interval = max(0.05, min(1.0, limits.header_timeout_s / 4, keepalive_timeout_s / 4))
            state.keyrelay_clock_sweep = loop.call_later(interval, ClockSweep.sweep, loop, connections, state, interval)

    @staticmethod
    def sweep(loop: asyncio.AbstractEventLoop, connections: Any, state: Any, interval: float) -> None:
        """Close the overdue connections (``overdue(now)`` of each), then come again while any connection is open."""
        now = loop.time()
        for connection in list(connections):
            overdue = getattr(connection, "overdue", None)
            if overdue is not None:
                overdue(now)
        state.keyrelay_clock_sweep = (
            loop.call_later(interval, ClockSweep.sweep, loop, connections, state, interval) if connections else None
        )
