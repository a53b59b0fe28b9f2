"""A key's running figures live in ``key_usage`` by key number (migration 0014); readers add the key row's.

On both stores: a flush charges ``key_usage`` and writes nothing to the key's row; every read of a key (by hash, by
secret with its owner, the list, the notification check) gives the key row's figures plus ``key_usage``'s, the later
last use winning, which is what keeps a rolling upgrade (a process of the earlier release still charging key rows)
exact; the upgrade keeps what the key rows hold, and the downgrade folds ``key_usage`` back into them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text, update

from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyUpdate
from keyrelay.runtime import Runtime
from keyrelay.store.engine import create_engine
from keyrelay.store.keys import KeyRepository
from keyrelay.store.migrate import migrate_to, upgrade_to_head
from keyrelay.store.notifications import NotificationRepository
from keyrelay.store.records import KeyRecord
from keyrelay.store.schema import key_usage, keys
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.integration.store.conftest import account_in_raw_sql, keys_of_one_account
from tests.records import usage_record

T1 = datetime(2026, 6, 1, 12, tzinfo=UTC)
T2 = T1 + timedelta(minutes=1)
T3 = T1 + timedelta(minutes=2)


async def key_rows(runtime: Runtime) -> dict[str, tuple[object, ...]]:
    async with runtime.engine.connect() as conn:
        return {row.hash: tuple(row) for row in await conn.execute(select(*keys.c))}


async def running(runtime: Runtime) -> dict[int, tuple[object, ...]]:
    """key_usage's rows by key number: (usage_micros, last_used_at, last_used_ip)."""
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(select(key_usage))
        return {
            r.key_id: (r.usage_micros, r.last_used_at and r.last_used_at.replace(tzinfo=UTC), r.last_used_ip)
            for r in rows
        }


def figures(record: KeyRecord | None) -> tuple[int, datetime | None, str | None]:
    assert record is not None
    return record.usage_micros, record.last_used_at, record.last_used_ip


async def test_a_flush_charges_key_usage_and_writes_nothing_to_the_key_row(runtime: Runtime) -> None:
    account, (first, second, idle) = await keys_of_one_account(runtime, "running@example.com", 3)
    before = await key_rows(runtime)
    writer = UsageWriter(runtime.engine)
    for n, key_hash in enumerate((first, first, second)):
        writer.enqueue(usage_record(f"r{n}", T1, key_hash=key_hash, account_id=account.id, cost_micros=10 + n))
    writer.touch(first, T1, "192.0.2.1")
    writer.touch(second, T1, "192.0.2.2")
    await writer.flush()
    assert await key_rows(runtime) == before  # no key row written: not its usage, not its last use
    number = {h: before[h][keys.c.keys().index("id")] for h in before}
    assert await running(runtime) == {
        number[first]: (21, T1, "192.0.2.1"),
        number[second]: (12, T1, "192.0.2.2"),
    }  # no row for a key never used
    # The next flush adds to the rows: a charge without a use keeps the last use, a use without a charge the usage.
    writer.enqueue(usage_record("r3", T2, key_hash=first, account_id=account.id, cost_micros=5))
    writer.touch(second, T2, "192.0.2.9")
    await writer.flush()
    assert await running(runtime) == {
        number[first]: (26, T1, "192.0.2.1"),
        number[second]: (12, T2, "192.0.2.9"),
    }
    repository = KeyRepository(runtime.engine)
    assert figures(await repository.get(key_hash=first)) == (26, T1, "192.0.2.1")
    assert figures(await repository.get(key_hash=idle)) == (0, None, None)
    # A record of a key the store does not hold charges nothing and makes no row.
    writer.enqueue(usage_record("stranger", T2, key_hash="f" * 64, account_id=account.id, cost_micros=9))
    writer.touch("f" * 64, T2, "192.0.2.99")
    await writer.flush()
    assert len(await running(runtime)) == 2


async def test_a_replayed_record_s_row_has_no_last_use_and_the_key_row_s_stays_the_last(runtime: Runtime) -> None:
    # A replay (a journal of a process that died) charges without a last use: the key row's is still the last one.
    account, (key_hash,) = await keys_of_one_account(runtime, "replayed@example.com", 1)
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(keys).where(keys.c.hash == key_hash).values(last_used_at=T2, last_used_ip="192.0.2.2")
        )
    writer = UsageWriter(runtime.engine)
    assert await writer.replay([usage_record("died", T1, key_hash=key_hash, account_id=account.id, cost_micros=6)]) == 1
    ((_, *row),) = [(number, *figures) for number, figures in (await running(runtime)).items()]
    assert row == [6, None, None]
    repository = KeyRepository(runtime.engine)
    assert figures(await repository.get(key_hash=key_hash)) == (6, T2, "192.0.2.2")
    writer.touch(key_hash, T3, "192.0.2.3")
    await writer.flush()
    assert figures(await repository.get(key_hash=key_hash)) == (6, T3, "192.0.2.3")


