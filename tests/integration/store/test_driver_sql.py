"""Statements run through the driver (``store/driver_sql.py``) store exactly what SQLAlchemy's own execute stores.

The usage writer and the spend ledger write through the driver; everything else reads and writes through
SQLAlchemy. On SQLite a timestamp is text, so a period written one way and charged the other must be the same
primary key, or a period would be split in two rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, DateTime, String, bindparam, case, func, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import psycopg

from keyrelay.runtime import Runtime
from keyrelay.store.driver_sql import DriverStatement, _in_utc, _sqlite_datetime
from keyrelay.store.schema import keys, spend_periods, usage_records
from keyrelay.store.spend import PeriodCharge, add_charges
from tests.records import usage_record

STAMP = datetime(2026, 6, 1, 12, 30, 45, 123456, tzinfo=UTC)


async def test_a_period_row_from_sqlalchemy_is_the_row_the_driver_charges(runtime: Runtime) -> None:
    async with runtime.engine.begin() as conn:
        await conn.execute(
            spend_periods.insert(),
            {"scope": "key", "ident": "h", "reset": "daily", "period_start": STAMP, "usage_micros": 5},
        )
    async with runtime.engine.begin() as conn:
        await add_charges(conn, [PeriodCharge("key", "h", "daily", STAMP, 7)])
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(select(spend_periods.c.period_start, spend_periods.c.usage_micros))).all()
        # ... and SQLAlchemy's own comparison finds it.
        found = await conn.scalar(select(func.count()).where(spend_periods.c.period_start == STAMP))
    assert [(start.astimezone(UTC), usage) for start, usage in rows] == [(STAMP, 12)]
    assert found == 1


async def test_a_record_inserted_by_the_driver_reads_back_as_sqlalchemy_writes_it(runtime: Runtime) -> None:
    record = usage_record("req-1", STAMP, key_hash="h", account_id=1, client_ip="::1", ttft_ms=None)
    columns = [c.name for c in usage_records.c if c.name not in ("id", "key_id")]  # a UsageRecord field each
    insert = DriverStatement(usage_records.insert(), runtime.engine.dialect, columns=columns)
    async with runtime.engine.begin() as conn:
        await insert.executemany(conn, insert.from_tuples([tuple(getattr(record, c) for c in columns)]))
        reference = {c: getattr(record, c) for c in columns} | {"request_id": "req-2"}
        await conn.execute(usage_records.insert(), reference)
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(select(*usage_records.c).order_by(usage_records.c.request_id))).mappings().all()
        by_stamp = await conn.scalar(select(func.count()).where(usage_records.c.created_at == STAMP))
    driver, sqlalchemy = ({k: v for k, v in row.items() if k not in ("id", "request_id")} for row in rows)
    assert driver == sqlalchemy
    assert driver["created_at"].astimezone(UTC) == STAMP
    assert by_stamp == 2


async def test_a_parameter_used_twice_is_given_at_every_position(runtime: Runtime) -> None:
    # SQLite's positional style repeats a parameter used twice (the usage writer's key update does this).
    statement = spend_periods.update().values(
        usage_micros=bindparam("b_cost", type_=BigInteger) + bindparam("b_cost", type_=BigInteger),
        reset=bindparam("b_reset", type_=String),
    )
    driver = DriverStatement(statement, runtime.engine.dialect)
    async with runtime.engine.begin() as conn:
        await add_charges(conn, [PeriodCharge("key", "h", "daily", STAMP, 1)])
        await driver.executemany(conn, driver.from_mappings([{"b_cost": 4, "b_reset": "weekly"}]))
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(spend_periods.c.reset, spend_periods.c.usage_micros))).one()
    assert tuple(row) == ("weekly", 8)


def test_a_named_parameter_style_is_refused() -> None:
    with pytest.raises(ValueError, match="positional parameter style"):
        DriverStatement(spend_periods.update().values(usage_micros=bindparam("b")), psycopg.dialect())


async def test_a_timestamp_with_another_offset_is_stored_as_utc(runtime: Runtime) -> None:
    # SQLite's DATETIME processor keeps the wall time and drops the offset: 14:30+02:00 would read back as 14:30 UTC.
    upsert = DriverStatement(spend_periods.insert(), runtime.engine.dialect, columns=list(spend_periods.c.keys()))
    paris = STAMP.astimezone(timezone(timedelta(hours=2)))
    async with runtime.engine.begin() as conn:
        await upsert.executemany(conn, upsert.from_tuples([("key", "h", "daily", paris, 1)]))
    async with runtime.engine.connect() as conn:
        stored = await conn.scalar(select(spend_periods.c.period_start))
    assert stored is not None and (stored if stored.tzinfo else stored.replace(tzinfo=UTC)).astimezone(UTC) == STAMP


def _library_sqlite_timestamp() -> Callable[[Any], Any]:
    """SQLAlchemy's own SQLite DATETIME bind processor, after the conversion to UTC (what the store held before)."""
    dialect = sqlite_dialect.dialect()
    return _in_utc(DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect))


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001 - naive bounds
    st.one_of(st.none(), st.just(UTC), st.timezones(), st.integers(-1439, 1439)),
)
def test_the_fast_sqlite_timestamp_prints_what_sqlalchemy_prints(value: datetime, zone: object) -> None:
    # Naive, UTC, any IANA zone, any fixed offset: each timestamp is the text SQLAlchemy's processor gives it, so
    # a period or a record written by the driver is the same row SQLAlchemy's statements look up.
    if isinstance(zone, int):
        zone = timezone(timedelta(minutes=zone))
    if zone is not None:
        value = value.replace(tzinfo=cast(tzinfo, zone))
    library = _library_sqlite_timestamp()
    fast = _sqlite_datetime(library)
    assert fast is not None
    assert fast(value) == library(value)


