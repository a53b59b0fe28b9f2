"""Bounded client connections: slow header senders are cut off, idle keep-alives closed, the cap answers 503.

Loopback only, bounded to seconds: the timeouts are set short, and every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from keyrelay.config import Settings
from keyrelay.testing.poll import poll_until
from keyrelay.testing.server import RunningServer, running_server

SLOW = 30  # slow clients, each sending one header line every SLOW_PACE seconds
SLOW_PACE = 0.2


@contextlib.asynccontextmanager
async def _server(tmp_path: Path, **fields: object) -> AsyncIterator[RunningServer]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", log_level="error", **fields)
    async with running_server(settings) as server:
        yield server


async def _connect(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(server.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _slow_client(server: RunningServer, stop: asyncio.Event) -> bytes:
    """Send a request's headers one line at a time, never the blank line; return what the server answered."""
    reader, writer = await _connect(server)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        line = 0
        while not stop.is_set() and not reader.at_eof():
            with contextlib.suppress(TimeoutError):
                # A bounded read returns with the first bytes; one to EOF (read()) cancelled by the timeout between
                # the answer's bytes and the server's close would drop the bytes it had read.
                data = await asyncio.wait_for(reader.read(65536), timeout=SLOW_PACE)
                return data + await reader.read()  # the server answered: the rest, to its close
            writer.write(f"x-slow-{line}: {'a' * 10}\r\n".encode())
            line += 1
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slow_header_senders_are_closed_and_normal_requests_go_on(tmp_path: Path) -> None:
    async with _server(tmp_path, header_timeout_s=1.0) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        stop = asyncio.Event()
        slow = [asyncio.ensure_future(_slow_client(server, stop)) for _ in range(SLOW)]
        try:
            # While the slow clients trickle their headers, normal requests are served.
            served = 0
            while not all(task.done() for task in slow):
                assert (await client.get("/healthz")).status_code == 200
                served += 1
                await asyncio.sleep(0.05)
                assert served < 400, "the slow clients were never cut off"  # 400 × 50 ms: a deadline of 20 s
            answers = [task.result() for task in slow]
        finally:
            stop.set()
            await asyncio.gather(*slow, return_exceptions=True)
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head.lower()
        assert orjson.loads(body)["error"]["type"] == "REQUEST_TIMEOUT"


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with _server(tmp_path, header_timeout_s=0.5) as server:
        reader, writer = await _connect(server)
        try:
            answer = await asyncio.wait_for(reader.read(), timeout=20)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with _server(tmp_path, keepalive_timeout_s=1, header_timeout_s=60) as server:
        reader, writer = await _connect(server)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(
                next(v for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:-2]) if k == b"content-length")
            )
            await reader.readexactly(length)
            # Nothing more is sent: the server closes the connection (no 408: the request was answered).
            assert await asyncio.wait_for(reader.read(), timeout=20) == b""
        finally:
            writer.close()


async def test_beyond_the_cap_requests_get_503_until_connections_close(tmp_path: Path) -> None:
    cap = 5
    async with _server(tmp_path, max_connections=cap, header_timeout_s=60) as server:
        held = [await _connect(server) for _ in range(cap)]
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            refused = await client.get("/healthz")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
            assert refused.json()["error"]["type"] == "SERVICE_UNAVAILABLE"
            for _, writer in held:
                writer.close()

            async def served() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await poll_until(served, what="a request served once the held connections closed", timeout=10)


@pytest.mark.parametrize("field", ["header_timeout_s", "keepalive_timeout_s", "max_connections"])
def test_settings_refuse_nonsense(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: 0})
