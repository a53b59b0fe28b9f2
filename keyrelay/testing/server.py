"""Run the real keyrelay ASGI app under uvicorn on a free loopback port, inside the current event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from keyrelay.app import KeyrelayApp, create_app
from keyrelay.clock import Clock
from keyrelay.config import Settings
from keyrelay.connections import connection_limits
from keyrelay.http1 import bounded_config
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


def _sqlite_worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


async def _let_sqlite_threads_end(started_before: set[threading.Thread], timeout: float = 5.0) -> None:
    """Wait (bounded, never failing) until the aiosqlite worker threads started since ``started_before`` end.

    aiosqlite stops the worker thread of a connection that failed to open (a store outage) without waiting for
    it; if the test's event loop closed first, that thread would die with a traceback, and pytest would report it
    against whichever test runs next.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _sqlite_worker_threads() - started_before and loop.time() < deadline:
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, *, clock: Clock | None = None, tracer_provider: Any = None
) -> AsyncIterator[RunningServer]:
    """Start the gateway on 127.0.0.1:<free port> and stop it (with a clean shutdown) afterwards.

    ``tracer_provider``: an OpenTelemetry SDK ``TracerProvider`` that traces the requests (with an in-memory
    exporter, say).
    """
    sqlite_threads = _sqlite_worker_threads()
    app = create_app(settings, clock=clock, tracer_provider=tracer_provider)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as in production: keyrelay applies KEYRELAY_TRUSTED_PROXIES itself
        timeout_keep_alive=settings.keepalive_timeout_s,
    )
    bounded_config(config, connection_limits(settings))  # as in production: header timeout, connection cap
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
        await _let_sqlite_threads_end(sqlite_threads)
