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

A response body may also be delimited by the server closing the connection (no Content-Length, not
chunked; RFC 9112 §6.3 rules 5 and 8): it is complete when the connection closes cleanly, and such a
connection is never reused. Interim 1xx answers (103 Early Hints) are skipped (RFC 9110 §15.2).

TLS contexts and proxies are fixed per origin when the gateway starts (``UpstreamPool.from_settings``,
``keyrelay/tls.py``, ``proxy.py``). Through a proxy, an https origin is reached through a ``CONNECT`` tunnel and an
http origin with absolute-form request lines; the request head carries the difference, so a request
costs the same either way.

Every transport failure carries a ``reason`` (a ``TransportFailure``) that says what went wrong in
terms a client can be told (certificate rejected, connection refused, name not resolved, ...).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httptools

from keyrelay.config import ConfigError
from keyrelay.gateway.proxy import Proxy, ProxyRules
from keyrelay.gateway.upstream_errors import (
    TransportFailure,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    connect_reason,
    describe,
)
from keyrelay.tls import TlsSettings, client_ssl_context

if TYPE_CHECKING:
    from keyrelay.config import Settings

log = logging.getLogger("keyrelay.upstream")
_HIGH_WATER = 1 << 20  # pause reading when this much response body is buffered and unread
_MAX_TUNNEL_RESPONSE = 16 * 1024  # a proxy's answer to CONNECT is a status line and a few headers
_INVALID = TransportFailure.INVALID_RESPONSE
__all__ = [  # the failure types are part of this module's interface
    "Origin",
    "TransportFailure",
    "UpstreamConnectionError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "request_head",
]


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port of an upstream, the path prefix of its base URL, and how it is reached.

    ``ssl_context`` None on a TLS origin means the pool's default context (the system store). ``proxy``
    is the HTTP proxy that carries the traffic, or None for a direct connection. Both are part of the
    identity: connections are pooled per origin, so two providers on one host with different TLS
    settings never share a connection.
    """

    host: str
    port: int
    tls: bool
    base_path: str
    ssl_context: ssl.SSLContext | None = None
    proxy: Proxy | None = None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed twice per request (take an idle connection, give it back): compute it once.
        fields = (self.host, self.port, self.tls, self.base_path, self.ssl_context, self.proxy)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

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

    @property
    def address(self) -> str:
        """``host:port`` of the upstream, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _expire(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeoutError(message))


