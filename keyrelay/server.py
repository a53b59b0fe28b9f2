"""Serve the app with uvicorn (uvloop + httptools), handling SIGTERM with a graceful, flushing shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn

from keyrelay.app import create_app
from keyrelay.config import Settings, export_env
from keyrelay.listen import bind_listener, check_listen
from keyrelay.logs import setup_logging
from keyrelay.store.engine import create_engine
from keyrelay.store.migrate import upgrade_to_head


class _Server(uvicorn.Server):
    """uvicorn's server on a socket bound beforehand, still logging where it runs once it has started.

    uvicorn says "Uvicorn running on ..." only when it binds the address itself; operators and
    tests wait for that line, so it is kept, in uvicorn's own words and logger.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            host, port = self.config.host, sockets[0].getsockname()[1]
            where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", where)


async def _migrate(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        # keyrelay resolves X-Forwarded-For itself, only from KEYRELAY_TRUSTED_PROXIES; uvicorn's own
        # proxy handling (which trusts 127.0.0.1 by default) would let local clients spoof their address.
        "proxy_headers": False,
        "log_level": settings.log_level,
        "log_config": None,
        "server_header": False,
        "date_header": False,
    }


def serve_forever(settings: Settings) -> None:
    """Run the gateway (one process, or ``settings.workers`` processes) until SIGINT/SIGTERM.

    The address is bound before anything else starts, so that a busy port fails at once.

    Raises:
        ListenError: ``settings.host:settings.port`` cannot be listened on (nothing was started).
        SystemExit: With code 3 when the application's start-up failed (uvicorn logs why).
    """
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        # uvicorn's worker supervisor binds the socket itself: check first, so that a busy port gets
        # the CLI's one-line error instead of uvicorn's log line (the window between is microseconds).
        check_listen(settings.host, settings.port)
        # Migrate once here, not concurrently in every worker; workers build their own app from the
        # environment (uvicorn's factory mode).
        asyncio.run(_migrate(settings))
        export_env(settings.model_copy(update={"migrate_on_start": False}))
        uvicorn.run(
            "keyrelay.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            **_uvicorn_options(settings),
        )
        return
    sock = bind_listener(settings.host, settings.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host=settings.host, port=port, **_uvicorn_options(settings))
    server = _Server(config)
    # uvicorn exits with code 3 itself when the application's start-up fails (after logging why). After a
    # graceful shutdown it raises the signal that asked for it again: Ctrl-C arrives here as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
