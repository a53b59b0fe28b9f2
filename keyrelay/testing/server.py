"""Run the real keyrelay ASGI app under uvicorn on a free loopback port, inside the current event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from keyrelay.app import KeyrelayApp, create_app
from keyrelay.clock import Clock
from keyrelay.config import Settings
from keyrelay.runtime import Runtime


@dataclass
class RunningServer:
    """A started gateway: its base URL and the app (for its runtime)."""

    base_url: str
    app: KeyrelayApp
    server: uvicorn.Server

    @property
    def runtime(self) -> Runtime:
        """The live runtime (store, cache, services)."""
        assert self.app.runtime is not None, "server not started"
        return self.app.runtime


@contextlib.asynccontextmanager
async def running_server(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[RunningServer]:
    """Start the gateway on 127.0.0.1:<free port> and stop it (with a clean shutdown) afterwards."""
    app = create_app(settings, clock=clock)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as in production: keyrelay applies KEYRELAY_TRUSTED_PROXIES itself
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("keyrelay server exited during start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield RunningServer(base_url=f"http://127.0.0.1:{port}", app=app, server=server)
    finally:
        server.should_exit = True
        await task
