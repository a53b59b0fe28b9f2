"""An upstream that answers with exact, scripted bytes: recorded streams, odd framings, echoed secrets.

Where ``mock_upstream`` generates well-formed OpenAI answers, this one replays what a test gives it,
byte for byte, split into the pieces the test chooses, and waits between pieces on events the test
controls (never on timers). Each ``POST`` takes the next queued :class:`Script`; the request (headers
and body) is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Gate:
    """A point in a scripted body where the upstream waits until the test calls :meth:`open`."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    _open: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        """Let the upstream send the rest."""
        self._open.set()


@dataclass
class Script:
    """One scripted answer.

    Attributes:
        pieces: Body bytes, each written and flushed on its own (one network write each), and gates.
        status: HTTP status.
        headers: Response headers (``content-type`` defaults to SSE when the first piece starts a stream).
        chunked: Send with chunked transfer encoding (else with a Content-Length).
    """

    pieces: list[bytes | Gate]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = True


@dataclass
class Received:
    """A request the scripted upstream received."""

    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedUpstream:
    """``async with ScriptedUpstream() as up``: serves queued scripts on a free loopback port."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, in order."""
        self.scripts.extend(scripts)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.path, dict(request.headers), body))
        if not self.scripts:
            return web.json_response({"error": {"message": "no script queued"}}, status=500)
        script = self.scripts.popleft()
        response = web.StreamResponse(status=script.status, headers=script.headers)
        if "Content-Type" not in script.headers and "content-type" not in script.headers:
            response.content_type = "text/event-stream"
        if script.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = sum(len(p) for p in script.pieces if isinstance(p, bytes))
        await response.prepare(request)
        for piece in script.pieces:
            if isinstance(piece, Gate):
                piece.reached.set()
                await piece._open.wait()
            else:
                await response.write(piece)
        await response.write_eof()
        return response

    async def __aenter__(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def scripted_upstream() -> AsyncIterator[ScriptedUpstream]:
    """A started :class:`ScriptedUpstream`."""
    async with ScriptedUpstream() as upstream:
        yield upstream
