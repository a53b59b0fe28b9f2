"""Small real servers for transport tests: a scripted HTTP/1.1 upstream and a forward proxy (CONNECT + absolute-form).

Both speak over real sockets; the scripted upstream writes exactly the bytes a test gives it, so a test can send
answers that aiohttp's mock never would (a body delimited by connection close, interim 1xx answers, garbage).
TLS servers get their certificates from a test CA (trustme): see :func:`server_context`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Self

import orjson
import trustme

Answer = Callable[[bytes, bytes], bytes | None]  # (request head, request body) -> raw answer (None: close silently)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server-side TLS context holding a certificate for ``names`` (host names or IP addresses) issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@dataclass(kw_only=True)
class _Listener:
    """A TCP (or TLS) server on 127.0.0.1 at a free port, as an async context manager.

    A subclass serves each connection in ``_handle`` and lists in ``_open`` every stream it opens (accepted or
    dialled); leaving the context closes the server and aborts all of them, so no test waits on a peer.
    """

    port: int = 0
    _server: asyncio.Server | None = None
    _open: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _tls(self) -> ssl.SSLContext | None:
        """The server-side TLS context; None serves plain TCP."""
        return None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._tls())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._open:
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


@dataclass
class ScriptedUpstream(_Listener):
    """A TCP (or TLS) server that reads one HTTP/1.1 request at a time and writes the scripted raw answer.

    After each answer the connection is closed when ``close_after_answer`` (the answer's body then ends
    at the close), else the server waits for the next request on the same connection.
    """

    answer: Answer
    close_after_answer: bool = True
    reset_after_answer: bool = False  # close with a TCP reset (RST) instead of a clean FIN
    ssl_context: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # request heads, in order

    def _tls(self) -> ssl.SSLContext | None:
        return self.ssl_context

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                raw = self.answer(head, body)
                if raw is None:
                    return
                writer.write(raw)
                await writer.drain()
                if self.reset_after_answer:
                    transport = writer.transport
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        import socket
                        import struct

                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    transport.abort()
                    return
                if self.close_after_answer:
                    return
        finally:
            if not writer.transport.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:PORT/v1``."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"


def chat_completion_json(content: str = "Hi there", prompt_tokens: int = 5, completion_tokens: int = 2) -> bytes:
    """An OpenAI ``chat.completion`` body."""
    return orjson.dumps(
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def chat_completion_sse(words: tuple[str, ...] = ("Hi", " there"), prompt_tokens: int = 5) -> bytes:
    """An OpenAI chat stream with a usage chunk and ``[DONE]``."""
    frames = []
    for word in words:
        chunk = {
            "id": "chatcmpl-raw",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
        frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    usage = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": 0},
    }
    frames.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)


def close_delimited(body: bytes, content_type: bytes = b"application/json") -> bytes:
    """An HTTP/1.1 200 whose body ends where the connection closes: neither Content-Length nor chunked."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nConnection: close\r\n\r\n" + body


def is_stream_request(body: bytes) -> bool:
    """Whether a chat request body asks for a stream."""
    return bool(orjson.loads(body).get("stream")) if body else False


@dataclass
class ForwardProxy(_Listener):
    """An HTTP forward proxy: ``CONNECT`` tunnels and absolute-form requests, with optional Basic credentials.

    ``hosts`` maps the authorities the proxy resolves itself (``upstream.test:443``) to local addresses, so a
    test can name an upstream that only the proxy can reach. An absolute-form request is forwarded in origin
    form without the proxy's own headers, with ``Connection: close`` (the proxy serves one request per
    connection, as HTTP/1.1 allows).
    """

    hosts: dict[str, tuple[str, int]] = field(default_factory=dict)
    credentials: bytes | None = None  # the expected Proxy-Authorization value, e.g. b"Basic dTpw"
    connects: list[str] = field(default_factory=list)  # CONNECT authorities, in order
    forwarded: list[bytes] = field(default_factory=list)  # absolute-form request lines, in order
    authorizations: list[bytes | None] = field(default_factory=list)  # Proxy-Authorization of each request

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def _target(self, authority: str) -> tuple[str, int]:
        if authority in self.hosts:
            return self.hosts[authority]
        host, _, port = authority.rpartition(":")
        return host.strip("[]"), int(port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, _version = request_line.split(b" ", 2)
        headers = [line.split(b":", 1) for line in header_lines]
        auth = next((v.strip() for n, v in headers if n.strip().lower() == b"proxy-authorization"), None)
        self.authorizations.append(auth)
        if self.credentials is not None and auth != self.credentials:
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        if method == b"CONNECT":
            authority = target.decode()
            self.connects.append(authority)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target(authority))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            self._open.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            self.forwarded.append(request_line)
            assert target.startswith(b"http://"), target
            authority, _, path = target[len(b"http://") :].partition(b"/")
            up_reader, up_writer = await asyncio.open_connection(*self._target(authority.decode()))
            self._open.append(up_writer)
            kept = [
                line
                for line in header_lines
                if line.split(b":", 1)[0].strip().lower() not in (b"proxy-authorization", b"connection")
            ]
            up_writer.write(b"\r\n".join([method + b" /" + path + b" HTTP/1.1", *kept, b"Connection: close"]))
            up_writer.write(b"\r\n\r\n")
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if not writer.transport.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()
                writer.close()


@dataclass
class _Silent(_Listener):
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.append(writer)  # held open, never answered


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A server that accepts connections and never sends a byte; yields its port."""
    async with _Silent() as server:
        yield server.port