def test_the_fast_sqlite_timestamp_leaves_other_values_to_sqlalchemy() -> None:
    library = _library_sqlite_timestamp()
    fast = _sqlite_datetime(library)
    assert fast is not None
    assert fast(None) is None
    with pytest.raises(TypeError):  # SQLAlchemy's own refusal of a value that is not a timestamp
        fast("2026-06-01")


def test_a_parameter_used_twice_is_processed_once() -> None:
    # A statement that uses the last-use time twice binds it at two positions on SQLite: printed once, given at both.
    used_at = bindparam("b_used_at", type_=keys.c.last_used_at.type)
    twice = (
        keys.update()
        .where(keys.c.hash == bindparam("b_ident"))
        .values(
            usage_micros=keys.c.usage_micros + bindparam("b_cost"),
            last_used_at=func.coalesce(used_at, keys.c.last_used_at),
            last_used_ip=case((used_at.is_(None), keys.c.last_used_ip), else_=bindparam("b_ip")),
        )
    )
    driver = DriverStatement(twice, sqlite_dialect.dialect())
    positions = [p for p, name in enumerate(driver.names) if name == "b_used_at"]
    assert len(positions) == 2
    ((first, process),) = [(p, f) for p, f in driver._processors if p in positions]
    printed: list[object] = []

    def counting(value: object) -> object:
        printed.append(value)
        return process(value)

    driver._processors = [(p, counting if p == first else f) for p, f in driver._processors]
    used = datetime(2026, 6, 1, 12, 30, 45, 123456, tzinfo=UTC)
    row = driver.from_mappings([{"b_ident": "h", "b_cost": 1, "b_used_at": used, "b_ip": "::1"}])[0]
    assert printed == [used]
    assert [row[p] for p in positions] == ["2026-06-01 12:30:45.123456"] * 2


def test_a_value_the_previous_row_had_is_processed_once() -> None:
    # A flush of records of keys in rotation binds one spend period start (one shared object) in every key's row of
    # the spend ledger: printed once for consecutive rows, each row still given its own value.
    upsert = DriverStatement(spend_periods.insert(), sqlite_dialect.dialect(), columns=list(spend_periods.c.keys()))
    position = upsert.names.index("period_start")
    ((_, process),) = [(p, f) for p, f in upsert._processors if p == position]
    printed: list[object] = []

    def counting(value: object) -> object:
        printed.append(value)
        return process(value)

    upsert._processors = [(p, counting if p == position else f) for p, f in upsert._processors]
    shared, other = STAMP, STAMP + timedelta(days=1)
    equal_not_same = STAMP + timedelta(0)  # equal to ``shared``, another object: printed again (no equality test)
    assert equal_not_same == shared and equal_not_same is not shared
    starts = [shared, shared, shared, other, shared, equal_not_same, None, None]
    rows = upsert.from_tuples([("key", f"h{n}", "daily", start, 1) for n, start in enumerate(starts)])
    assert printed == [shared, other, shared, equal_not_same, None]
    assert [row[position] for row in rows] == [
        *["2026-06-01 12:30:45.123456"] * 3,
        "2026-06-02 12:30:45.123456",
        *["2026-06-01 12:30:45.123456"] * 2,
        None,
        None,
    ]


def test_a_storage_format_the_fast_timestamp_does_not_print_keeps_sqlalchemy_s() -> None:
    # A DATETIME with another storage format (no microseconds): the probes disagree, so the library's processor stays.
    dialect = sqlite_dialect.dialect()
    other = sqlite_dialect.DATETIME(storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d")
    assert _sqlite_datetime(_in_utc(other.bind_processor(dialect))) is None


def test_a_statement_compiled_for_sqlite_binds_timestamps_with_the_fast_processor() -> None:
    # The usage insert's record time is bound by _sqlite_datetime's processor, not SQLAlchemy's (the same text).
    columns = [c.name for c in usage_records.c if c.name not in ("id", "key_id")]  # a UsageRecord field each
    insert = DriverStatement(usage_records.insert(), sqlite_dialect.dialect(), columns=columns)
    position = insert.names.index("created_at")
    processors = dict(insert._processors)
    assert processors[position].__qualname__ == "_sqlite_datetime.<locals>.process"
    stamp = datetime(2026, 6, 1, 14, 30, 45, 123456, tzinfo=timezone(timedelta(hours=2)))
    row = insert.from_tuples([tuple(stamp if name == "created_at" else None for name in insert.names)])[0]
    assert row[position] == "2026-06-01 12:30:45.123456"


def test_a_library_that_fails_on_a_probe_keeps_its_own_processor() -> None:
    def refusing(value: object) -> object:
        raise ValueError("not this one")

    assert _sqlite_datetime(refusing) is None
