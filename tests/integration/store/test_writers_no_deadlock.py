"""Four usage writers (four connection pools, as four processes have) flushing charges to the same hot rows never
deadlock, and every charge lands exactly once.

Each flush updates key, group, account and spend-period rows; two flushes that lock shared rows in different
orders can wait on each other in a cycle, which PostgreSQL breaks by failing one of them ("deadlock
detected"). Records of zero cost (failed requests) still update their key's last use, which is what once put
a key row out of order.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.engine import create_engine
from keyrelay.store.schema import accounts, key_usage, usage_records
from keyrelay.usage.records import UsageRecord
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.records import daily_record

pytestmark = pytest.mark.postgres

WRITERS = 4
ROUNDS = 40
RECORDS_PER_ROUND = 30


async def test_four_writers_on_hot_rows_never_deadlock(postgres_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=postgres_url))
    hot: list[tuple[str, int, int | None]] = []  # (key hash, account id, group id)
    try:
        groups = [
            await runtime.account_service.create_group(GroupCreate(name=f"g{i}", quota_reset="daily"), actor=TEST_ACTOR)
            for i in range(2)
        ]
        for i in range(3):
            group = groups[i % 2] if i < 2 else None
            account = await runtime.account_service.create_account(
                AccountCreate(email=f"hot{i}@example.com", group=group.name if group else None), actor=TEST_ACTOR
            )
            for j in range(2):
                spec = KeyCreate.model_validate({"name": f"k{i}{j}", "limit": 10, "limit_reset": "daily"})
                issued = await runtime.key_service.create(account=account, spec=spec, actor=TEST_ACTOR)
                hot.append((issued.record.hash, account.id, group.id if group else None))
    finally:
        await runtime.close()

    now = datetime.now(UTC)
    engines = [create_engine(postgres_url) for _ in range(WRITERS)]
    writers = [UsageWriter(engine, max_batch=10) for engine in engines]
    failures: list[BaseException] = []
    expected = 0

    def record(w: int, n: int, rng: random.Random) -> UsageRecord:
        # A zero cost: a failed request, which still marks the key's last use.
        return daily_record(f"req_w{w}_{n:06d}", now, rng.choice(hot), rng.choice((0, 0, 7, 11, 13)))

    async def run(w: int) -> None:
        nonlocal expected
        rng = random.Random(w)
        writer = writers[w]
        for round_ in range(ROUNDS):
            for n in range(RECORDS_PER_ROUND):
                rec = record(w, round_ * RECORDS_PER_ROUND + n, rng)
                expected += rec.cost_micros
                writer.enqueue(rec)
                writer.touch(rec.key_hash, now, f"10.0.0.{w}")
            try:
                await writer.flush()
            except Exception as exc:  # a deadlock would surface here
                failures.append(exc)

    try:
        await asyncio.gather(*(run(w) for w in range(WRITERS)))
        for writer in writers:
            await writer.close()
    finally:
        for engine in engines:
            await engine.dispose()
    assert failures == []

    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
            key_total = (await conn.execute(select(func.sum(key_usage.c.usage_micros)))).scalar_one()
            account_total = (await conn.execute(select(func.sum(accounts.c.spent_micros)))).scalar_one()
            used = (await conn.execute(select(func.count()).where(key_usage.c.last_used_at.is_not(None)))).scalar_one()
    finally:
        await engine.dispose()
    assert count == WRITERS * ROUNDS * RECORDS_PER_ROUND
    assert key_total == account_total == expected
    assert used == len(hot)
