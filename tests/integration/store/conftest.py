"""Fixtures of the store tests: a runtime on the fresh database (SQLite and PostgreSQL), keys of one account, an
account inserted in plain SQL (for a database at an older schema revision)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.records import AccountRecord
from tests.conftest import TEST_ACTOR


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    """A runtime (store, services) on the test's fresh database, closed afterwards."""
    rt = await open_runtime(Settings(database_url=database_url))
    try:
        yield rt
    finally:
        await rt.close()


async def keys_of_one_account(runtime: Runtime, email: str, count: int) -> tuple[AccountRecord, list[str]]:
    """A new account (``email``) with ``count`` plain keys named k0, k1, ...: the account and the keys' hashes."""
    account = await runtime.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
    hashes = []
    for n in range(count):
        issued = await runtime.key_service.create(account=account, spec=KeyCreate(name=f"k{n}"), actor=TEST_ACTOR)
        hashes.append(issued.record.hash)
    return account, hashes


async def account_in_raw_sql(conn: AsyncConnection, at: datetime) -> int:
    """Insert the account ``old@example.com`` created at ``at`` in plain SQL (any schema revision): its id."""
    await conn.execute(
        text(
            "INSERT INTO accounts (email, status, spent_micros, created_at, updated_at) "
            "VALUES ('old@example.com', 'active', 0, :t, :t)"
        ),
        {"t": at},
    )
    return int((await conn.execute(text("SELECT id FROM accounts WHERE email = 'old@example.com'"))).scalar_one())