class _TunnelHandshake(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT`` (status line and headers; RFC 9110 §9.3.6)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proxy: Proxy) -> None:
        self.proxy = proxy
        self.done: asyncio.Future[None] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_TUNNEL_RESPONSE:
                self._set(UpstreamConnectionError("the proxy's answer to CONNECT is too long", _INVALID))
            return
        status_line = self._buffer.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._set(UpstreamConnectionError("the proxy's answer to CONNECT is not HTTP", _INVALID))
        elif not 200 <= int(parts[1]) < 300:
            message = f"proxy {self.proxy.address} refused the tunnel: {status_line.decode('latin-1')[:200]}"
            self._set(UpstreamConnectionError(message, TransportFailure.PROXY_REFUSED))
        elif end + 4 != len(self._buffer):
            # The upstream speaks only after our TLS ClientHello: anything here is not from it.
            self._set(UpstreamConnectionError("the proxy sent data after its answer to CONNECT", _INVALID))
        else:
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {describe(exc)}" if exc is not None else ""
        self._set(UpstreamConnectionError(f"proxy {self.proxy.address} closed the connection{detail}"))

    def _set(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


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
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.body:
                self._wake()  # the body read before the fault is handed out first, as it arrived
            self._fail(UpstreamConnectionError(f"invalid HTTP response from upstream: {exc}", _INVALID))
            return
        if self.body:
            self._wake()  # once per read, however many body chunks it held (a whole stream can come in one)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if exc is None and self.headers_done.done() and self._delimited_by_close():
            # The body ran to the end of the connection, which closed cleanly: that is its end.
            self.complete = True
            self.keep_alive = False
            self._wake()
            return
        detail = f": {describe(exc)}" if exc is not None else ""
        self._fail(UpstreamConnectionError(f"upstream closed the connection{detail}"))

    def _delimited_by_close(self) -> bool:
        """Whether the response has neither Content-Length nor chunked coding (RFC 9112 §6.3)."""
        chunked = has_length = False
        for name, value in self.headers:
            if name == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"  # the final coding counts
            elif name == b"content-length":
                has_length = True
        return not chunked and not has_length

    # httptools callbacks ----------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:
            return  # interim answer (100, 103): the final one follows on this connection
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.headers = []  # drop the interim answer's headers
            return
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
    """A response whose status and headers have arrived: read its body with ``read``, ``next_chunk`` or ``chunks``."""

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

    @property
    def ended(self) -> bool:
        """The whole body has arrived and been handed out: the next read would be the end."""
        conn = self._conn
        return conn.complete and not conn.body

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call (chunked encoding removed); None at the end (released).

        A coroutine, not an async generator: the event loop tracks every async generator in a weak set (for
        ``shutdown_asyncgens``), which would cost each stream an add and a discard.
        """
        chunk = await self._conn.next_chunk(self._timeout)
        if chunk is None:
            self.release()
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (chunked encoding already removed)."""
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        if conn.complete and len(conn.body) <= 1:
            data = conn.body.popleft() if conn.body else b""
            conn.buffered = 0
            self.release()
            return data
        parts: list[bytes] = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

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
    """Keep-alive connections per origin; TLS contexts and proxies fixed at construction."""

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 512,
        retry_idle_after_s: float = 1.0,
        proxies: ProxyRules | None = None,
    ) -> None:
        """Create an empty pool.

        Args:
            max_idle_per_origin: Idle connections kept per origin; more are closed.
            retry_idle_after_s: A request that fails before any answer byte on a connection idle for at least
                this long is sent again once on a new connection.
            proxies: Which HTTP proxy carries which origin; None connects directly to every origin.
        """
        self._idle: dict[Origin, list[_Connection]] = {}
        self._max_idle = max_idle_per_origin
        self._retry_idle_after = retry_idle_after_s
        self._proxies = proxies or ProxyRules()
        self._ssl = client_ssl_context(TlsSettings())  # the system store
        # One context per distinct TLS setting, shared by every origin that uses it.
        self._contexts: dict[TlsSettings, ssl.SSLContext] = {TlsSettings(): self._ssl}
        self._origins: dict[Origin, Origin] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamPool:
        """The pool for the configured providers and proxies; checks every provider's origin now.

        Logs a WARNING for each provider with ``tls_verify: false``.

        Raises:
            ConfigError: A CA file is unusable, or a proxy that applies to a provider is not an ``http://``
                URL. The message names the provider.
        """
        proxies = ProxyRules(settings.https_proxy, settings.http_proxy, settings.no_proxy)
        pool = cls(proxies=proxies)
        pool.check(settings)
        return pool

    def check(self, settings: Settings) -> None:
        """Check every provider's origin (CA file, proxy) now, building its TLS context; see ``from_settings``."""
        for provider in settings.providers:
            try:
                origin = self.origin(provider.base_url, ca_file=provider.tls_ca_file, verify=provider.tls_verify)
            except ValueError as exc:  # TlsConfigError, ProxyConfigError
                raise ConfigError(f"provider {provider.name!r}: {exc}") from None
            if not provider.tls_verify:
                log.warning(
                    "provider %s: tls_verify is false: the TLS certificate of %s is not checked, so anyone on the "
                    "network path can read and change its traffic, the provider credential included",
                    provider.name,
                    origin.address,
                )
            if origin.proxy is not None:
                log.info("provider %s: reached through the HTTP proxy %s", provider.name, origin.proxy.address)

    def origin(self, base_url: str, *, ca_file: str | None = None, verify: bool = True) -> Origin:
        """The origin of ``base_url`` with its TLS context and proxy (call once per channel, not per request).

        Raises:
            ValueError: ``base_url`` is not an http(s) URL.
            TlsConfigError: The CA file is unusable.
            ProxyConfigError: The proxy URL for this origin is not usable.
        """
        origin = Origin.parse(base_url)
        context = None
        if origin.tls:
            setting = TlsSettings(ca_file, verify)
            context = self._contexts.get(setting)
            if context is None:
                context = self._contexts[setting] = client_ssl_context(setting)
        origin = replace(
            origin, ssl_context=context, proxy=self._proxies.proxy_for(origin.host, origin.port, origin.tls)
        )
        # One instance per distinct origin: the per-request dict lookups then match by identity.
        return self._origins.setdefault(origin, origin)

    def _give_back(self, origin: Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.abort()

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context = (origin.ssl_context or self._ssl) if origin.tls else None
        via = f" through proxy {origin.proxy.address}" if origin.proxy is not None else ""
        try:
            async with asyncio.timeout(timeout):
                if origin.proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop),
                        origin.host,
                        origin.port,
                        ssl=context,
                        server_hostname=origin.host if context is not None else None,
                    )
                elif context is None:  # http origin: absolute-form requests to the proxy itself
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop), origin.proxy.host, origin.proxy.port
                    )
                else:
                    conn = await _tunnel(loop, origin, origin.proxy, context)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"connecting to {origin.address}{via} timed out", TransportFailure.CONNECT_TIMEOUT
            ) from None
        except UpstreamConnectionError:  # from the proxy handshake: already classified
            raise
        except OSError as exc:
            raise UpstreamConnectionError(
                f"cannot connect to {origin.address}{via}: {describe(exc)}", connect_reason(exc)
            ) from None
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