async def test_every_read_adds_what_a_process_of_the_earlier_release_charged_to_the_key_row(runtime: Runtime) -> None:
    # A rolling upgrade: one process (this release) charges key_usage, another (the earlier one) the key row.
    account, (key_hash,) = await keys_of_one_account(runtime, "rolling@example.com", 1)
    writer = UsageWriter(runtime.engine)
    writer.enqueue(usage_record("new-1", T1, key_hash=key_hash, account_id=account.id, cost_micros=300))
    writer.touch(key_hash, T1, "192.0.2.1")
    await writer.flush()
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(keys)
            .where(keys.c.hash == key_hash)
            .values(usage_micros=keys.c.usage_micros + 500, last_used_at=T2, last_used_ip="198.51.100.2")
        )
    repository = KeyRepository(runtime.engine)
    assert figures(await repository.get(key_hash=key_hash)) == (800, T2, "198.51.100.2")  # the row's use is later
    writer.touch(key_hash, T3, "192.0.2.3")
    await writer.flush()
    record = await repository.get(key_hash=key_hash)
    assert figures(record) == (800, T3, "192.0.2.3")  # key_usage's use is later
    assert record is not None
    # The key cache's load (by secret, with its owner), the list, and the spend notification's check agree.
    found = await repository.find_with_owner(secret_hash=record.secret_hash, now=T3)
    assert found is not None and figures(found[0]) == (800, T3, "192.0.2.3")
    (listed,) = await repository.list_all(account_id=account.id, key_type=KeyType.REGULAR.value, limit=10)
    assert figures(listed) == (800, T3, "192.0.2.3")
    # An update (audited: the row read before it, locked on PostgreSQL) returns the figures too.
    updated, _ = await runtime.key_service.update(record=record, spec=KeyUpdate(limit=0.001), actor=TEST_ACTOR)
    assert figures(updated) == (800, T3, "192.0.2.3")
    notifications = NotificationRepository(runtime.engine)
    due = {
        percent: await notifications.keys_due_after(
            after_hash="",
            limit=10,
            now=T3,
            period_starts={"daily": T3.replace(hour=0)},
            notice=timedelta(0),
            spend_percent=percent,
        )
        for percent in (80, 81)
    }
    assert [k.hash for k in due[80]] == [key_hash] and due[81] == []  # 800 of 1000: neither figure alone is 80 %


async def test_the_upgrade_keeps_the_key_rows_figures_and_the_downgrade_folds_key_usage_back(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        await migrate_to(engine, "0013")
        async with engine.begin() as conn:
            account_id = await account_in_raw_sql(conn, T1)
            for name, usage, used in (("used", 7, T2), ("unused", 0, None)):
                await conn.execute(
                    text(
                        "INSERT INTO keys (hash, secret_hash, display, key_type, is_admin, name, account_id, "
                        "disabled, created_at, updated_at, usage_micros, last_used_at, last_used_ip) "
                        "VALUES (:h, :h, 'kr-...', 'api', false, :h, :a, false, :t, :t, :u, :at, :ip)"
                    ),
                    {"h": name, "a": account_id, "t": T1, "u": usage, "at": used, "ip": used and "192.0.2.7"},
                )
        await upgrade_to_head(engine)
        repository = KeyRepository(engine)
        assert figures(await repository.get(key_hash="used")) == (7, T2, "192.0.2.7")
        writer = UsageWriter(engine)
        writer.enqueue(usage_record("after", T3, key_hash="used", account_id=account_id, cost_micros=5))
        writer.enqueue(usage_record("first", T3, key_hash="unused", account_id=account_id, cost_micros=4))
        writer.touch("used", T1, "192.0.2.1")  # earlier than the row's: the row's stays the last use
        writer.touch("unused", T3, "192.0.2.3")
        await writer.flush()
        assert figures(await repository.get(key_hash="used")) == (12, T2, "192.0.2.7")
        assert figures(await repository.get(key_hash="unused")) == (4, T3, "192.0.2.3")
        await migrate_to(engine, "0013", downgrade=True)
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT hash, usage_micros, last_used_at, last_used_ip FROM keys"))
            folded = {r.hash: (r.usage_micros, _utc(r.last_used_at), r.last_used_ip) for r in rows}
        assert folded == {"used": (12, T2, "192.0.2.7"), "unused": (4, T3, "192.0.2.3")}
        await upgrade_to_head(engine)  # and up again: nothing counted twice
        assert figures(await KeyRepository(engine).get(key_hash="used")) == (12, T2, "192.0.2.7")
    finally:
        await engine.dispose()


def _utc(value: object) -> datetime | None:
    """A timestamp read back by raw SQL: text on SQLite, a datetime on PostgreSQL."""
    if value is None:
        return None
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
