"""The HTTP/1.1 protocol driven byte by byte on a recording transport: writes, framing, clocks, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from keyrelay.asgi import ASGIApp, Message, Receive, Scope, Send
from keyrelay.connections import ConnectionLimits
from keyrelay.http1 import HttpProtocol, bounded_config


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []  # one entry per write(2) the real transport would make
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.sends.append(b"".join(bytes(data) for data in list_of_data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    @property
    def out(self) -> bytes:
        return b"".join(self.sends)


GET = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"


def _connect(
    app: ASGIApp, header_timeout_s: float = 10.0, max_connections: int = 100, max_header_bytes: int = 64 * 1024
) -> tuple[HttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app, lifespan="off", log_config=None, timeout_keep_alive=5)
    bounded_config(config, ConnectionLimits(header_timeout_s, max_connections, max_header_bytes))
    protocol = HttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def _settle() -> None:
    for _ in range(5):  # the app's task, the held head's flush: a few loop iterations, no time
        await asyncio.sleep(0)


def _answer(
    body: bytes = b"ok", headers: list[tuple[bytes, bytes]] | None = None, later: asyncio.Event | None = None
) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        sent = headers if headers is not None else [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": sent})
        if later is not None:
            await later.wait()
        await send({"type": "http.response.body", "body": body})

    return app


async def test_the_head_goes_out_with_the_first_body_bytes_in_one_send() -> None:
    _, transport = _connect(_answer())
    _.data_received(GET)
    await _settle()
    assert transport.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


async def test_a_head_with_no_body_in_its_tick_goes_out_alone_then_the_body() -> None:
    later = asyncio.Event()
    protocol, transport = _connect(_answer(later=later))
    protocol.data_received(GET)
    await _settle()
    assert transport.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"]
    later.set()
    await _settle()
    assert transport.sends[1:] == [b"ok"]


async def test_without_a_length_the_body_is_chunked_and_ends_with_the_last_chunk() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"Content-Type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"0123456789abcdef!"})

    protocol, transport = _connect(app)
    protocol.data_received(GET)
    await _settle()
    assert transport.out == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n11\r\n0123456789abcdef!\r\n0\r\n\r\n"
    )
    assert not transport.closed


async def test_an_http_1_0_client_gets_the_body_unframed_and_the_connection_closed() -> None:
    protocol, transport = _connect(_answer(headers=[]))
    protocol.data_received(b"GET / HTTP/1.0\r\n\r\n")
    await _settle()
    assert transport.out == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nok"
    assert transport.closed


@pytest.mark.parametrize(
    ("request_line", "status", "expected"),
    [
        (b"HEAD / HTTP/1.1", 200, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"),
        (b"GET / HTTP/1.1", 304, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\n"),
    ],
)
async def test_responses_without_a_body_send_none(request_line: bytes, status: int, expected: bytes) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b""})

    protocol, transport = _connect(app)
    if status == 304:
        # A 304 says how long the body would be; the app sends none, and the length is not held against it.
        protocol.data_received(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n")
    else:
        protocol.data_received(request_line + b"\r\nhost: a\r\n\r\n")
    await _settle()
    assert transport.out == expected
    assert not transport.closed


async def test_a_pipelined_request_waits_for_the_response_before_it() -> None:
    first_done = asyncio.Event()
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        if scope["path"] == "/1":
            await first_done.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": body})

    protocol, transport = _connect(app)
    protocol.data_received(b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n")
    await _settle()
    assert seen == ["/1"] and transport.out == b"" and not transport.reading
    first_done.set()
    await _settle()
    assert seen == ["/1", "/2"]
    assert transport.out == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n/1HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n/2"
    )
    assert transport.reading


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n", b"NOT HTTP\r\n\r\n", b"GET /\x01 HTTP/1.1\r\n\r\n"],
)
async def test_a_malformed_request_is_answered_400_and_the_connection_closed(data: bytes) -> None:
    protocol, transport = _connect(_answer())
    protocol.data_received(data)
    await _settle()
    head, _, body = transport.out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head
    assert orjson.loads(body)["error"]["type"] == "INVALID_REQUEST"
    assert transport.closed


async def test_headers_over_the_limit_are_answered_431_and_those_under_it_served() -> None:
    limit = 2048
    line = b"GET /x HTTP/1.1\r\n"
    under = line + b"x-fill: " + b"a" * (limit - 200) + b"\r\n\r\n"
    protocol, transport = _connect(_answer(), max_header_bytes=limit)
    protocol.data_received(under)
    await _settle()
    assert transport.out.startswith(b"HTTP/1.1 200 ")
    protocol.data_received(line + b"x-fill: a\r\n" * (limit // 10))  # never complete: refused as it grows
    await _settle()
    head, _, body = transport.sends[-1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert orjson.loads(body)["error"]["type"] == "HEADERS_TOO_LARGE"
    assert transport.closed


async def test_response_header_names_and_values_are_checked_every_time() -> None:
    names = [(b"x-fine", b"1"), (b"bad name", b"1"), (b"x-fine", b"a\r\nx-injected: 1")]
    statuses: list[bytes] = []
    for header in names:
        protocol, transport = _connect(_answer(headers=[header, (b"content-length", b"2")]))
        protocol.data_received(GET)
        await _settle()
        statuses.append(transport.out.split(b"\r\n", 1)[0])
        assert b"x-injected" not in transport.out.split(b"\r\n\r\n", 1)[0]
    assert statuses == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 500 Internal Server Error",
        b"HTTP/1.1 500 Internal Server Error",
    ]


async def test_expect_100_continue_is_answered_when_the_app_asks_for_the_body() -> None:
    asked = asyncio.Event()
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asked.wait()
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connect(app)
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
    await _settle()
    assert transport.out == b""
    asked.set()
    await _settle()
    assert transport.out == b"HTTP/1.1 100 Continue\r\n\r\n"
    protocol.data_received(b"abc")
    await _settle()
    assert received == [{"type": "http.request", "body": b"abc", "more_body": False}]
    assert transport.out.endswith(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


async def test_the_body_comes_in_pieces_then_disconnect_after_the_response() -> None:
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        messages.append(await receive())  # after the response: the end of this request

    protocol, transport = _connect(app)
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await _settle()
    protocol.data_received(b"2\r\nde\r\n0\r\n\r\n")
    await _settle()
    assert messages == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de", "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_a_lost_connection_is_a_disconnect_for_the_app() -> None:
    messages: list[Message] = []
    done = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages.append(await receive())
        messages.append(await receive())  # waits: the body was all handed over
        done.set()

    protocol, transport = _connect(app)
    protocol.data_received(GET)
    await _settle()
    protocol.connection_lost(None)
    await asyncio.wait_for(done.wait(), timeout=5)
    assert messages == [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
    assert transport.out == b""  # nothing sent to a client that is gone


async def test_clocks_close_late_headers_with_408_and_idle_connections_quietly() -> None:
    protocol, transport = _connect(_answer(), header_timeout_s=10.0)
    start = protocol.headers_since
    assert start is not None
    protocol.overdue(start + 9.9)
    assert not transport.closed
    protocol.overdue(start + 10.0)
    assert transport.closed and transport.out.startswith(b"HTTP/1.1 408 ")

    protocol, transport = _connect(_answer(), header_timeout_s=10.0)
    protocol.data_received(GET)
    await _settle()
    idle = protocol.idle_since
    assert idle is not None and protocol.headers_since is None
    protocol.overdue(idle + 4.9)
    assert not transport.closed
    protocol.overdue(idle + 5.0)  # the keep-alive timeout of _connect's config
    assert transport.closed and transport.out.count(b"HTTP/1.1") == 1  # no 408 for an answered request


async def test_a_pipelined_request_behind_a_long_response_is_not_timed_out() -> None:
    later = asyncio.Event()
    protocol, transport = _connect(_answer(later=later), header_timeout_s=10.0)
    protocol.data_received(GET + b"GET /x HTTP/1.1\r\n")  # the second request's headers are incomplete
    await _settle()
    since = protocol.headers_since
    assert since is not None
    protocol.overdue(since + 60)
    assert not transport.closed and protocol.headers_since == since + 60  # its clock starts again
    later.set()
    await _settle()
    assert not transport.closed


async def test_over_the_cap_requests_are_answered_503() -> None:
    protocol, transport = _connect(_answer(), max_connections=1)
    other, _ = _connect(_answer(), max_connections=1)
    protocol.connections.add(other)  # the two share one server: two connections, one allowed
    protocol.data_received(GET)
    await _settle()
    head, _, body = transport.out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head and b"connection: close" in head
    assert orjson.loads(body)["error"]["type"] == "SERVICE_UNAVAILABLE"
    assert transport.closed


async def test_a_client_gone_while_a_pipelined_request_waits_is_a_disconnect_for_the_one_in_progress() -> None:
    messages: list[Message] = []
    done = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages.append(await receive())
        messages.append(await receive())  # waits for the end of this request: here, the client's going
        done.set()

    protocol, _ = _connect(app)
    protocol.data_received(GET + GET)  # the second waits behind the first
    await _settle()
    protocol.connection_lost(None)
    await asyncio.wait_for(done.wait(), timeout=5)
    assert messages[-1] == {"type": "http.disconnect"}
