"""The notification check reads only the keys that may be due, chosen by the database (SQLite and PostgreSQL).

Every rule of ``services/notifications.py`` that can make a key due, and every one that rules it out, has a key
here: the database must pick exactly the due ones (before, the check read every key, every minute, in every
process).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from keyrelay.keys.spec import KeyCreate
from keyrelay.limits.periods import period_start
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.services.notifications import EXPIRY_NOTICE, SPEND_THRESHOLDS
from keyrelay.store.schema import accounts, keys
from keyrelay.store.spend import PeriodCharge, add_charges
from tests.conftest import TEST_ACTOR

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday
STARTS = {reset: start for reset in ("daily", "weekly", "monthly") if (start := period_start(reset, NOW))}


async def due(rt: Runtime, *, after: str = "", limit: int = 500) -> list[str]:
    page = await rt.notifications.keys_due_after(
        after_hash=after,
        limit=limit,
        now=NOW,
        period_starts=STARTS,
        notice=EXPIRY_NOTICE,
        spend_percent=SPEND_THRESHOLDS[0],
    )
    return [k.name for k in page]


async def test_the_database_picks_exactly_the_keys_that_may_be_due(runtime: Runtime) -> None:
    rt = runtime
    await rt.account_service.create_group(
        GroupCreate(name="team", default_limit=Decimal("0.001"), default_limit_reset="weekly"), actor=TEST_ACTOR
    )
    account = await rt.account_service.create_account(
        AccountCreate(email="a@example.com", group="team"), actor=TEST_ACTOR
    )
    hashes: dict[str, str] = {}
    charges: list[PeriodCharge] = []

    async def key(name: str, *, period: tuple[str, datetime, int] | None = None, **columns: Any) -> None:
        issued = await rt.key_service.create(account=account, spec=KeyCreate(name=name), actor=TEST_ACTOR)
        hashes[name] = issued.record.hash
        async with rt.engine.begin() as conn:
            await conn.execute(keys.update().where(keys.c.hash == issued.record.hash).values(**columns))
        if period is not None:
            charges.append(PeriodCharge("key", issued.record.hash, *period))

    day, week = STARTS["daily"], STARTS["weekly"]
    # Due:
    await key("lifetime-80", limit_micros=1000, usage_micros=800)
    await key("daily-80", limit_micros=1000, limit_reset="daily", usage_micros=5000, period=("daily", day, 800))
    await key("group-weekly-85", usage_micros=850, period=("weekly", week, 850))  # the group's $0.001 weekly
    await key("expiring-in-3-days", expires_at=NOW + timedelta(days=3))
    # Not due:
    await key("lifetime-79.9", limit_micros=1000, usage_micros=799)
    await key(
        "yesterday-90",
        limit_micros=1000,
        limit_reset="daily",
        usage_micros=900,
        period=("daily", day - timedelta(days=1), 900),
    )
    await key(
        "daily-limit-weekly-spend",
        limit_micros=1000,
        limit_reset="daily",
        usage_micros=900,
        period=("weekly", week, 900),
    )
    await key("own-limit-0-hides-group", limit_micros=0, usage_micros=10**9, period=("weekly", week, 10**9))
    await key("expiring-in-8-days", expires_at=NOW + timedelta(days=8))
    await key("expired", expires_at=NOW - timedelta(days=1), limit_micros=1000, usage_micros=1000)
    await key("disabled", disabled=True, limit_micros=1000, usage_micros=1000)
    await key("deleted", deleted_at=NOW, limit_micros=1000, usage_micros=1000)
    async with rt.engine.begin() as conn:
        await add_charges(conn, sorted(charges))

    expected = ["lifetime-80", "daily-80", "group-weekly-85", "expiring-in-3-days"]
    assert sorted(await due(rt)) == sorted(expected)
    # In hash order, page by page.
    in_order = sorted(expected, key=hashes.__getitem__)
    first = await due(rt, limit=2)
    assert first == in_order[:2]
    assert await due(rt, after=hashes[first[-1]], limit=2) == in_order[2:]


async def test_the_database_picks_exactly_the_accounts_running_low(runtime: Runtime) -> None:
    rt = runtime
    made = {}
    for email, balance, spent, status in [
        ("low@example.com", Decimal("5"), 1_000_001, "active"),  # $3.999999 left: below $4
        ("overdrawn@example.com", Decimal("1"), 2_000_000, "active"),  # below zero
        ("exactly@example.com", Decimal("5"), 1_000_000, "active"),  # $4 left: not below
        ("unlimited@example.com", None, 10**9, "active"),
        ("inactive@example.com", Decimal("1"), 1_000_000, "inactive"),
    ]:
        account = await rt.account_service.create_account(
            AccountCreate(email=email, balance=balance, status=status), actor=TEST_ACTOR
        )
        async with rt.engine.begin() as conn:
            await conn.execute(accounts.update().where(accounts.c.id == account.id).values(spent_micros=spent))
        made[account.id] = email
    page = await rt.notifications.accounts_low_after(after_id=0, limit=500, below_micros=4_000_000)
    assert [made[a.id] for a, _ in page] == ["low@example.com", "overdrawn@example.com"]
