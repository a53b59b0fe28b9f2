"""Spend periods: the period a charge belongs to, and the counter name every component uses for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.limits.periods import counter_name, period_end, period_start, spend_period, stored_usage
from keyrelay.store.records import GroupRecord

RESETS = ("daily", "weekly", "monthly")
# hypothesis takes naive bounds and attaches the timezone itself
instants = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))  # noqa: DTZ001


@settings(max_examples=300, deadline=None, database=None)
@given(reset=st.sampled_from(RESETS), at=instants, offset_minutes=st.integers(-14 * 60, 14 * 60))
def test_a_charge_belongs_to_the_one_period_containing_its_admission(
    reset: str, at: datetime, offset_minutes: int
) -> None:
    period = spend_period(reset, at)
    assert period is not None
    start, end = period_start(reset, at), period_end(reset, at)
    assert period.reset == reset and period.start == start and start is not None and end is not None
    assert start <= at < end
    assert period.counter == counter_name(reset, start) == f"{reset}:{start.date().isoformat()}"
    # The same instant written in another UTC offset is the same period (periods are UTC).
    local = at.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert spend_period(reset, local) == period
    # Its last microsecond still belongs to it; the next period starts at its end.
    assert spend_period(reset, end - timedelta(microseconds=1)) == period
    after = spend_period(reset, end)
    assert after is not None and after.start == end and after.counter != period.counter


def test_no_reset_is_a_lifetime_cap() -> None:
    assert spend_period(None, datetime(2026, 6, 1, tzinfo=UTC)) is None


def test_stored_usage_reads_the_current_period_of_the_asked_kind() -> None:
    at = datetime(2026, 6, 3, 12, tzinfo=UTC)  # a Wednesday
    group = GroupRecord(
        1, "g", None, 1_000_000, None, None, None, None, None, None, None, None, None, None, 10, "daily", 99,
        {"daily:2026-06-02": 5, "weekly:2026-06-01": 7, "monthly:2026-06-01": 8},
        at, at,
    )  # fmt: skip
    assert stored_usage(group, None, at) == 99  # lifetime
    assert stored_usage(group, "daily", at) == 0  # the stored day is yesterday
    assert stored_usage(group, "weekly", at) == 7
    assert stored_usage(group, "monthly", at) == 8
