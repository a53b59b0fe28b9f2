"""The lean upstream HTTP client against the mock OpenAI upstream (real sockets, real wire format)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from keyrelay.gateway.upstream_client import (
    Origin,
    UpstreamConnectionError,
    UpstreamPool,
    UpstreamTimeoutError,
    request_head,
)
from keyrelay.testing.mock_upstream import MockOptions, MockUpstream


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockOptions(slow_ms=400)) as upstream:
        yield upstream


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool()
    yield p
    p.close()


def _chat(model: str, *, stream: bool = False) -> bytes:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _head(origin: Origin) -> bytes:
    return request_head(origin, "/chat/completions", [("content-type", "application/json")])


def test_origin_parse() -> None:
    assert Origin.parse("https://api.openai.com/v1") == Origin("api.openai.com", 443, True, "/v1")
    assert Origin.parse("http://127.0.0.1:8080/") == Origin("127.0.0.1", 8080, False, "")
    assert Origin.parse("http://h:80/x").host_header == b"h"
    assert Origin.parse("http://h:81/x").host_header == b"h:81"
    with pytest.raises(ValueError):
        Origin.parse("ftp://x/")


async def test_json_answer_and_keep_alive(mock: MockUpstream, pool: UpstreamPool) -> None:
    origin = Origin.parse(mock.base_url)
    for _ in range(3):
        resp = await pool.request(origin, _head(origin), _chat("gpt-4o-mini"), connect_timeout=2, read_timeout=2)
        assert resp.status == 200
        assert (
            resp.header(
                b"content-type",
            )
            is not None
        )
        data = orjson.loads(await resp.read())
        assert data["object"] == "chat.completion" and data["usage"]["prompt_tokens"] > 0
    # Every response was read to the end, so one connection served all three requests.
    assert len(pool._idle[origin]) == 1
    assert mock.requests[-1].body == orjson.loads(_chat("gpt-4o-mini"))


async def test_sse_stream_dechunked(mock: MockUpstream, pool: UpstreamPool) -> None:
    origin = Origin.parse(mock.base_url)
    resp = await pool.request(
        origin, _head(origin), _chat("gpt-4o-mini", stream=True), connect_timeout=2, read_timeout=2
    )
    assert resp.status == 200
    text = b"".join([c async for c in resp.chunks()])
    events = [e for e in text.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert b'"usage":{' in events[-2]
    assert len(pool._idle[origin]) == 1


async def test_error_status_is_returned(mock: MockUpstream, pool: UpstreamPool) -> None:
    origin = Origin.parse(mock.base_url)
    resp = await pool.request(origin, _head(origin), _chat("x-fail-429"), connect_timeout=2, read_timeout=2)
    assert resp.status == 429 and resp.header(b"retry-after") == b"1"
    assert orjson.loads(await resp.read())["error"]["code"] == "rate_limit_exceeded"


async def test_connection_refused(pool: UpstreamPool) -> None:
    origin = Origin.parse("http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamConnectionError):
        await pool.request(origin, _head(origin), b"{}", connect_timeout=2, read_timeout=2)


async def test_read_timeout_on_hang(mock: MockUpstream, pool: UpstreamPool) -> None:
    origin = Origin.parse(mock.base_url)
    with pytest.raises(UpstreamTimeoutError):
        await pool.request(origin, _head(origin), _chat("x-hang"), connect_timeout=2, read_timeout=0.2)
    assert not pool._idle.get(origin)


async def test_cut_stream_raises_mid_body(mock: MockUpstream, pool: UpstreamPool) -> None:
    origin = Origin.parse(mock.base_url)
    resp = await pool.request(
        origin, _head(origin), _chat("x-cut-stream", stream=True), connect_timeout=2, read_timeout=2
    )
    got: list[bytes] = []
    with pytest.raises(UpstreamConnectionError):
        async for chunk in resp.chunks():
            got.append(chunk)
    assert b"data: " in b"".join(got)
    assert not pool._idle.get(origin)


async def test_unread_response_is_not_reused(mock: MockUpstream, pool: UpstreamPool) -> None:
    origin = Origin.parse(mock.base_url)
    resp = await pool.request(
        origin, _head(origin), _chat("x-slow-ttfb", stream=True), connect_timeout=2, read_timeout=2
    )
    resp.release()  # abandoned mid-body: the connection must be closed, not pooled
    assert not pool._idle.get(origin)


async def test_retry_when_reused_connection_was_closed_by_server() -> None:
    # Each connection answers its first request, then reads the next one and closes without answering,
    # as a server does when its keep-alive timeout fires just as the request arrives.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(answer)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    origin = Origin.parse(f"http://127.0.0.1:{port}/v1")
    pool = UpstreamPool(retry_idle_after_s=0.0)
    try:
        for _ in range(3):
            resp = await pool.request(origin, _head(origin), b"{}", connect_timeout=2, read_timeout=2)
            assert await resp.read() == b"{}"
        assert connections == 3  # requests 2 and 3 each failed on the reused connection and were retried
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_no_retry_on_a_connection_used_moments_ago(mock: MockUpstream, pool: UpstreamPool) -> None:
    # The server read the request and then dropped the connection: retrying could run the call twice.
    origin = Origin.parse(mock.base_url)
    resp = await pool.request(origin, _head(origin), _chat("gpt-4o-mini"), connect_timeout=2, read_timeout=2)
    await resp.read()
    before = len(mock.requests)
    with pytest.raises(UpstreamConnectionError):
        await pool.request(origin, _head(origin), _chat("x-cut-stream"), connect_timeout=2, read_timeout=2)
    assert len(mock.requests) == before + 1
