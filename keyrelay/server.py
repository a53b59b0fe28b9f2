"""Serve the app with uvicorn (uvloop + httptools), handling SIGTERM with a graceful, flushing shutdown."""

from __future__ import annotations

import uvicorn

from keyrelay.app import create_app
from keyrelay.config import Settings
from keyrelay.logs import setup_logging


def serve_forever(settings: Settings) -> None:
    """Run one gateway process until SIGINT/SIGTERM."""
    setup_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
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
