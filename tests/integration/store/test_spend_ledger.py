"""The spend ledger on both stores: charges only add, readers see the latest period of each kind, a deleted
group takes its spend with it."""

from __future__ import annotations

from datetime import UTC, datetime

from keyrelay.limits.periods import stored_usage
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import GroupCreate
from keyrelay.store.spend import PeriodCharge, add_charges
from tests.conftest import TEST_ACTOR

DAY_1, DAY_2 = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 2, tzinfo=UTC)


async def charge(rt: Runtime, *charges: PeriodCharge) -> None:
    async with rt.engine.begin() as conn:
        await add_charges(conn, list(charges))


async def test_charges_add_to_their_own_period_and_readers_see_the_latest(runtime: Runtime) -> None:
    group = await runtime.account_service.create_group(GroupCreate(name="team"), actor=TEST_ACTOR)
    ident = str(group.id)
    await charge(runtime, PeriodCharge("group", ident, "daily", DAY_2, 5))
    # A late charge to the day before adds to that day's row, and never to the newer one.
    await charge(
        runtime, PeriodCharge("group", ident, "daily", DAY_1, 7), PeriodCharge("group", ident, "weekly", DAY_1, 3)
    )
    await charge(runtime, PeriodCharge("group", ident, "daily", DAY_2, 1))
    stored = await runtime.groups.get(group_id=group.id)
    assert stored is not None
    assert stored.period_usage == {"daily:2026-06-02": 6, "weekly:2026-06-01": 3}
    assert stored_usage(stored, "daily", DAY_2) == 6
    assert stored_usage(stored, "weekly", DAY_2) == 3  # 2026-06-01 is a Monday: the same week
    assert stored_usage(stored, "monthly", DAY_2) == 0  # nothing admitted under a monthly quota
    assert stored_usage(stored, "daily", datetime(2026, 6, 3, tzinfo=UTC)) == 0  # a new day starts at zero


async def test_a_deleted_group_takes_its_period_spend_along(runtime: Runtime) -> None:
    old = await runtime.account_service.create_group(GroupCreate(name="old", quota_reset="daily"), actor=TEST_ACTOR)
    await charge(runtime, PeriodCharge("group", str(old.id), "daily", DAY_2, 9))
    await runtime.account_service.delete_group(old, actor=TEST_ACTOR)
    # SQLite hands the same id to the next group: it must start from nothing.
    new = await runtime.account_service.create_group(GroupCreate(name="new", quota_reset="daily"), actor=TEST_ACTOR)
    assert new.period_usage == {}
    assert stored_usage(new, "daily", DAY_2) == 0
