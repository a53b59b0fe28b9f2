"""Serve the app with uvicorn (uvloop + httptools), handling SIGTERM with a graceful, flushing shutdown."""

from __future__ import annotations

import uvicorn

from keyrelay.app import create_app
from keyrelay.config import Settings, export_env
from keyrelay.logs import setup_logging


def serve_forever(settings: Settings) -> None:
    """Run the gateway (one process, or ``settings.workers`` processes) until SIGINT/SIGTERM."""
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        # Worker processes build their own app from the environment (uvicorn's factory mode).
        export_env(settings)
        target: object = "keyrelay.app:create_app_from_env"
    else:
        target = create_app(settings)
    uvicorn.run(
        target,  # type: ignore[arg-type]
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        # keyrelay resolves X-Forwarded-For itself, only from KEYRELAY_TRUSTED_PROXIES; uvicorn's own
        # proxy handling (which trusts 127.0.0.1 by default) would let local clients spoof their address.
        proxy_headers=False,
        log_level=settings.log_level,
        log_config=None,
        server_header=False,
        date_header=False,
    )
