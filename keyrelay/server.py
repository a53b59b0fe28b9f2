"""Serve the app with uvicorn (uvloop + httptools), handling SIGTERM with a graceful, flushing shutdown."""

from __future__ import annotations

import asyncio

import uvicorn

from keyrelay.app import create_app
from keyrelay.config import Settings, export_env
from keyrelay.logs import setup_logging
from keyrelay.store.engine import create_engine
from keyrelay.store.migrate import upgrade_to_head


async def _migrate(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


def serve_forever(settings: Settings) -> None:
    """Run the gateway (one process, or ``settings.workers`` processes) until SIGINT/SIGTERM."""
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        # Migrate once here, not concurrently in every worker; workers build their own app from the
        # environment (uvicorn's factory mode).
        asyncio.run(_migrate(settings))
        export_env(settings.model_copy(update={"migrate_on_start": False}))
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
