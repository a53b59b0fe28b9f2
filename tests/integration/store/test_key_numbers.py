"""Keys are numbered (``keys.id``) and usage records refer to the number (``key_id``), indexed by it (migration 0013).

On both stores: every way a key row is inserted numbers it (the service, many rows in one statement, raw SQL);
the usage writer gives each record its key's number; the usage queries by key find a key's records through the
number; the upgrade numbers the keys already there in creation order and fills the records already there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.engine import create_engine
from keyrelay.store.migrate import migrate_to, upgrade_to_head
from keyrelay.store.schema import key_usage, keys, usage_records
from keyrelay.store.usage import UsageRepository
from keyrelay.usage.numbering import Numbering
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.integration.store.conftest import account_in_raw_sql, keys_of_one_account
from tests.records import usage_record

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


async def numbers_by_hash(runtime: Runtime) -> dict[str, int | None]:
    async with runtime.engine.connect() as conn:
        return dict((await conn.execute(select(keys.c.hash, keys.c.id))).all())


async def test_every_insert_numbers_the_key_in_creation_order_and_never_twice(runtime: Runtime) -> None:
    _, hashes = await keys_of_one_account(runtime, "numbers@example.com", 3)
    numbers = await numbers_by_hash(runtime)
    assert [numbers[h] for h in hashes] == sorted(numbers[h] for h in hashes)  # type: ignore[type-var]
    # Many rows in one statement (as bench/many_keys.py copies keys), then one row in raw SQL: numbered too.
    template = {c.name: v for c, v in zip(keys.c, await _row(runtime, hashes[0]), strict=True) if c.name != "id"}
    copies = [template | {"hash": f"copy{n:060d}", "secret_hash": f"copy{n:060d}"} for n in range(5)]
    async with runtime.engine.begin() as conn:
        await conn.execute(keys.insert(), copies)
        await conn.execute(
            text(
                "INSERT INTO keys (hash, secret_hash, display, key_type, is_admin, name, account_id, disabled, "
                "created_at, updated_at, usage_micros) "
                "SELECT 'raw' || substr(hash, 4), 'raw' || substr(secret_hash, 4), display, key_type, is_admin, "
                "name, account_id, disabled, created_at, updated_at, 0 FROM keys WHERE hash = :h"
            ),
            {"h": hashes[0]},
        )
    numbers = await numbers_by_hash(runtime)
    assert None not in numbers.values()
    assert len(set(numbers.values())) == len(numbers) == 9
    assert min(numbers[c["hash"]] for c in copies) > max(numbers[h] for h in hashes)  # type: ignore[type-var]


async def _row(runtime: Runtime, key_hash: str) -> tuple[object, ...]:
    async with runtime.engine.connect() as conn:
        return tuple((await conn.execute(select(*keys.c).where(keys.c.hash == key_hash))).one())


async def test_the_writer_gives_each_record_its_key_s_number_and_the_queries_find_it(runtime: Runtime) -> None:
    account, hashes = await keys_of_one_account(runtime, "records@example.com", 2)
    numbers = await numbers_by_hash(runtime)
    writer = UsageWriter(runtime.engine)
    records = [
        usage_record(f"req-{n}", NOW + timedelta(seconds=n), key_hash=hashes[n % 2], account_id=account.id)
        for n in range(6)
    ]
    # A record of a key the store does not hold is written too, without a number.
    records.append(usage_record("req-stranger", NOW, key_hash="f" * 64, account_id=account.id))
    for record in records:
        writer.enqueue(record)
    await writer.flush()
    async with runtime.engine.connect() as conn:
        stored = dict((await conn.execute(select(usage_records.c.request_id, usage_records.c.key_id))).all())
    assert stored == {r.request_id: numbers.get(r.key_hash) for r in records}
    assert stored["req-stranger"] is None
    for key_hash in hashes:
        log = await UsageRepository(runtime.engine).records(account_id=account.id, limit=10, key_hash=key_hash)
        assert {e.request_id for e in log} == {r.request_id for r in records if r.key_hash == key_hash}
        (total,) = await UsageRepository(runtime.engine).totals(
            account_id=account.id, key_hash=key_hash, model=None, start=None, end=None, group_by=None
        )
        assert total.requests == 3
    assert await UsageRepository(runtime.engine).records(account_id=account.id, limit=10, key_hash="f" * 64) == []
    assert await UsageRepository(runtime.engine).records(account_id=None, limit=10, key_hash="0" * 64) == []


async def test_records_that_carry_their_key_s_number_are_stored_and_charged_by_it(runtime: Runtime) -> None:
    # A record made by the gateway carries its key's number (from the key cache); one decoded from its JSON form (a
    # journal's replay, a Redis stream entry another process settled) does not, and the writer looks it up by hash:
    # both kinds, of the same key and of others, in one flush, and a key only touched without its number (its last
    # use, no record in the flush) found by hash too.
    account, (first, second, touched) = await keys_of_one_account(runtime, "carried@example.com", 3)
    numbers = await numbers_by_hash(runtime)
    assert all(isinstance(numbers[h], int) for h in (first, second, touched))
    writer = UsageWriter(runtime.engine)
    carried = {first: numbers[first], second: None}
    for n, key_hash in enumerate((first, second, first, second)):
        number = carried[key_hash] if n < 2 else None
        writer.enqueue(
            usage_record(f"req-c{n}", NOW, key_hash=key_hash, account_id=account.id, cost_micros=10, key_id=number)
        )
    writer.touch(touched, NOW, "192.0.2.7")
    await writer.flush()
    async with runtime.engine.connect() as conn:
        stored = dict((await conn.execute(select(usage_records.c.request_id, usage_records.c.key_id))).all())
        charged = dict((await conn.execute(select(key_usage.c.key_id, key_usage.c.usage_micros))).all())
        last_ip = await conn.scalar(select(key_usage.c.last_used_ip).where(key_usage.c.key_id == numbers[touched]))
    assert stored == {f"req-c{n}": numbers[(first, second)[n % 2]] for n in range(4)}
    assert charged == {numbers[first]: 20, numbers[second]: 20, numbers[touched]: 0}
    assert last_ip == "192.0.2.7"


async def test_the_number_a_record_or_a_use_carries_is_the_one_used(runtime: Runtime) -> None:
    # The number is taken as given, not looked up: a record and a use that carry a key's number but a hash that no
    # key has (which the gateway never makes: both come from one cached key) are stored and charged by the number,
    # where a look-up by hash would find no key and charge nothing.
    account, (first, used) = await keys_of_one_account(runtime, "given@example.com", 2)
    numbers = await numbers_by_hash(runtime)
    writer = UsageWriter(runtime.engine)
    writer.enqueue(usage_record("req-g", NOW, key_hash="f" * 64, account_id=account.id, key_id=numbers[first]))
    writer.touch("e" * 64, NOW, "192.0.2.8", numbers[used])
    await writer.flush()
    async with runtime.engine.connect() as conn:
        stored = await conn.scalar(select(usage_records.c.key_id).where(usage_records.c.request_id == "req-g"))
        charged = {r.key_id: (r.usage_micros, r.last_used_ip) for r in await conn.execute(select(key_usage))}
    assert stored == numbers[first]
    assert charged == {numbers[first]: (10, None), numbers[used]: (0, "192.0.2.8")}


async def test_a_key_read_from_the_store_has_its_number(runtime: Runtime) -> None:
    account, (key_hash,) = await keys_of_one_account(runtime, "own-number@example.com", 1)
    number = (await numbers_by_hash(runtime))[key_hash]
    record = await runtime.keys.get(key_hash=key_hash)
    assert record is not None and record.id == number
    # What the key cache loads on a key's first request: the key with its owner (a never rotated key's secret hash
    # is its hash).
    found = await runtime.keys.find_with_owner(secret_hash=key_hash, now=datetime.now(UTC))
    assert found is not None and found[0].id == number and found[1].id == account.id


async def test_the_upgrade_numbers_existing_keys_in_creation_order_and_fills_their_records(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate_to(engine, "0012")
        async with engine.begin() as conn:
            account_id = await account_in_raw_sql(conn, NOW)
            # Inserted newest first: the numbers follow created_at, not the order of the rows.
            for name, age in (("young", 1), ("old", 3), ("middle", 2)):
                await conn.execute(
                    text(
                        "INSERT INTO keys (hash, secret_hash, display, key_type, is_admin, name, account_id, "
                        "disabled, created_at, updated_at, usage_micros) "
                        "VALUES (:h, :h, 'kr-...', 'api', false, :h, :a, false, :t, :t, 0)"
                    ),
                    {"h": name, "a": account_id, "t": NOW - timedelta(days=age)},
                )
                await conn.execute(
                    text(
                        "INSERT INTO usage_records (request_id, created_at, key_hash, key_name, account_id, "
                        "streamed, prompt_tokens, completion_tokens, cost_micros, usage_estimated, status) "
                        "VALUES (:r, :t, :h, :h, :a, false, 0, 0, 0, false, 200)"
                    ),
                    {"r": f"req-{name}", "h": name, "a": account_id, "t": NOW},
                )
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            numbered = dict((await conn.execute(text("SELECT hash, id FROM keys"))).all())
            filled = dict((await conn.execute(text("SELECT key_hash, key_id FROM usage_records"))).all())
        assert numbered == {"old": 1, "middle": 2, "young": 3}
        assert filled == numbered
        # A key created after the upgrade takes the next number.
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO keys (hash, secret_hash, display, key_type, is_admin, name, account_id, disabled, "
                    "created_at, updated_at, usage_micros) "
                    "VALUES ('new', 'new', 'kr-...', 'api', false, 'new', :a, false, :t, :t, 0)"
                ),
                {"a": account_id, "t": NOW},
            )
            assert (await conn.execute(text("SELECT id FROM keys WHERE hash = 'new'"))).scalar_one() == 4
        # Down and up again: the same numbers.
        await migrate_to(engine, "0012", downgrade=True)
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            numbered = dict((await conn.execute(text("SELECT hash, id FROM keys"))).all())
        assert numbered == {"old": 1, "middle": 2, "young": 3, "new": 4}
    finally:
        await engine.dispose()


async def test_a_key_made_by_the_service_after_many_others_gets_a_number_of_its_own(runtime: Runtime) -> None:
    account = await runtime.account_service.create_account(AccountCreate(email="svc@example.com"), actor=TEST_ACTOR)
    issued = [
        await runtime.key_service.create(account=account, spec=KeyCreate(name=f"s{n}"), actor=TEST_ACTOR)
        for n in range(4)
    ]
    numbers = await numbers_by_hash(runtime)
    assert sorted(numbers[i.record.hash] for i in issued) == [1, 2, 3, 4]  # type: ignore[type-var]


async def test_records_an_earlier_release_wrote_without_a_number_get_it(runtime: Runtime) -> None:
    account, hashes = await keys_of_one_account(runtime, "rolling@example.com", 2)
    numbers = await numbers_by_hash(runtime)
    # The insert of the release before 0013: no key_id.
    insert = text(
        "INSERT INTO usage_records (request_id, created_at, key_hash, key_name, account_id, streamed, "
        "prompt_tokens, completion_tokens, cost_micros, usage_estimated, status) "
        "VALUES (:r, :t, :h, 'k', :a, false, 0, 0, 0, false, 200)"
    )
    async with runtime.engine.begin() as conn:
        # First, more records of a hash that no key has than a batch holds: they keep no number, and do not hold
        # up the records after them.
        for n in range(3):
            await conn.execute(insert, {"r": f"stranger-{n}", "t": NOW, "h": "f" * 64, "a": account.id})
        for n in range(5):
            await conn.execute(insert, {"r": f"old-{n}", "t": NOW, "h": hashes[n % 2], "a": account.id})
    assert await UsageRepository(runtime.engine).records(account_id=account.id, limit=10, key_hash=hashes[0]) == []
    assert await Numbering(runtime.engine, batch=2).sweep() == 5
    async with runtime.engine.connect() as conn:
        stored = dict((await conn.execute(select(usage_records.c.request_id, usage_records.c.key_id))).all())
    assert stored == {f"stranger-{n}": None for n in range(3)} | {f"old-{n}": numbers[hashes[n % 2]] for n in range(5)}
    log = await UsageRepository(runtime.engine).records(account_id=account.id, limit=10, key_hash=hashes[0])
    assert sorted(e.request_id for e in log) == ["old-0", "old-2", "old-4"]
    assert await Numbering(runtime.engine, batch=2).sweep() == 0


@pytest.mark.parametrize(
    ("query", "uses"),
    [
        # A key's log (store/usage.py): the key's range of the index, newest first, no sort.
        (
            "SELECT * FROM usage_records WHERE account_id = 1 AND key_id = 7 ORDER BY created_at DESC, id DESC "
            "LIMIT 101",
            "ix_usage_key_id_created_id (key_id=?)",
        ),
        # The numbering sweep (usage/numbering.py): the records without a number sort together in the same index.
        (
            "SELECT id FROM usage_records WHERE key_id IS NULL AND id > 0 ORDER BY id LIMIT 5000",
            "ix_usage_key_id_created_id (key_id=?)",
        ),
    ],
)
async def test_reads_by_key_number_use_its_index_on_sqlite(tmp_path: Path, query: str, uses: str) -> None:
    # SQLite's plans only: PostgreSQL's depend on its statistics (docs/benchmarks.md, 10 million records).
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'plans.db'}")
    try:
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            plan = (await conn.execute(text(f"EXPLAIN QUERY PLAN {query}"))).all()
    finally:
        await engine.dispose()
    assert any(uses in str(row) for row in plan), plan
