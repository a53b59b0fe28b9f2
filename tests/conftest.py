"""Shared fixtures: a fresh database per test (SQLite and PostgreSQL), a running gateway, a mock upstream, a test CA."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import trustme

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_DSN = os.environ.get("KEYRELAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_available() -> str | None:
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}"
    await conn.close()
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A brand-new empty database: an SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"
        return
    problem = await _pg_available()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"kr_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    """A mock OpenAI upstream (keyrelay.testing.mock_upstream) with default options, over plain HTTP."""
    async with MockUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test certificate authority: the system store does not trust it (see tests.http_servers.server_context)."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The path of a PEM file holding the test CA's certificate (``tls_ca_file``)."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for a test server on the fresh database."""
    return Settings(database_url=database_url, cache_poll_interval_s=0.2, log_level="warning")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    """A running gateway on a free port."""
    async with running_server(settings) as srv:
        yield srv


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the running gateway."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        yield c


async def make_management_key(server: RunningServer, email: str, *, admin: bool = False) -> str:
    """Create an account (if needed) and a management key for it, as the CLI does."""
    rt = server.runtime
    account = await rt.accounts.get_by_email(email=email)
    if account is None:
        account = await rt.account_service.create_account(AccountCreate(email=email))
    issued = await rt.key_service.create(
        account=account, spec=KeyCreate(name=f"mgmt-{email}"), key_type=KeyType.MANAGEMENT, is_admin=admin
    )
    return issued.plaintext


@pytest.fixture
async def admin_key(server: RunningServer) -> str:
    """An admin management key."""
    return await make_management_key(server, "admin@example.com", admin=True)


@pytest.fixture
async def mgmt_key(server: RunningServer) -> str:
    """A non-admin management key of alice@example.com."""
    return await make_management_key(server, "alice@example.com")


async def make_api_key(server: RunningServer, email: str, **fields: object) -> str:
    """Create an account (if needed) and an API key with the given fields; returns the plaintext."""
    rt = server.runtime
    account = await rt.accounts.get_by_email(email=email)
    if account is None:
        account = await rt.account_service.create_account(AccountCreate(email=email))
    issued = await rt.key_service.create(account=account, spec=KeyCreate.model_validate({"name": "k", **fields}))
    return issued.plaintext
