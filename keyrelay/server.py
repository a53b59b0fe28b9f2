"""Serve the app with uvicorn (uvloop + httptools): SIGTERM shuts down gracefully, SIGHUP reloads keyrelay.yaml."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from keyrelay.app import create_app
from keyrelay.config import ConfigError, Settings, export_env, export_multiprocess_metrics
from keyrelay.connections import connection_limits
from keyrelay.gateway.upstream_client import UpstreamPool
from keyrelay.http1 import bounded_config
from keyrelay.listen import bind_listener, check_listen
from keyrelay.logs import setup_logging
from keyrelay.reload import reloaded_settings
from keyrelay.store.engine import create_engine
from keyrelay.store.migrate import upgrade_to_head


class _Server(uvicorn.Server):
    """uvicorn's server on a socket bound beforehand, still logging where it runs once it has started.

    uvicorn says "Uvicorn running on ..." only when it binds the address itself; operators and
    tests wait for that line, so it is kept, in uvicorn's own words and logger.
    """

    pid_file: Path | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Shut down as uvicorn does, then remove the pid file (uvicorn then re-raises SIGTERM, ending the process)."""
        await super().shutdown(sockets=sockets)
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            host, port = self.config.host, sockets[0].getsockname()[1]
            where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", where)


class _Workers(Multiprocess):
    """uvicorn's worker supervisor, except on SIGHUP: it checks keyrelay.yaml, then tells each worker to reload.

    uvicorn's own SIGHUP restarts every worker, which would lose their breaker states and, with a bad file,
    fail the new workers' start-up; a reload in place keeps both (``keyrelay/reload.py``).
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], settings: Settings) -> None:
        super().__init__(config, sockets)
        self.settings = settings

    def handle_hup(self) -> None:
        """Check the file (as a worker would) and forward SIGHUP to every worker when it is valid."""
        try:
            UpstreamPool.from_settings(reloaded_settings(self.settings))
        except ConfigError as exc:
            logging.getLogger("keyrelay.reload").error(
                "reload of the configuration refused, the running one stays: %s", exc
            )
            return
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)


async def _migrate(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "timeout_keep_alive": settings.keepalive_timeout_s,
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

    The address is bound before anything else starts, so that a busy port fails at once. SIGHUP reloads
    keyrelay.yaml's providers and routing settings (``keyrelay/reload.py``); with ``pid_file`` set, the
    process id is written there while serving, for ``keyrelay reload``.

    Raises:
        ListenError: ``settings.host:settings.port`` cannot be listened on (nothing was started).
        SystemExit: With code 3 when the application's start-up failed (uvicorn logs why).
    """
    setup_logging(settings.log_level, settings.log_format)
    with _pid_file(settings):
        _serve(settings)


@contextlib.contextmanager
def _pid_file(settings: Settings) -> Iterator[None]:
    """Write this process's id to ``settings.pid_file`` (for ``keyrelay reload``) while serving, if one is set."""
    path = settings.pid_file
    if path is None:
        yield
        return
    try:
        path.write_text(f"{os.getpid()}\n", encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"cannot write the pid file {path}: {exc.strerror}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _serve(settings: Settings) -> None:
    if settings.workers > 1:
        # uvicorn's worker supervisor binds the socket itself: check first, so that a busy port gets
        # the CLI's one-line error instead of uvicorn's log line (the window between is microseconds).
        check_listen(settings.host, settings.port)
        # Migrate once here, not concurrently in every worker; workers build their own app from the
        # environment (uvicorn's factory mode).
        asyncio.run(_migrate(settings))
        export_env(settings.model_copy(update={"migrate_on_start": False}))
        config = uvicorn.Config(
            "keyrelay.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            **_uvicorn_options(settings),
        )
        bounded_config(config, connection_limits(settings))
        # One /metrics for all workers: their counters in shared files, read by whichever worker is scraped.
        metrics_dir = Path(tempfile.mkdtemp(prefix="keyrelay-metrics-"))
        export_multiprocess_metrics(metrics_dir)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                _Workers(config, [config.bind_socket()], settings).run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return
    sock = bind_listener(settings.host, settings.port)
    port = sock.getsockname()[1]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's handler is in place: never the default (exit)
    app = create_app(settings, owns_process=True)
    config = bounded_config(
        uvicorn.Config(app, host=settings.host, port=port, **_uvicorn_options(settings)), connection_limits(settings)
    )
    server = _Server(config)
    server.pid_file = settings.pid_file
    # uvicorn exits with code 3 itself when the application's start-up fails (after logging why). After a
    # graceful shutdown it raises the signal that asked for it again: Ctrl-C arrives here as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
