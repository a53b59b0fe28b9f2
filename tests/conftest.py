"""Shared fixtures: a fresh database per test (SQLite and PostgreSQL), a running gateway, a mock upstream, a test CA."""

from __future__ import annotations

import asyncio
import contextlib
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
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Who the audit log names for changes tests make directly through the services.
TEST_ACTOR = Actor.system("tests")
PG_ADMIN_DSN = os.environ.get("KEYRELAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_available() -> str | None:
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}"
    await conn.close()
    return None


# PostgreSQL databases of this run, emptied and ready for the next test. CREATE DATABASE copies the whole
# template (about 4 MB of WAL and its fsyncs) per test, gigabytes of disk writes a run; emptying a used
# database writes only its catalog changes. Dropped at the end of the run (pytest_sessionfinish).
_PG_SPARE: list[str] = []
_PG_ALL: set[str] = set()
_PG_SCHEMAS = {"public", "pg_catalog", "information_schema", "pg_toast"}


def _pg_dsn(name: str) -> str:
    return f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


async def _take_pg_database() -> str:
    if _PG_SPARE:
        return _PG_SPARE.pop()
    name = f"kr_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    _PG_ALL.add(name)
    return name


async def _drop_pg_database(name: str) -> None:
    _PG_ALL.discard(name)
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _give_back_pg_database(name: str) -> None:
    """Empty a used database (its sessions ended, schema public dropped and made again) for the next test.

    A database the test dropped is forgotten; one the test changed beyond schema public is dropped.
    """
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        allowed = await admin.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1", name)
        if allowed is None:  # the test dropped it (a store outage)
            _PG_ALL.discard(name)
            return
        if not allowed:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    conn = await asyncpg.connect(_pg_dsn(name))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        clean = not {s for s in schemas - _PG_SCHEMAS if not s.startswith("pg_")}
    finally:
        await conn.close()
    if clean:
        _PG_SPARE.append(name)
    else:
        await _drop_pg_database(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the PostgreSQL databases this run made."""
    if not _PG_ALL:
        return

    async def drop_all() -> None:
        for name in list(_PG_ALL):
            await _drop_pg_database(name)

    asyncio.run(drop_all())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A brand-new empty database: an SQLite file, or an empty PostgreSQL database of this run's own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"
        return
    async with fresh_postgres() as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A brand-new empty PostgreSQL database of this run's own (for tests of the scaled-out shape; mark them)."""
    async with fresh_postgres() as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A brand-new empty PostgreSQL database, dropped after (skipped, or failed in CI, without PostgreSQL)."""
    problem = await _pg_available()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    name = await _take_pg_database()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        try:
            await _give_back_pg_database(name)
        except (OSError, asyncpg.PostgresError):
            await _drop_pg_database(name)


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
        account = await rt.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
    issued = await rt.key_service.create(
        account=account,
        spec=KeyCreate(name=f"mgmt-{email}"),
        key_type=KeyType.MANAGEMENT,
        is_admin=admin,
        actor=TEST_ACTOR,
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
        account = await rt.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
    issued = await rt.key_service.create(
        account=account, spec=KeyCreate.model_validate({"name": "k", **fields}), actor=TEST_ACTOR
    )
    return issued.plaintext


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh Redis key prefix for processes a test starts (skipped, or failed in CI, without Redis); dropped after."""
    from tests.unit.limits.conftest import drop_prefix, redis_client_or_skip

    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    try:
        yield prefix
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()
