"""A lean HTTP/1.1 client for upstream calls: asyncio protocol + httptools parser, keep-alive pool.

Why not aiohttp's client here: profiling the hot path (docs/benchmarks.md) showed aiohttp's
request machinery (header multidicts, timeout handles, tracing hooks, cookie jar, redirect logic)
as the largest single cost per proxied request. An upstream call needs none of that: one POST with
a prebuilt header block, a parsed status line and headers, and the body as it arrives. The C
parser (httptools, also used by uvicorn) handles chunked encoding and keep-alive semantics.

A connection is reused only after its previous response was read to the end. A request on a
connection that sat idle for a while and then fails before any response byte arrives is retried
once on a new connection: the server most likely closed the idle connection just as we sent.
A connection used moments ago is not retried, because then the server probably read the request
and a second attempt could run (and bill) an LLM call twice.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20  # pause reading when this much response body is buffered and unread


class UpstreamConnectionError(ConnectionError):
    """The upstream could not be reached or dropped the connection."""


class UpstreamTimeoutError(TimeoutError):
    """The upstream did not send the next bytes in time."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port of an upstream, plus the path prefix of its base URL."""

    host: str
    port: int
    tls: bool
    base_path: str

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        """Split a base URL such as ``https://api.openai.com/v1``."""
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        """The Host header value."""
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal goes in brackets
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")


def _expire(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeoutError(message))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done: asyncio.Future[None] = self._loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.got_bytes = False
        self.keep_alive = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"invalid HTTP response from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(UpstreamConnectionError("upstream closed the connection"))

    # httptools callbacks ----------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # helpers ----------------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()  # mark retrieved: the caller may already have given up
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def start(self, request: bytes) -> None:
        self._reset()
        assert self.transport is not None
        self.transport.write(request)

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next body bytes, or None at the end of the response."""
        while not self.body:
            if self.complete:
                return None
            if self.closed:
                raise UpstreamConnectionError("upstream closed the connection mid-response")
            waiter = self._waiter = self._loop.create_future()
            # A timer handle, not asyncio.timeout(): this runs for every chunk and costs far less.
            timer = self._loop.call_later(timeout, _expire, waiter, "upstream read timed out")
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        # Hand over everything that has arrived in one piece: fewer, larger writes to the client
        # cost less than one write per network read, and add no latency.
        chunk = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self._paused and self.buffered < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """A response whose status and headers have arrived; the body is read with ``read`` or ``chunks``."""

    def __init__(self, pool: UpstreamPool, key: Origin, conn: _Connection, read_timeout: float) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._timeout = read_timeout
        self._released = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes | None:
        """First value of a response header (lowercase name)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (chunked encoding already removed)."""
        while True:
            chunk = await self._conn.next_chunk(self._timeout)
            if chunk is None:
                self.release()
                return
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        if conn.complete and len(conn.body) <= 1:
            data = conn.body.popleft() if conn.body else b""
            conn.buffered = 0
            self.release()
            return data
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def release(self) -> None:
        """Return the connection to the pool if the response was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.closed and not conn.body:
            self._pool._give_back(self._key, conn)
        else:
            conn.abort()


class UpstreamPool:
    """Keep-alive connections per origin."""

    def __init__(self, *, max_idle_per_origin: int = 512, retry_idle_after_s: float = 1.0) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._max_idle = max_idle_per_origin
        self._retry_idle_after = retry_idle_after_s
        self._ssl = ssl.create_default_context()

    def _give_back(self, origin: Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.abort()

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeoutError(f"connecting to {origin.host}:{origin.port} timed out") from None
        except OSError as exc:
            raise UpstreamConnectionError(f"cannot connect to {origin.host}:{origin.port}: {exc.strerror}") from None
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def request(
        self, origin: Origin, head: bytes, body: bytes, *, connect_timeout: float, read_timeout: float
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, without Content-Length) and ``body``; await the headers."""
        message = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        for attempt in (0, 1):
            conn = self._take_idle(origin)
            stale_candidate = conn is not None and time.monotonic() - conn.idle_since >= self._retry_idle_after
            if conn is None:
                conn = await self._connect(origin, connect_timeout)
            conn.start(message)
            loop = asyncio.get_running_loop()
            timer = loop.call_later(read_timeout, _expire, conn.headers_done, "upstream did not answer in time")
            try:
                await conn.headers_done
            except UpstreamTimeoutError:
                conn.abort()
                raise
            except UpstreamConnectionError:
                conn.abort()
                if stale_candidate and not conn.got_bytes and attempt == 0:
                    continue
                raise
            finally:
                timer.cancel()
            return UpstreamResponse(self, origin, conn, read_timeout)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()


def request_head(origin: Origin, path: str, headers: list[tuple[str, str]]) -> bytes:
    """A POST request line and header block (without Content-Length and the final blank line)."""
    lines = [f"POST {origin.base_path}{path} HTTP/1.1".encode(), b"Host: " + origin.host_header]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n"
