"""HTTP server protocol cost: µs per request through uvicorn's httptools protocol and keyrelay's ``http1``.

Each protocol serves one connection on a recording transport (no socket) in one uvloop event loop: a POST with
the headers aiohttp sends (as bench/loadgen.py's requests) and a 100-byte body, answered by a minimal ASGI app
that reads the body and sends a 300-byte JSON response with a content-length and two more headers, as the
gateway's answers carry. What is timed is the protocol's own work per request (parsing, the scope, the task,
receive and send, the writes) plus one task and a few event-loop iterations, which both pay alike; ``floor`` is
that last part alone. Best and median of ``--rounds`` rounds of ``-n`` requests each, printed as JSON.

Usage: python bench/http_protocol.py [-n 8000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Iterable
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from keyrelay.asgi import Message, Receive, Scope, Send
from keyrelay.connections import ConnectionLimits
from keyrelay.http1 import HttpProtocol, bounded_config

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"authorization: Bearer sk-kr-abcdefghijklmnopqrstuvwxyz0123456789\r\ncontent-type: application/json\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.9.5\r\n"
    b"Content-Length: 100\r\n\r\n" + b"x" * 100
)
BODY = b'{"id":"x"}' * 30
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-request-id", b"req_0123456789abcdef"),
    (b"x-keyrelay-cost-micros", b"12"),
]


class Counter:
    answered = 0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body, answer 200 with BODY."""
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
    Counter.answered += 1


class RecordingTransport(asyncio.Transport):
    """A transport that counts what would be written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.written += sum(len(data) for data in list_of_data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


def protocol(kind: str) -> Any:
    """A connected protocol of ``kind`` ("uvicorn" or "keyrelay"), configured as ``keyrelay serve`` configures it."""
    config = uvicorn.Config(
        app, lifespan="off", access_log=False, proxy_headers=False, server_header=False, date_header=False
    )
    if kind == "keyrelay":
        bounded_config(config, ConnectionLimits())
    config.load()
    cls = HttpProtocol if kind == "keyrelay" else HttpToolsProtocol
    connection = cls(config=config, server_state=ServerState(), app_state={})
    connection.connection_made(RecordingTransport())
    return connection


async def per_request(kind: str, n: int) -> float:
    """µs per request over ``n`` requests on one keep-alive connection (``floor``: the app's task alone)."""
    loop = asyncio.get_running_loop()
    connection = None if kind == "floor" else protocol(kind)

    async def receive() -> Message:
        return {"type": "http.request", "body": REQUEST[-100:], "more_body": False}

    async def send(message: Message) -> None:
        pass

    started = time.perf_counter()
    for _ in range(n):
        target = Counter.answered + 1
        if connection is None:
            loop.create_task(app({"type": "http"}, receive, send))
        else:
            connection.data_received(REQUEST)
        while Counter.answered < target:
            await asyncio.sleep(0)
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int, rounds: int) -> dict[str, dict[str, float]]:
    result = {}
    for kind in ("floor", "uvicorn", "keyrelay"):
        await per_request(kind, n // 4)  # warm up
        times = [await per_request(kind, n) for _ in range(rounds)]
        result[kind] = {"best_us": round(min(times), 2), "median_us": round(statistics.median(times), 2)}
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(main(args.n, args.rounds))))
