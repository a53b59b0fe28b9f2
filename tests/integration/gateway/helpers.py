"""Shared helpers of the gateway tests: settings, requests, error-body checks, usage records, breaking the store."""

from __future__ import annotations

import json
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.errors import ErrorType
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.records import AccountRecord
from keyrelay.store.schema import usage_records
from keyrelay.testing.poll import poll_until
from keyrelay.testing.server import RunningServer
from tests.conftest import TEST_ACTOR

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 3}


def sqlite_settings(tmp_path: Path, *providers: ProviderConfig, **fields: Any) -> Settings:
    """Settings for a gateway on a fresh SQLite file in ``tmp_path``, for tests in which the store plays no part.

    ``fields`` add or override settings (``https_proxy=...``); the environment is read as ``keyrelay serve`` reads it.
    """
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}",
        "cache_poll_interval_s": 0.2,
        "usage_flush_interval_s": 0.1,
        "log_level": "warning",
        "providers": providers,
        **fields,
    }
    return Settings(**values)


def provider_config(name: str, base_url: str, *models: ModelConfig, **fields: Any) -> ProviderConfig:
    """A provider validated as one read from a config file: ``models`` (default: gpt-4o-mini), 5 s timeouts.

    ``fields`` add or override provider settings (``tls_ca_file``, ``timeout_s``, ...).
    """
    values: dict[str, Any] = {"timeout_s": 5, "connect_timeout_s": 5, **fields}
    return ProviderConfig.model_validate(
        {"name": name, "base_url": base_url, "models": models or (ModelConfig(id="gpt-4o-mini"),), **values}
    )


def auth(key: str) -> dict[str, str]:
    """The Authorization header for a key."""
    return {"Authorization": f"Bearer {key}"}


def chat_body(**fields: Any) -> bytes:
    """The exact bytes :func:`chat` sends: CHAT updated by ``fields``, compact JSON."""
    return json.dumps({**CHAT, **fields}, separators=(",", ":")).encode()


def max_cost_micros(body: bytes, max_tokens: int, input_micros: int = 150_000, output_micros: int = 600_000) -> int:
    """What the gateway holds before the call: every body byte a prompt token, plus max_tokens (gpt-4o-mini)."""
    return math.ceil((len(body) * input_micros + max_tokens * output_micros) / 1_000_000)


async def chat(client: httpx.AsyncClient, key: str | None, **fields: Any) -> httpx.Response:
    """POST /v1/chat/completions with CHAT updated by ``fields``."""
    headers = {"content-type": "application/json", **(auth(key) if key else {})}
    return await client.post("/v1/chat/completions", content=chat_body(**fields), headers=headers)


def assert_error(
    response: httpx.Response, status: int, error_type: str, *, source: str | None = None
) -> dict[str, Any]:
    """Check the shared error body (and x-request-id) and return its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = response.json()["error"]
    assert err["type"] == error_type, err
    assert err["code"] == ErrorType[error_type].code  # OpenAI's string code where one fits
    assert isinstance(err["message"], str) and err["message"]
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")
    assert err["request_id"] == request_id
    if source is None:
        assert "metadata" not in err
    else:
        assert err["metadata"] == {"limit_source": source}
    return err


async def make_account(server: RunningServer, email: str, **fields: Any) -> AccountRecord:
    """Create an account directly through the account service."""
    if "balance" in fields and fields["balance"] is not None:
        fields["balance"] = Decimal(str(fields["balance"]))
    return await server.runtime.account_service.create_account(AccountCreate(email=email, **fields), actor=TEST_ACTOR)


async def usage_rows(server: RunningServer, *request_ids: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The usage records of these requests (in the given order), flushing the writer until all are stored."""
    stmt = select(usage_records).where(usage_records.c.request_id.in_(request_ids))

    async def stored() -> dict[str, dict[str, Any]]:
        await server.app.flush_usage()
        async with server.runtime.engine.connect() as conn:
            return {r["request_id"]: dict(r) for r in (await conn.execute(stmt)).mappings()}

    rows = await poll_until(
        stored, lambda found: set(found) == set(request_ids), what="usage records stored", timeout=timeout
    )
    return [rows[rid] for rid in request_ids]


async def all_usage_rows(server: RunningServer) -> list[dict[str, Any]]:
    """Every usage record, in insertion order (after a flush)."""
    await server.app.flush_usage()
    async with server.runtime.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(usage_records).order_by(usage_records.c.id))).mappings()]


def _close_on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """Close a connection returned to a dropped pool (``break_store``); its record stays, without a connection."""
    if dbapi_connection is not None:
        record.invalidate()


async def break_store(database_url: str, pg_admin_dsn: str, engine: AsyncEngine) -> None:
    """Make the database really unreachable, and drop ``engine``'s pool so that its next query opens a new connection.

    The database: the PostgreSQL database dropped, or the SQLite file replaced by a directory. The pool: a
    connection a background task (a usage flush, a cache poll) holds at that moment goes back to the dropped pool
    later, which nothing closes (``Engine.dispose`` leaves checked-out connections to the garbage collector, where
    aiosqlite's warns of a connection deleted unclosed, an error in the test that happens to collect it): closed
    when it comes back.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
        finally:
            await admin.close()
    else:
        path = url.database
        assert path
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        os.mkdir(path)  # SQLite cannot open a directory: every new connection fails
    dropped = engine.sync_engine.pool
    # Registered before the pool is dropped (no await in between): each connection that comes back to it is closed
    # as it does, within the caller's greenlet (AsyncConnection.close), where aiosqlite's close can be awaited.
    event.listen(dropped, "checkin", _close_on_checkin)
    await engine.dispose()
