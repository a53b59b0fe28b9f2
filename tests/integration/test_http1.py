"""keyrelay's HTTP/1.1 protocol (``keyrelay/http1.py``) over real loopback sockets, with small ASGI apps of its own.

Each test starts a uvicorn ``Server`` serving ``HttpProtocol`` (``bounded_config``) inside its own event loop and
talks to it with raw clients that write exact bytes and read exact bytes (httpx where that is simpler). Every
wait is bounded by a deadline that only a broken server reaches; nothing measures how long anything took. A check
that nothing was sent yet peeks at the client's socket, whose reading the client holds from before its request.

The tests at the end were written against the first version of the protocol, where each failed (the faults a
review found: a malformed body or pipelined request left unanswered, a header line without end never refused,
a 304's length held against its empty body, 100-continue sent to HTTP/1.0, the request line left out of the header
size, an upgrade request's body silently dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import httpx
import orjson
import uvicorn

from keyrelay.asgi import ASGIApp, Message, Receive, Scope, Send
from keyrelay.connections import ConnectionLimits
from keyrelay.http1 import HttpProtocol, bounded_config
from keyrelay.testing.poll import wait_until

T = TypeVar("T")
TIMEOUT = 10.0  # seconds: the deadline of a wait for something that should happen at once
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HeaderList = list[tuple[bytes, bytes]]


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


# The server


@dataclass
class Served:
    """A running uvicorn ``Server`` with keyrelay's protocol, on 127.0.0.1:``port``."""

    server: uvicorn.Server
    task: asyncio.Future[None]
    port: int

    def connection(self) -> HttpProtocol:
        """The server's one open connection (for the tests that look at its flow control)."""
        (connection,) = self.server.server_state.connections
        assert isinstance(connection, HttpProtocol)
        return connection


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, limits: ConnectionLimits | None = None) -> AsyncIterator[Served]:
    """Serve ``app`` on a free loopback port in this event loop; stop the server (gracefully) afterwards."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    bounded_config(config, limits or ConnectionLimits())
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), what="the server started", timeout=TIMEOUT)
        if not server.started:
            task.result()
            raise AssertionError("the server exited during start-up")
        yield Served(server, task, int(server.servers[0].sockets[0].getsockname()[1]))
    finally:
        server.should_exit = True
        await within(task)


# The apps' side


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The request's whole body, and the messages it came in (the last one also when it is not a request's)."""
    body = bytearray()
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body), messages