async def _tunnel(
    loop: asyncio.AbstractEventLoop, origin: Origin, proxy: Proxy, context: ssl.SSLContext
) -> _Connection:
    """Open a CONNECT tunnel through ``proxy`` to ``origin`` and start TLS inside it.

    Raises:
        UpstreamConnectionError: The proxy refused the tunnel or closed the connection.
        OSError: Connecting to the proxy failed, or the TLS handshake with the upstream failed.
    """
    transport, handshake = await loop.create_connection(lambda: _TunnelHandshake(loop, proxy), proxy.host, proxy.port)
    try:
        authority = origin.address.encode("idna")
        request = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
        if proxy.authorization is not None:
            request.append(b"Proxy-Authorization: " + proxy.authorization)
        transport.write(b"\r\n".join(request) + b"\r\n\r\n")
        await handshake.done
        conn = _Connection(loop)
        tls_transport = await loop.start_tls(transport, conn, context, server_hostname=origin.host)
    except BaseException:
        transport.abort()
        raise
    if tls_transport is None:  # the loop's type says it may be; asyncio and uvloop always return one
        raise UpstreamConnectionError("TLS could not start inside the proxy tunnel", TransportFailure.TLS_HANDSHAKE)
    conn.connection_made(tls_transport)  # start_tls hands the protocol a new transport without calling this
    return conn


def request_head(origin: Origin, path: str, headers: list[tuple[str, str]]) -> bytes:
    """A POST request line and header block (without Content-Length and the final blank line).

    Through a proxy, an http origin gets the absolute-form target and the proxy's credentials
    (RFC 9112 §3.2.2); an https origin is tunnelled, so its requests stay as they are.
    """
    target = f"{origin.base_path}{path}".encode()
    proxy = origin.proxy
    if proxy is not None and not origin.tls:
        target = b"http://" + origin.host_header + target
    lines = [b"POST " + target + b" HTTP/1.1", b"Host: " + origin.host_header]
    if proxy is not None and not origin.tls and proxy.authorization is not None:
        lines.append(b"Proxy-Authorization: " + proxy.authorization)
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n"
