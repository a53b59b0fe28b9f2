"""Migration 0003 turns each key's and group's (period_start, period_usage_micros) pair into spend ledger rows.

The reset kind of a key's pair is its effective one (its own with its own limit, else its group's default);
a pair without a kind is dropped. On SQLite the referenced ``groups`` table is copied, which needs foreign
keys off during the migration and back on after it. Downgrading keeps the latest row as the pair.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import BigInteger, Boolean, Column, DateTime, Integer, MetaData, String, Table, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine

from keyrelay.clock import ensure_utc
from keyrelay.store.accounts import GroupRepository
from keyrelay.store.engine import create_engine
from keyrelay.store.keys import KeyRepository
from keyrelay.store.migrate import head_revision, migrate_to
from keyrelay.store.schema import spend_periods

T = datetime(2026, 11, 20, 12, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
MONDAY_23 = DAY_23 = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday: the start of a week and of a day

# The 0002 tables, only the columns these rows need (the types bind datetimes as each store keeps them).
old = MetaData()
Kind = type[TypeEngine[Any]] | TypeEngine[Any]
STAMP = DateTime(timezone=True)
STAMPED: dict[str, Kind] = {"created_at": STAMP, "updated_at": STAMP}
PERIOD: dict[str, Kind] = {"usage_micros": BigInteger, "period_usage_micros": BigInteger, "period_start": STAMP}


def _table(table_name: str, /, **columns: Kind) -> Table:
    """A table of ``old`` with these columns, in order; the first is the primary key."""
    first = next(iter(columns))
    return Table(table_name, old, *(Column(name, kind, primary_key=name == first) for name, kind in columns.items()))


old_groups = _table(
    "groups", id=Integer, name=String, price_multiplier_ppm=BigInteger, default_limit_reset=String,
    quota_micros=BigInteger, quota_reset=String, **PERIOD, **STAMPED,
)  # fmt: skip
old_accounts = _table(
    "accounts", id=Integer, email=String, status=String, spent_micros=BigInteger, group_id=Integer, **STAMPED
)
old_keys = _table(
    "keys", hash=String, secret_hash=String, display=String, key_type=String, is_admin=Boolean, name=String,
    account_id=Integer, disabled=Boolean, limit_micros=BigInteger, limit_reset=String, **PERIOD, **STAMPED,
)  # fmt: skip

# Row values every row of a kind shares: created and updated at T; never charged.
AT_T = {"created_at": T, "updated_at": T}
UNCHARGED = {"usage_micros": 0, "period_usage_micros": 0, "period_start": None}


def group(ident: int, name: str, **fields: Any) -> dict[str, Any]:
    defaults = {
        "price_multiplier_ppm": 1_000_000,
        "default_limit_reset": None,
        "quota_micros": None,
        "quota_reset": None,
    }
    return {"id": ident, "name": name, **defaults, **UNCHARGED, **AT_T, **fields}


def account(ident: int, email: str, group_id: int | None) -> dict[str, Any]:
    return {"id": ident, "email": email, "status": "active", "spent_micros": 0, "group_id": group_id, **AT_T}


def key(name: str, account_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "hash": name * 8,
        "secret_hash": name * 8,
        "display": "kr_live_...abcd",
        "key_type": "regular",
        "is_admin": False,
        "name": name,
        "account_id": account_id,
        "disabled": False,
        "limit_micros": None,
        "limit_reset": None,
        **UNCHARGED,
        **AT_T,
        **fields,
    }


async def test_period_pairs_become_ledger_rows_and_back(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate_to(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                old_groups.insert(),
                [
                    group(1, "team", default_limit_reset="weekly", quota_micros=5_000, quota_reset="daily",
                          usage_micros=900, period_usage_micros=700, period_start=DAY_23),
                    group(2, "loose", usage_micros=40, period_usage_micros=40, period_start=DAY_23),  # no quota kind
                ],
            )  # fmt: skip
            await conn.execute(old_accounts.insert(), [account(1, "a@x.io", 1), account(2, "b@x.io", None)])
            await conn.execute(
                old_keys.insert(),
                [
                    # Its own limit: its own kind.
                    key("a", 1, limit_micros=100, limit_reset="monthly", period_usage_micros=50, period_start=NOV_1),
                    # No own limit: the group's default kind.
                    key("b", 1, period_usage_micros=30, period_start=MONDAY_23),
                    # No own limit and no group: no kind, no period.
                    key("c", 2, period_usage_micros=20, period_start=DAY_23),
                    # Never charged in a period.
                    key("d", 1, limit_micros=100, limit_reset="daily"),
                ],
            )

        await migrate_to(engine, "head")

        async with engine.connect() as conn:
            rows = {tuple(r) for r in (await conn.execute(select(spend_periods))).all()}
            columns = await conn.run_sync(
                lambda c: {t: {col["name"] for col in inspect(c).get_columns(t)} for t in ("keys", "groups")}
            )
            revision = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar_one()
        assert revision == head_revision()
        normalised = {(s, i, r, ensure_utc(p), u) for s, i, r, p, u in rows}
        assert normalised == {
            ("key", "a" * 8, "monthly", NOV_1, 50),
            ("key", "b" * 8, "weekly", MONDAY_23, 30),
            ("group", "1", "daily", DAY_23, 700),
        }
        for table in ("keys", "groups"):
            assert not {"period_start", "period_usage_micros"} & columns[table]
        assert (await KeyRepository(engine).get(key_hash="a" * 8)).period_usage == {"monthly:2026-11-01": 50}  # type: ignore[union-attr]
        team = await GroupRepository(engine).get(group_id=1)
        assert team is not None and team.period_usage == {"daily:2026-11-23": 700} and team.usage_micros == 900

        # Foreign keys are enforced again once the migration is over.
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(old_accounts.insert(), account(3, "c@x.io", 99))

        await migrate_to(engine, "0002", downgrade=True)
        async with engine.connect() as conn:
            pairs = {
                r.hash[0]: (r.period_start and ensure_utc(r.period_start), r.period_usage_micros)
                for r in await conn.execute(
                    select(old_keys.c.hash, old_keys.c.period_start, old_keys.c.period_usage_micros)
                )
            }
            team_pair = (
                await conn.execute(
                    select(old_groups.c.period_start, old_groups.c.period_usage_micros).where(old_groups.c.id == 1)
                )
            ).one()
        assert pairs == {"a": (NOV_1, 50), "b": (MONDAY_23, 30), "c": (None, 0), "d": (None, 0)}
        assert (ensure_utc(team_pair[0]), team_pair[1]) == (DAY_23, 700)
    finally:
        await engine.dispose()