async def reply(send: Send, body: bytes, *, status: int = 200, headers: HeaderList | None = None) -> None:
    """A whole response with a content-length."""
    head = [*(headers or []), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def log_records(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of logger ``name`` (INFO and up) while in the block, whatever its propagation."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(name)
    handler, level = Keep(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# The client's side


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    """A request's exact bytes: the request line, ``host``, ``headers``, a content-length for a body, the body."""
    lines = [f"{method} {target} HTTP/{version}", "host: test", *headers]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    """A response as read off the wire (header names lowered)."""

    status: int
    headers: HeaderList
    body: bytes
    head: bytes  # the status line and headers exactly as received, with the blank line

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, (name, values)
        return values[0] if values else None

    def error_type(self) -> str:
        assert self.header(b"content-type") == b"application/json"
        return str(orjson.loads(self.body)["error"]["type"])


class Client:
    """A raw client connection: exact bytes out, exact bytes in."""

    def __init__(self, sock: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sock = sock  # the connection's own socket object, for peeking
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> Client:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            await within(loop.sock_connect(sock, ("127.0.0.1", port)))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(sock, reader, writer)

    @property
    def transport(self) -> asyncio.Transport:
        return cast(asyncio.Transport, self.writer.transport)

    def hold(self) -> None:
        """Leave what the server sends in the socket (for ``nothing_received``) until ``release``."""
        self.transport.pause_reading()

    def release(self) -> None:
        self.transport.resume_reading()

    def nothing_received(self) -> bool:
        """Whether the server has sent nothing (nor closed) so far; the client must be held since its request."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        return False

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await within(self.writer.drain())

    async def read_head(self) -> tuple[int, HeaderList, bytes]:
        """The next response's status, headers and exact head bytes."""
        try:
            head = await within(self.reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError as exc:
            raise AssertionError(f"the connection closed before a response head (after {exc.partial!r})") from None
        status_line, *lines = head[:-4].split(b"\r\n")
        version, status, _ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1", head
        headers: HeaderList = []
        for line in lines:
            name, colon, value = line.partition(b":")
            assert colon and name and name == name.strip(), head
            headers.append((name.lower(), value.strip(b" \t")))
        return int(status), headers, head

    async def read_response(self, *, method: str = "GET") -> Response:
        """The next whole response, framed as RFC 9112 §6.3 says (its body up to the close if nothing else)."""
        status, headers, head = await self.read_head()
        response = Response(status, headers, b"", head)
        if method == "HEAD" or status in (204, 304) or status < 200:
            return response
        coding, length = response.header(b"transfer-encoding"), response.header(b"content-length")
        if coding is not None:
            assert coding == b"chunked", head
            response.body = await within(self._read_chunks())
        elif length is not None:
            response.body = await within(self.reader.readexactly(int(length)))
        else:
            response.body = await self.read_to_eof()
        return response

    async def _read_chunks(self) -> bytes:
        body = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return bytes(body)
            body += await self.reader.readexactly(size)
            assert await self.reader.readexactly(2) == b"\r\n"

    async def read_to_eof(self, timeout: float = TIMEOUT) -> bytes:
        return await within(self.reader.read(), timeout)

    async def assert_closed(self) -> None:
        """The server closed the connection, and sent nothing more before."""
        assert await self.read_to_eof() == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await within(self.writer.wait_closed())


@contextlib.asynccontextmanager
async def connected(served: Served, *, rcvbuf: int | None = None) -> AsyncIterator[Client]:
    client = await Client.connect(served.port, rcvbuf=rcvbuf)
    try:
        yield client
    finally:
        await client.close()


# 1. Keep-alive


async def test_two_requests_on_one_keep_alive_connection() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        body, _ = await read_body(receive)
        await reply(send, f"{scope['method']} {scope['path']} {body.decode()}".encode())

    async with serving(app) as served, connected(served) as client:
        await client.send(request("GET", "/one"))
        first = await client.read_response()
        await client.send(request("POST", "/two", body=b"hi"))
        second = await client.read_response()

    assert (first.status, first.body, first.header(b"connection")) == (200, b"GET /one ", None)
    assert (second.status, second.body, second.header(b"connection")) == (200, b"POST /two hi", None)
    assert [scope["client"] for scope in scopes] == [scopes[0]["client"]] * 2  # one connection


# 2. Pipelining


async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    calls: list[str] = []
    first_called, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        await read_body(receive)
        if scope["path"] == "/first":
            first_called.set()
            await release.wait()
        await reply(send, scope["path"].encode())

    async with serving(app) as served, connected(served) as client:
        client.hold()
        await client.send(request("GET", "/first") + request("POST", "/second", body=b"x"))
        await within(first_called.wait())
        # The second request is parsed and waits: reading pauses behind the response in progress.
        await wait_until(lambda: served.connection().reading_paused, what="the second request parsed")
        assert calls == ["/first"]
        assert client.nothing_received()
        release.set()
        client.release()
        first = await client.read_response()
        second = await client.read_response()
        assert calls == ["/first", "/second"]
        await client.send(request("GET", "/third"))  # and the connection goes on
        third = await client.read_response()

    assert [(r.status, r.body) for r in (first, second, third)] == [
        (200, b"/first"),
        (200, b"/second"),
        (200, b"/third"),
    ]


# 3. Request bodies


async def test_a_chunked_request_body_arrives_whole() -> None:
    seen: list[tuple[Scope, list[Message]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, messages = await read_body(receive)
        seen.append((scope, messages))
        await reply(send, body)

    async with serving(app) as served, connected(served) as client:
        await client.send(request("POST", "/upload", "transfer-encoding: chunked"))
        await client.send(b"5\r\nhello\r\n")
        await client.send(b"1\r\n \r\n")
        await client.send(b"5;name=value\r\nworld\r\n")
        await client.send(b"a\r\n, chunked!\r\n0\r\n\r\n")
        response = await client.read_response()
        await client.send(request("GET", "/after"))  # the body's end was found: the next request parses
        after = await client.read_response()

    assert (response.status, response.body) == (200, b"hello world, chunked!")
    assert (after.status, after.body) == (200, b"")
    scope, messages = seen[0]
    assert (b"transfer-encoding", b"chunked") in scope["headers"]
    assert all(m["type"] == "http.request" for m in messages)
    assert [m["more_body"] for m in messages][-1] is False


async def test_a_large_request_body_sent_in_pieces_arrives_intact() -> None:
    payload = random.Random(3).randbytes(2**20)
    seen: list[list[Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, messages = await read_body(receive)
        seen.append(messages)
        await reply(send, hashlib.sha256(body).hexdigest().encode())

    async def pieces() -> AsyncIterator[bytes]:
        for offset in range(0, len(payload), 16 * 1024):
            yield payload[offset : offset + 16 * 1024]

    async with (
        serving(app) as served,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}", timeout=TIMEOUT, trust_env=False) as http,
    ):
        response = await http.post("/upload", content=pieces(), headers={"content-length": str(len(payload))})

    assert response.status_code == 200
    assert response.text == hashlib.sha256(payload).hexdigest()
    messages = seen[0]
    assert len(messages) > 1  # handed over as it arrived, not as one piece
    assert [m["more_body"] for m in messages] == [True] * (len(messages) - 1) + [False]
    assert sum(len(m["body"]) for m in messages) == len(payload)


# 4. Expect: 100-continue


async def test_100_continue_is_sent_when_the_app_asks_for_the_body() -> None:
    called, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.set()
        await release.wait()
        body, _ = await read_body(receive)
        await reply(send, body.upper())

    async with serving(app) as served, connected(served) as client:
        client.hold()
        await client.send(request("POST", "/upload", "content-length: 5", "expect: 100-continue"))
        await within(called.wait())
        assert client.nothing_received()  # no 100 before the app asks for the body
        release.set()
        client.release()
        assert await within(client.reader.readexactly(len(CONTINUE))) == CONTINUE
        await client.send(b"hello")
        response = await client.read_response()

    assert (response.status, response.body) == (200, b"HELLO")


# 5. HEAD


async def test_head_sends_the_headers_and_no_body_and_the_connection_goes_on() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await reply(send, b"hello world", headers=[(b"content-type", b"text/plain")])  # a body, even for HEAD

    async with serving(app) as served, connected(served) as client:
        await client.send(request("HEAD", "/doc"))
        head = await client.read_response(method="HEAD")
        await client.send(request("GET", "/doc"))
        get = await client.read_response()  # right after the HEAD's head: no body bytes came between

    assert head.status == 200
    assert head.header(b"content-length") == b"11" and head.header(b"content-type") == b"text/plain"
    assert head.header(b"connection") is None
    assert (get.status, get.body) == (200, b"hello world")


# 6. Responses without a content-length


async def _unsized_app(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    pieces = [b"hello", b"", b"x" * 26, b"!"] if scope["path"] == "/last-has-data" else [b"abc", b""]
    for piece in pieces[:-1]:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": pieces[-1], "more_body": False})


async def test_a_response_without_content_length_is_chunked_for_http_1_1() -> None:
    async with serving(_unsized_app) as served, connected(served) as client:
        framed: list[bytes] = []
        for path, expected in (
            ("/last-has-data", b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n1\r\n!\r\n0\r\n\r\n"),
            ("/last-is-empty", b"3\r\nabc\r\n0\r\n\r\n"),  # an empty piece is no chunk (it would end the body)
        ):
            await client.send(request("GET", path))
            status, headers, _ = await client.read_head()
            assert status == 200
            assert (b"transfer-encoding", b"chunked") in headers
            assert not [name for name, _ in headers if name in (b"content-length", b"connection")]
            framed.append(await within(client.reader.readexactly(len(expected))))
            assert framed[-1] == expected
        await client.send(request("GET", "/last-is-empty", "connection: close"))  # no stray bytes came before
        last = await client.read_response()
        await client.assert_closed()

    assert (last.status, last.body) == (200, b"abc")


async def test_a_response_without_content_length_ends_with_the_connection_for_http_1_0() -> None:
    async with serving(_unsized_app) as served, connected(served) as client:
        await client.send(request("GET", "/last-has-data", version="1.0"))
        status, headers, head = await client.read_head()
        body = await client.read_to_eof()

    assert status == 200
    assert (b"connection", b"close") in headers
    assert not [name for name, _ in headers if name in (b"transfer-encoding", b"content-length")]
    assert body == b"hello" + b"x" * 26 + b"!"  # raw, up to the close


# 7. Connection: close


async def test_connection_close_from_the_client_closes_after_the_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await reply(send, b"bye")

    async with serving(app) as served, connected(served) as client:
        await client.send(request("GET", "/", "connection: close"))
        response = await client.read_response()
        await client.assert_closed()

    assert (response.status, response.body, response.header(b"connection")) == (200, b"bye", b"close")


# 8. Malformed requests


async def test_a_malformed_request_line_is_answered_400_and_closed() -> None:
    calls: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)
        await reply(send, b"")

    async with serving(app) as served, connected(served) as client:
        await client.send(b"GET / HTTQ/1.1\r\nhost: test\r\n\r\n")
        response = await client.read_response()
        await client.assert_closed()

    assert response.status == 400
    assert response.header(b"connection") == b"close"
    assert response.error_type() == "INVALID_REQUEST"
    assert calls == []


# 9. The header size limit


async def test_request_headers_over_the_limit_are_answered_431_and_just_under_are_served() -> None:
    limit = 1024
    paths: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        paths.append(scope["path"])
        await read_body(receive)
        await reply(send, b"ok")

    def sized(path: str, size: int) -> bytes:
        """A GET of ``path`` whose request line and headers (the blank line too) are ``size`` bytes."""
        start, end = f"GET {path} HTTP/1.1\r\nhost: test\r\nx-fill: ".encode(), b"\r\n\r\n"
        return start + b"f" * (size - len(start) - len(end)) + end

    async with serving(app, ConnectionLimits(max_header_bytes=limit)) as served:
        async with connected(served) as client:
            await client.send(sized("/under", limit - 1))
            under = await client.read_response()
            await client.send(request("GET", "/again"))  # still open
            again = await client.read_response()
        async with connected(served) as client:
            await client.send(sized("/over", 2 * limit))
            over = await client.read_response()
            await client.assert_closed()

    assert (under.status, under.body, again.status) == (200, b"ok", 200)
    assert over.status == 431
    assert over.header(b"connection") == b"close"
    assert over.error_type() == "HEADERS_TOO_LARGE"
    assert paths == ["/under", "/again"]


# 10. App errors


async def test_an_app_error_before_the_response_is_500_and_after_it_closes_the_connection() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"] == "/after":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        raise RuntimeError("the app broke")

    async with serving(app) as served:
        async with connected(served) as client:
            await client.send(request("GET", "/before"))
            before = await client.read_response()
            await client.assert_closed()
        async with connected(served) as client:
            await client.send(request("GET", "/after"))
            status, headers, _ = await client.read_head()
            after_body = await client.read_to_eof()  # what came before the close

    assert before.status == 500
    assert before.header(b"connection") == b"close"
    assert before.error_type() == "INTERNAL_ERROR"
    assert (status, (b"content-length", b"10") in headers) == (200, True)
    assert after_body == b"abc"


# 11. The request target


async def test_the_path_is_percent_decoded_and_raw_path_and_query_string_are_as_sent() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await read_body(receive)
        await reply(send, b"")

    async with serving(app) as served, connected(served) as client:
        await client.send(request("GET", "/caf%C3%A9/a%20b%2Fc?q=a%20b&x=%2F&empty="))
        await client.read_response()
        await client.send(request("GET", "/plain/path"))
        await client.read_response()

    decoded, plain = scopes
    assert decoded["path"] == "/café/a b/c"
    assert decoded["raw_path"] == b"/caf%C3%A9/a%20b%2Fc"
    assert decoded["query_string"] == b"q=a%20b&x=%2F&empty="
    assert (plain["path"], plain["raw_path"], plain["query_string"]) == ("/plain/path", b"/plain/path", b"")


# 12. Client disconnects


async def test_a_client_that_hangs_up_mid_response_is_seen_by_the_app() -> None:
    observed: list[Message] = []
    disconnected = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        watcher = asyncio.ensure_future(receive())
        while not watcher.done():
            await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
            await asyncio.sleep(0)
        observed.append(watcher.result())
        disconnected.set()

    async with serving(app) as served:
        async with connected(served) as client:
            await client.send(request("GET", "/stream"))
            status, headers, _ = await client.read_head()
            assert (status, (b"transfer-encoding", b"chunked") in headers) == (200, True)
            assert await within(client.reader.readexactly(10)) == b"1000\r\nxxxx"
        await within(disconnected.wait())

    assert observed == [{"type": "http.disconnect"}]


# 13. Content-length held to


async def test_an_app_writing_more_or_less_than_its_content_length_gets_the_connection_closed() -> None:
    errors: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        body = b"0123456789" if scope["path"] == "/longer" else b"abc"
        try:
            await send({"type": "http.response.body", "body": body})
        except RuntimeError as exc:
            errors.append(str(exc))
            raise

    answers: dict[str, bytes] = {}
    async with serving(app) as served:
        for path in ("/longer", "/shorter"):
            async with connected(served) as client:
                await client.send(request("GET", path))
                status, headers, _ = await client.read_head()
                assert (status, (b"content-length", b"5") in headers) == (200, True)
                answers[path] = await client.read_to_eof()  # the body bytes sent before the close

    assert answers == {"/longer": b"", "/shorter": b"abc"}  # never more than announced
    assert len(errors) == 2 and "longer" in errors[0] and "shorter" in errors[1]  # send() raised to the app


# 14. Flow control


async def test_a_large_response_to_a_slow_reader_arrives_intact_with_writes_held_back() -> None:
    size, piece = 20 * 2**20, 64 * 1024
    payload = random.Random(14).randbytes(size)
    progress = {"sent": 0, "most_buffered": 0}
    servers: list[Served] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        transport = servers[0].connection().transport
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        for offset in range(0, size, piece):
            body = payload[offset : offset + piece]
            await send({"type": "http.response.body", "body": body, "more_body": offset + piece < size})
            progress["sent"] += len(body)
            progress["most_buffered"] = max(progress["most_buffered"], transport.get_write_buffer_size())

    async def read_slowly(reader: asyncio.StreamReader) -> bytes:
        received = bytearray()
        while len(received) < size:
            data = await reader.read(4096)
            assert data, f"the connection closed after {len(received)} bytes"
            received += data
        return bytes(received)

    async with serving(app) as served, connected(served, rcvbuf=32 * 1024) as client:
        servers.append(served)
        await client.send(request("GET", "/large"))
        status, _, _ = await client.read_head()
        # The client reads nothing yet: the server's writes must pause, and the app's send() wait.
        await wait_until(lambda: served.connection().write_paused, what="the server's writes paused")
        assert progress["sent"] < size
        received = await within(read_slowly(client.reader))
        await client.send(request("GET", "/again"))  # the connection goes on
        assert (await client.read_head())[0] == 200

    assert status == 200
    assert received == payload
    assert progress["most_buffered"] < 2**20  # the transport's buffer stayed bounded


# 15. Graceful shutdown


async def test_shutdown_lets_the_response_in_progress_finish_then_closes() -> None:
    streaming, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        streaming.set()
        await release.wait()
        await send({"type": "http.response.body", "body": b"-last"})

    async with serving(app) as served, connected(served) as client:
        await client.send(request("GET", "/"))
        status, _, _ = await client.read_head()
        assert await within(client.reader.readexactly(5)) == b"first"
        await within(streaming.wait())
        served.server.should_exit = True
        # uvicorn closes the listener, then asks each connection to shut down (in the same step).
        await wait_until(lambda: not served.server.servers[0].is_serving(), what="the listener closed")
        assert not served.task.done()  # waiting for the response in progress
        release.set()
        assert await within(client.reader.readexactly(5)) == b"-last"
        await client.assert_closed()
        await within(served.task)

    assert status == 200


# 16. Upgrade requests


async def test_an_upgrade_request_is_answered_as_plain_http_and_closed() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await read_body(receive)
        await reply(send, b"plain http")

    upgrade = request(
        "GET",
        "/socket",
        "connection: Upgrade",
        "upgrade: websocket",
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version: 13",
    )
    frame = b"\x81\x85\x00\x00\x00\x00hello"  # a WebSocket frame right behind: not parsed as HTTP
    async with serving(app) as served, connected(served) as client:
        await client.send(upgrade + frame)
        response = await client.read_response()
        await client.assert_closed()

    assert (response.status, response.body, response.header(b"connection")) == (200, b"plain http", b"close")
    assert response.header(b"upgrade") is None
    (scope,) = scopes
    assert scope["type"] == "http"
    assert (b"upgrade", b"websocket") in scope["headers"]


# 17. The scope


async def test_the_scope_describes_the_request_and_the_connection() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await read_body(receive)
        await reply(send, b"")

    raw = (
        b"PUT /thing HTTP/1.1\r\n"
        b"Host: test\r\n"
        b"X-Mixed-Case: Some  Value \t \r\n"
        b"ACCEPT:   */*\r\n"
        b"x-dup: 1\r\n"
        b"X-Dup: 2\r\n"
        b"x-empty:\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n"
        b"{}"
    )
    async with serving(app) as served:
        async with connected(served) as client:
            await client.send(raw)
            await client.read_response()
            client_address = client.sock.getsockname()
        async with connected(served) as client:
            await client.send(request("GET", "/old", version="1.0"))
            await client.read_response()

    scope, old = scopes
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert tuple(scope["client"]) == client_address
    assert tuple(scope["server"]) == ("127.0.0.1", served.port)
    assert scope["scheme"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "PUT"
    assert scope["root_path"] == ""
    assert scope["headers"] == [
        (b"host", b"test"),
        (b"x-mixed-case", b"Some  Value"),
        (b"accept", b"*/*"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
        (b"x-empty", b""),
        (b"content-length", b"2"),
    ]
    assert (old["http_version"], old["method"], old["path"]) == ("1.0", "GET", "/old")


# Faults of the protocol's first version (each of these failed against it)


async def test_a_malformed_chunk_while_the_app_reads_the_body_ends_the_request() -> None:
    first_piece, finished = asyncio.Event(), asyncio.Event()
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            first_piece.set()
            if message["type"] != "http.request" or not message["more_body"]:
                break
        finished.set()
        if message["type"] == "http.request":
            await reply(send, b"the body ended")

    with log_records("keyrelay.http") as records:
        async with serving(app) as served:
            try:
                async with connected(served) as client:
                    await client.send(request("POST", "/upload", "transfer-encoding: chunked") + b"5\r\nhello\r\n")
                    await within(first_piece.wait())
                    await client.send(b"not-hex\r\n")
                    await wait_until(lambda: any("refused" in r.getMessage() for r in records), what="the parse error")
                    # The parse error was handled (synchronously, in data_received): the connection ends at once.
                    answer = await client.read_to_eof(timeout=0.5)
                    await within(finished.wait())
            finally:
                if not finished.is_set():
                    # Reading is paused, so even the client's close goes unseen: without this, the app would wait
                    # for good, and the server's graceful shutdown with it.
                    for task in served.server.server_state.tasks:
                        task.cancel()

    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    assert seen[-1] == {"type": "http.disconnect"}


async def test_a_header_line_past_the_limit_is_refused_before_it_ends() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, b"")

    limits = ConnectionLimits(header_timeout_s=0.2, max_header_bytes=1024)
    async with serving(app, limits) as served, connected(served) as client:
        await client.send(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 4096)  # the line goes on
        answer = await client.read_to_eof()

    assert answer.startswith(b"HTTP/1.1 431 "), answer[:40]


async def test_a_304_with_the_representations_content_length_keeps_the_connection() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"] == "/cached":
            headers = [(b"etag", b'"v1"'), (b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        else:
            await reply(send, b"next")

    async with serving(app) as served, connected(served) as client:
        await client.send(request("GET", "/cached", 'if-none-match: "v1"'))
        cached = await client.read_response()
        assert (cached.status, cached.header(b"content-length")) == (304, b"5")
        await client.send(request("GET", "/next"))
        after = await client.read_response()

    assert (after.status, after.body) == (200, b"next")


async def test_an_http_1_0_expect_100_continue_is_ignored() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, _ = await read_body(receive)
        await reply(send, body)

    async with serving(app) as served, connected(served) as client:
        await client.send(request("POST", "/", "expect: 100-continue", body=b"abc", version="1.0"))
        answer = await client.read_to_eof()

    assert answer.startswith(b"HTTP/1.1 200 "), answer[:40]
    assert answer.endswith(b"\r\n\r\nabc")


async def test_a_malformed_request_behind_a_pipelined_one_is_answered_400() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await reply(send, b"first")

    async with serving(app) as served, connected(served) as client:
        await client.send(request("GET", "/first") + b"GET / HTTQ/1.1\r\nhost: test\r\n\r\n")
        first = await client.read_response()
        assert (first.status, first.body) == (200, b"first")
        refused = await client.read_response()
        await client.assert_closed()

    assert refused.status == 400
    assert refused.error_type() == "INVALID_REQUEST"


async def test_a_request_line_and_headers_one_byte_over_the_limit_are_answered_431() -> None:
    limit = 1024

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await reply(send, b"ok")

    start = b"GET /over HTTP/1.1\r\nhost: test\r\nx-fill: "
    head = start + b"f" * (limit + 1 - len(start) - 2) + b"\r\n"  # limit + 1 bytes, without the blank line
    assert len(head) == limit + 1
    async with serving(app, ConnectionLimits(max_header_bytes=limit)) as served, connected(served) as client:
        await client.send(head + b"\r\n")
        response = await client.read_response()

    assert response.status == 431


async def test_an_upgrade_request_with_a_body_is_refused_not_served_without_it() -> None:
    # httptools hands over no body of an upgrade request: rather than serving it with an empty body, the protocol
    # answers 400 and closes (keyrelay switches to no other protocol).
    called: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["path"])
        body, _ = await read_body(receive)
        await reply(send, body)

    h2c = request(
        "POST",
        "/v1/chat/completions",
        "connection: Upgrade, HTTP2-Settings",
        "upgrade: h2c",
        "http2-settings: AAMAAABkAAQCAAAAAAIAAAAA",
        body=b"hello",
    )
    async with serving(app) as served, connected(served) as client:
        await client.send(h2c)
        response = await client.read_response()
        await client.assert_closed()

    assert response.status == 400 and response.error_type() == "INVALID_REQUEST"
    assert called == []


# A client's EOF: a half-close (its requests sent, its side shut, still reading) or a close, which the server cannot
# tell apart. The requests received whole are answered, then the connection closes; an app watching for a disconnect
# is told one. The first two tests failed before (the connection closed at the EOF, the responses lost); the others
# hold what was already so.


def _gated(gate: asyncio.Event, seen: list[Message], paths: tuple[str, ...] = ()) -> ASGIApp:
    """An app that reads the body, waits for ``gate`` (only on ``paths`` if given), then answers with what it read."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, messages = await read_body(receive)
        seen.extend(messages)
        if messages[-1]["type"] == "http.disconnect":
            return
        if not paths or scope["path"] in paths:
            await gate.wait()
        await reply(send, scope["path"].encode() + b" " + body)

    return app


def _eof_seen(served: Served) -> bool:
    """Whether the server has seen its one client's half-close (its connection stopped reading, or closed)."""
    connections = served.server.server_state.connections
    return not connections or all(cast(HttpProtocol, connection).stopped for connection in connections)


async def test_a_client_that_half_closes_after_its_request_gets_the_response() -> None:
    gate, seen = asyncio.Event(), []
    async with serving(_gated(gate, seen)) as served, connected(served) as client:
        await client.send(request("POST", "/one", body=b"hello"))
        client.writer.write_eof()
        await wait_until(lambda: bool(seen) and _eof_seen(served), what="the body read, the EOF seen", timeout=TIMEOUT)
        gate.set()
        response = await client.read_response()
        await client.assert_closed()
    assert (response.status, response.body) == (200, b"/one hello")


async def test_pipelined_requests_then_a_half_close_are_all_answered_in_order() -> None:
    # The second waits behind the first with reading paused: the EOF is read once the first was answered, while
    # the second is being served (held by the gate until then).
    gate, seen = asyncio.Event(), []
    async with serving(_gated(gate, seen, paths=("/two",))) as served, connected(served) as client:
        await client.send(request("POST", "/one", body=b"a") + request("POST", "/two", body=b"b"))
        client.writer.write_eof()
        await wait_until(lambda: len(seen) >= 2 and _eof_seen(served), what="/two read, the EOF seen", timeout=TIMEOUT)
        gate.set()
        first = await client.read_response()
        second = await client.read_response()
        await client.assert_closed()
    assert [(first.status, first.body), (second.status, second.body)] == [(200, b"/one a"), (200, b"/two b")]


async def test_a_half_close_in_the_middle_of_a_body_tells_the_app_its_client_is_gone() -> None:
    gate, seen = asyncio.Event(), []
    async with serving(_gated(gate, seen)) as served, connected(served) as client:
        await client.send(request("POST", "/cut", "content-length: 10") + b"abc")
        client.writer.write_eof()
        await client.assert_closed()
        await wait_until(
            lambda: bool(seen) and seen[-1]["type"] == "http.disconnect", what="a disconnect", timeout=TIMEOUT
        )


async def test_a_half_close_on_an_idle_connection_closes_it() -> None:
    gate, seen = asyncio.Event(), []
    gate.set()
    async with serving(_gated(gate, seen)) as served, connected(served) as client:
        await client.send(request("GET", "/one"))
        assert (await client.read_response()).status == 200
        client.writer.write_eof()
        await client.assert_closed()


async def test_a_client_that_closes_while_its_stream_waits_is_seen_by_the_app_watching() -> None:
    # Nothing more is written after the first chunk, so only the EOF can tell the app (as keyrelay's streams are
    # told by tasks.DisconnectWatch while the upstream is silent).
    observed: list[Message] = []
    told = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        observed.append(await receive())
        told.set()

    with log_records("keyrelay.http") as records:
        async with serving(app) as served:
            client = await Client.connect(served.port)
            await client.send(request("POST", "/stream", body=b"x"))
            status, _, _ = await client.read_head()
            assert status == 200
            assert await within(client.reader.readexactly(10)) == b"5\r\nfirst\r\n"
            await client.close()
            await within(told.wait())
            await wait_until(lambda: not served.server.server_state.connections, what="closed", timeout=TIMEOUT)
    assert observed == [{"type": "http.disconnect"}]
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []  # stopping at it is no error
