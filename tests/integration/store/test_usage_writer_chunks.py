"""A flush is one transaction of up to ``max_batch`` records, its statements run ``chunk`` rows at a time: every
record and every charge lands exactly once, across chunk boundaries, on both stores."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.driver_sql import DriverStatement
from keyrelay.store.keys import KEY_USAGE_MICROS, KEYS_WITH_USAGE
from keyrelay.store.schema import accounts, groups, key_usage, keys, spend_periods, usage_records
from keyrelay.usage.records import UsageRecord
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.records import daily_record

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
LATER = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)


def count_commits(runtime: Runtime) -> list[int]:
    """A one-item list counting the engine's commits from now on."""
    commits = [0]

    def on_commit(_conn: object) -> None:
        commits[0] += 1

    event.listen(runtime.engine.sync_engine, "commit", on_commit)
    return commits


async def make_keys(runtime: Runtime) -> tuple[list[tuple[str, int, int | None]], int]:
    """Seven keys with daily limits on three accounts, two of them in a group with a daily quota:
    ``([(key hash, account id, group id)], group id)``."""
    group = await runtime.account_service.create_group(GroupCreate(name="team", quota_reset="daily"), actor=TEST_ACTOR)
    made: list[tuple[str, int, int | None]] = []
    for i in range(3):
        in_group = i < 2
        account = await runtime.account_service.create_account(
            AccountCreate(email=f"a{i}@example.com", group="team" if in_group else None), actor=TEST_ACTOR
        )
        for j in range(3 if i == 0 else 2):
            spec = KeyCreate.model_validate({"name": f"k{i}{j}", "limit": 10_000, "limit_reset": "daily"})
            issued = await runtime.key_service.create(account=account, spec=spec, actor=TEST_ACTOR)
            made.append((issued.record.hash, account.id, group.id if in_group else None))
    return made, group.id


def records(made: list[tuple[str, int, int | None]], count: int, seed: int) -> list[UsageRecord]:
    rng = random.Random(seed)
    return [daily_record(f"req_{seed}_{n:05d}", NOW, rng.choice(made), rng.choice((0, 3, 7, 11))) for n in range(count)]


async def assert_stored(runtime: Runtime, written: list[UsageRecord], group_id: int) -> None:
    """Every record once, and every key's, account's and group's lifetime and daily spend their sum."""
    per_key: dict[str, int] = {}
    per_account: dict[int, int] = {}
    for r in written:
        per_key[r.key_hash] = per_key.get(r.key_hash, 0) + r.cost_micros
        per_account[r.account_id] = per_account.get(r.account_id, 0) + r.cost_micros
    in_group = sum(r.cost_micros for r in written if r.group_id is not None)
    async with runtime.engine.connect() as conn:
        ids = (await conn.execute(select(usage_records.c.request_id))).scalars().all()
        assert sorted(ids) == sorted(r.request_id for r in written)
        life = dict((await conn.execute(select(keys.c.hash, KEY_USAGE_MICROS).select_from(KEYS_WITH_USAGE))).all())
        assert {h: life[h] for h in per_key} == per_key
        key_periods = select(spend_periods.c.ident, spend_periods.c.usage_micros).where(spend_periods.c.scope == "key")
        daily = dict((await conn.execute(key_periods)).all())
        assert daily == {h: c for h, c in per_key.items() if c}  # a period's row is made by its first charge
        spent = dict((await conn.execute(select(accounts.c.id, accounts.c.spent_micros))).all())
        assert {a: spent[a] for a in per_account} == per_account
        assert await conn.scalar(select(groups.c.usage_micros).where(groups.c.id == group_id)) == in_group
        group_daily = await conn.scalar(
            select(func.sum(spend_periods.c.usage_micros)).where(spend_periods.c.scope == "group")
        )
        assert group_daily == in_group


def count_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each driver-level ``executemany`` call from now on, in order."""
    calls: list[int] = []
    run = DriverStatement.executemany

    async def counted(self: DriverStatement, conn: AsyncConnection, rows: list[Any]) -> None:
        calls.append(len(rows))
        await run(self, conn, rows)

    monkeypatch.setattr(DriverStatement, "executemany", counted)
    return calls


async def test_a_flush_of_more_records_than_a_chunk_is_one_transaction(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, group_id = await make_keys(runtime)
    writer = UsageWriter(runtime.engine, max_batch=100, chunk=2)  # 7 keys and 3 accounts: each crosses chunks
    batch = records(made, 40, seed=1)
    for r in batch:
        writer.enqueue(r)
    writer.touch(made[-1][0], LATER, "192.0.2.9")  # a key touched and charged in the same flush
    writer.touch(made[0][0], LATER, "192.0.2.7")
    commits = count_commits(runtime)
    rows = count_rows(monkeypatch)
    assert await writer.flush() == 40
    assert commits[0] == 1
    assert max(rows) == 2 and len(rows) >= 40 // 2 + 7 // 2 + 3 // 2  # every statement ran 2 rows at a time
    assert writer.queued == 0 and writer.pending("key", made[0][0], "life") == 0
    await assert_stored(runtime, batch, group_id)
    async with runtime.engine.connect() as conn:
        ips = dict(
            (
                await conn.execute(
                    select(keys.c.hash, key_usage.c.last_used_ip).join(key_usage, key_usage.c.key_id == keys.c.id)
                )
            ).all()
        )
    assert ips[made[-1][0]] == "192.0.2.9" and ips[made[0][0]] == "192.0.2.7"


async def test_a_replay_looks_up_stored_records_a_chunk_at_a_time(runtime: Runtime) -> None:
    made, group_id = await make_keys(runtime)
    writer = UsageWriter(runtime.engine, max_batch=100, chunk=3)
    batch = records(made, 20, seed=4)
    assert await writer.replay(batch[:11]) == 11  # written before a crash
    assert await writer.replay(batch) == 9  # the stored ones found across several lookups, written once
    await assert_stored(runtime, batch, group_id)


async def test_max_batch_bounds_a_transaction(runtime: Runtime) -> None:
    made, group_id = await make_keys(runtime)
    writer = UsageWriter(runtime.engine, max_batch=15, chunk=4)
    batch = records(made, 40, seed=2)
    for r in batch:
        writer.enqueue(r)
    commits = count_commits(runtime)
    assert await writer.flush() == 40
    assert commits[0] == 3  # 15 + 15 + 10
    await assert_stored(runtime, batch, group_id)


async def test_by_default_a_flush_of_a_second_of_load_is_one_transaction(runtime: Runtime) -> None:
    # 600 records: more than the 500 of a transaction before, which cost ~1.3× the CPU per record of a larger one.
    made, group_id = await make_keys(runtime)
    writer = UsageWriter(runtime.engine)
    batch = records(made, 600, seed=3)
    for r in batch:
        writer.enqueue(r)
    commits = count_commits(runtime)
    assert await writer.flush() == 600
    assert commits[0] == 1
    await assert_stored(runtime, batch, group_id)
