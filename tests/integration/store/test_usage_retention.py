"""Usage retention deletes exactly the records older than its days, in batches, and leaves every total alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.schema import usage_records
from keyrelay.testing.clock import FakeClock
from keyrelay.usage.records import UsageRecord
from keyrelay.usage.retention import Retention
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.records import usage_record

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _record(n: int, at: datetime, key_hash: str, account_id: int) -> UsageRecord:
    return usage_record(f"req_ret{n:05d}", at, key_hash=key_hash, account_id=account_id)


async def test_records_older_than_the_retention_are_deleted_in_batches(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account = await runtime.account_service.create_account(AccountCreate(email="r@example.com"), actor=TEST_ACTOR)
        key = (await runtime.key_service.create(account=account, spec=KeyCreate(name="r"), actor=TEST_ACTOR)).record
        writer = UsageWriter(runtime.engine)
        # 40 records a day apart, from 39 days ago to now; with 30 days kept, the 9 older than 30 days go.
        ages = [timedelta(days=d) for d in range(40)]
        for n, age in enumerate(ages):
            writer.enqueue(_record(n, NOW - age, key.hash, account.id))
        writer.enqueue(_record(99, NOW - timedelta(days=30), key.hash, account.id))  # exactly 30 days: kept
        await writer.flush()
        retention = Retention(runtime.engine, FakeClock(NOW), days=30, batch=4)

        # A writer keeps inserting while the sweep runs: neither waits for the other to finish.
        late = [_record(200 + n, NOW, key.hash, account.id) for n in range(20)]
        for record in late:
            writer.enqueue(record)
        deleted, written = await asyncio.gather(retention.sweep(), writer.flush())
        assert (deleted, written) == (9, 20)
        assert await retention.sweep() == 0

        async with runtime.engine.connect() as conn:
            oldest = (await conn.execute(select(func.min(usage_records.c.created_at)))).scalar_one()
            count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
        stored = await runtime.keys.get(key_hash=key.hash)
        owner = await runtime.accounts.get(account_id=account.id)
    finally:
        await runtime.close()
    assert count == 40 + 1 + 20 - 9
    assert oldest.replace(tzinfo=UTC) == NOW - timedelta(days=30)
    # The charges stay: limits and balances are not refunded by a deletion of history.
    assert stored is not None and stored.usage_micros == 61 * 10
    assert owner is not None and owner.spent_micros == 61 * 10
