"""The HTTP/1.1 protocol driven byte by byte on a recording transport: writes, framing, clocks, refusals."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterable

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from keyrelay.asgi import ASGIApp, Message, Receive, Scope, Send
from keyrelay.connections import SEND_TIMEOUT_S, ConnectionLimits
from keyrelay.http1 import MAX_PIPELINED, HttpProtocol, bounded_config


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []  # one entry per write(2) the real transport would make
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.sends.append(b"".join(bytes(data) for data in list_of_data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

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
    body: bytes = b"ok",
    headers: list[tuple[bytes, bytes]] | None = None,
    later: asyncio.Event | None = None,
    read: bool = True,
) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if read:
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
    line = b"GET /x HTTP/1.1\r\nhost: a\r\n"
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
    protocol.overdue(start + 10.01)  # just past (float sums at the exact edge may fall short)
    assert transport.closed and transport.out.startswith(b"HTTP/1.1 408 ")

    protocol, transport = _connect(_answer(), header_timeout_s=10.0)
    protocol.data_received(GET)
    await _settle()
    idle = protocol.idle_since
    assert idle is not None and protocol.headers_since is None
    protocol.overdue(idle + 4.9)
    assert not transport.closed
    protocol.overdue(idle + 5.01)  # the keep-alive timeout of _connect's config
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


async def test_a_connection_answered_before_its_body_was_in_goes_idle_once_the_body_is() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # answers without reading the body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connect(app)
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\nabc")
    await _settle()
    assert transport.out.startswith(b"HTTP/1.1 200 ")
    protocol.data_received(b"def")  # the body's end, after the answer
    idle = protocol.idle_since
    assert idle is not None
    protocol.overdue(idle + 5.01)
    assert transport.closed


async def test_trailer_fields_are_counted_not_merged_into_the_headers() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connect(app)
    protocol.data_received(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    await _settle()
    assert transport.out.startswith(b"HTTP/1.1 200 ")
    assert [name for name, _ in seen[0]["headers"]] == [b"host", b"transfer-encoding"]

    protocol, transport = _connect(app, max_header_bytes=1024)
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-t: ")
    protocol.data_received(b"a" * 2048)  # a trailer field that does not end
    await _settle()
    assert b"HTTP/1.1 431 " in transport.out and transport.closed


async def test_an_http_1_1_request_without_host_is_answered_400() -> None:
    protocol, transport = _connect(_answer())
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await _settle()
    head, _, body = transport.out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and orjson.loads(body)["error"]["message"].endswith("Host header.")
    assert transport.closed
    protocol, transport = _connect(_answer())
    protocol.data_received(b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs none
    await _settle()
    assert transport.out.startswith(b"HTTP/1.1 200 ")


async def test_pipelined_requests_beyond_the_cap_get_503_after_those_before() -> None:
    later = asyncio.Event()
    protocol, transport = _connect(_answer(later=later))
    protocol.data_received(GET * (MAX_PIPELINED + 3))
    await _settle()
    later.set()
    for _ in range(MAX_PIPELINED + 3):
        await _settle()
    answers = transport.out.count(b"HTTP/1.1 200 ")
    assert answers == MAX_PIPELINED + 1  # the one in progress and those queued
    assert transport.out.rsplit(b"HTTP/1.1 ", 1)[1].startswith(b"503 ") and transport.closed


async def test_a_response_started_without_asking_for_an_expected_body_closes_the_connection() -> None:
    protocol, transport = _connect(_answer(headers=[(b"content-length", b"2")], read=False))
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
    await _settle()
    assert b"100 Continue" not in transport.out
    assert b"connection: close\r\n" in transport.out and transport.closed


async def test_a_next_request_in_the_same_read_as_an_answered_body_is_not_held_to_the_idle_clock() -> None:
    later = asyncio.Event()
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["method"])
        if scope["method"] == "GET":
            await later.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connect(app)
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\na")  # answered at once
    await _settle()
    protocol.data_received(b"bc" + GET)  # the body's end and a request whose answer takes long
    await _settle()
    assert calls == ["POST", "GET"] and protocol.idle_since is None
    protocol.overdue(protocol.loop.time() + 3600)
    assert not transport.closed
    later.set()
    await _settle()
    assert transport.out.count(b"HTTP/1.1 200 ") == 2


async def test_blank_lines_do_not_keep_an_idle_connection_open() -> None:
    protocol, transport = _connect(_answer())
    protocol.data_received(GET)
    await _settle()
    idle = protocol.idle_since
    assert idle is not None
    protocol.data_received(b"\r\n")  # llhttp skips it: no request begins
    protocol.overdue(idle + 5.01)
    assert transport.closed


async def test_a_client_that_reads_nothing_is_aborted_after_the_send_timeout() -> None:
    protocol, transport = _connect(_answer(), header_timeout_s=3600)
    protocol.pause_writing()
    now = protocol.loop.time()
    protocol.overdue(now + SEND_TIMEOUT_S - 1)
    assert not transport.aborted
    protocol.overdue(now + SEND_TIMEOUT_S + 0.01)
    assert transport.aborted

    protocol, transport = _connect(_answer())
    transport.close()  # closing with bytes the client never reads
    protocol.overdue(now)
    protocol.overdue(now + SEND_TIMEOUT_S + 0.01)
    assert transport.aborted


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            [(b"content-length", b"2"), (b"transfer-encoding", b"chunked")],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            [(b"transfer-encoding", b"gzip")],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\nok",
        ),
        ([(b"content-length", b"2"), (b"content-length", b"2")], b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ([(b"Connection", b"keep-alive"), (b"content-length", b"2")], None),
    ],
)
async def test_the_framing_headers_are_the_protocols_to_write(
    headers: list[tuple[bytes, bytes]], expected: bytes | None
) -> None:
    protocol, transport = _connect(_answer(headers=headers))
    protocol.data_received(GET if expected is not None else b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    await _settle()
    if expected is None:  # the app's keep-alive, on a connection that closes: only the close is said
        assert transport.out == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    else:
        assert transport.out == expected


async def test_conflicting_lengths_and_a_204_length_are_not_sent() -> None:
    protocol, transport = _connect(_answer(headers=[(b"content-length", b"2"), (b"content-length", b"3")]))
    protocol.data_received(GET)
    await _settle()
    assert transport.out.startswith(b"HTTP/1.1 500 ")

    async def no_content(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connect(no_content)
    protocol.data_received(GET)
    await _settle()
    assert transport.out == b"HTTP/1.1 204 No Content\r\n\r\n" and not transport.closed


async def test_a_send_cancelled_while_waiting_leaves_the_next_waiting_send_alone() -> None:
    protocol, _ = _connect(_answer())
    protocol.pause_writing()
    first = asyncio.ensure_future(protocol.drain())
    await _settle()
    first.cancel()
    await _settle()
    second = asyncio.ensure_future(protocol.drain())
    await _settle()
    protocol.resume_writing()
    await asyncio.wait_for(second, timeout=5)  # not the first one's CancelledError


async def test_a_closed_connection_is_freed_without_the_cycle_collector() -> None:
    gc.disable()
    try:
        protocol, transport = _connect(_answer())
        protocol.data_received(GET)
        await _settle()
        protocol.connection_lost(None)
        await _settle()
        freed = weakref.ref(protocol)
        protocol.connections.discard(protocol)
        del protocol
        assert freed() is None
    finally:
        gc.enable()


async def test_two_tasks_waiting_in_receive_are_each_told_what_comes() -> None:
    # One reader gets the body; the other, still waiting, gets the disconnect once the response is complete (the
    # ASGI spec's message after the body). Before, the second receive() replaced the first one's waiter: the first
    # was never woken.
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def read() -> None:
            got.append(await receive())

        readers = [asyncio.ensure_future(read()), asyncio.ensure_future(read())]
        await asyncio.wait(readers, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        await asyncio.wait_for(asyncio.gather(*readers), timeout=5)

    protocol, transport = _connect(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n")
    await _settle()
    protocol.data_received(b"abc")
    for _ in range(3):
        await _settle()
    assert got == [{"type": "http.request", "body": b"abc", "more_body": False}, {"type": "http.disconnect"}]
    assert transport.out == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def test_a_cancelled_receive_leaves_the_other_waiting_one_waiting_for_the_body() -> None:
    got: list[Message] = []
    ready = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        first = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        second.cancel()
        ready.set()
        got.append(await asyncio.wait_for(first, timeout=5))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connect(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n")
    await asyncio.wait_for(ready.wait(), timeout=5)
    await _settle()
    protocol.data_received(b"abc")
    for _ in range(3):
        await _settle()
    assert got == [{"type": "http.request", "body": b"abc", "more_body": False}]
    assert transport.out == b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_a_half_close_after_a_request_keeps_the_connection_open_for_its_response() -> None:
    later = asyncio.Event()
    protocol, transport = _connect(_answer(later=later))
    protocol.data_received(GET)
    await _settle()
    assert protocol.eof_received() is True  # the transport stays open for writing
    assert not transport.closed
    later.set()
    await _settle()
    assert transport.out == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert transport.closed  # the last response closes the connection


async def test_after_a_half_close_the_app_is_told_of_a_disconnect_once_it_has_its_body_and_can_still_send() -> None:
    got: list[Message] = []
    later = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        await later.wait()
        got.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    protocol, transport = _connect(app)
    protocol.data_received(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
    assert protocol.eof_received() is True
    later.set()
    await _settle()
    assert got == [{"type": "http.request", "body": b"abc", "more_body": False}, {"type": "http.disconnect"}]
    assert transport.out == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    assert transport.closed


async def test_a_half_close_on_an_idle_connection_closes_it() -> None:
    protocol, transport = _connect(_answer())
    protocol.data_received(GET)
    await _settle()
    assert protocol.eof_received() is None  # asyncio closes the transport


PIPELINED = (
    b"POST /1 HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\na"
    b"POST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nb"
)


def _echo(later: asyncio.Event, got: list[tuple[str, Message]]) -> ASGIApp:
    """Reads its body, then (after ``later``) once more, and answers with its path."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((scope["path"], await receive()))
        await later.wait()
        got.append((scope["path"], await receive()))
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_requests_waiting_behind_others_at_the_eof_are_answered_and_told_of_it_after_their_body() -> None:
    later = asyncio.Event()
    got: list[tuple[str, Message]] = []
    protocol, transport = _connect(_echo(later, got))
    protocol.data_received(PIPELINED + b"POST /3 HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nc")
    await _settle()
    assert len(protocol.pipeline) == 2
    assert protocol.eof_received() is True
    later.set()
    for _ in range(3):
        await _settle()
    assert got == [
        (path, message)
        for path, body in (("/1", b"a"), ("/2", b"b"), ("/3", b"c"))
        for message in ({"type": "http.request", "body": body, "more_body": False}, {"type": "http.disconnect"})
    ]
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    last = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
    assert transport.out == ok + b"/1" + ok + b"/2" + last + b"/3"
    assert transport.closed


async def test_a_request_cut_off_by_the_eof_behind_others_is_dropped_and_the_others_answered() -> None:
    later = asyncio.Event()
    got: list[tuple[str, Message]] = []
    protocol, transport = _connect(_echo(later, got))
    protocol.data_received(PIPELINED + b"POST /3 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nc")
    await _settle()
    assert protocol.eof_received() is True
    later.set()
    for _ in range(3):
        await _settle()
    assert [path for path, _ in got] == ["/1", "/1", "/2", "/2"]
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    last = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
    assert transport.out == ok + b"/1" + last + b"/2"
    assert transport.closed


async def test_over_tls_the_eof_closes_the_connection() -> None:
    protocol, _ = _connect(_answer(later=asyncio.Event()))
    protocol.scheme = "https"  # asyncio's and uvloop's TLS transports do not stay open after an EOF
    protocol.data_received(GET)
    await _settle()
    assert protocol.eof_received() is None
