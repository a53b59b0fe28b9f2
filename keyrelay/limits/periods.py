"""Calendar-aligned spend periods in UTC: daily at 00:00, weekly on Monday 00:00, monthly on the 1st."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Protocol


def period_start(reset: str | None, now: datetime) -> datetime | None:
    """Start of the spend period containing ``now``; None for a lifetime cap (no reset).

    Raises:
        ValueError: Unknown reset name.
    """
    if reset is None:
        return None
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return _start_of(reset, now.toordinal())


@functools.lru_cache(maxsize=256)
def _start_of(reset: str, day: int) -> datetime:
    # Called for every request and every usage record: the answer only changes once a day.
    midnight = datetime.fromordinal(day).replace(tzinfo=UTC)
    if reset == "daily":
        return midnight
    if reset == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    if reset == "monthly":
        return midnight.replace(day=1)
    raise ValueError(f"unknown limit_reset {reset!r}")


def period_end(reset: str | None, now: datetime) -> datetime | None:
    """End (exclusive) of the spend period containing ``now``; None for a lifetime cap."""
    start = period_start(reset, now)
    if start is None:
        return None
    if reset == "daily":
        return start + timedelta(days=1)
    if reset == "weekly":
        return start + timedelta(days=7)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


def window_usage_micros(
    *, limit_reset: str | None, usage_micros: int, period_usage_micros: int, period: datetime | None, now: datetime
) -> int:
    """Spend in the current limit window: lifetime usage for a cap that never resets, else the period's."""
    start = period_start(limit_reset, now)
    if start is None:
        return usage_micros
    if period is not None and period.astimezone(UTC) >= start:
        return period_usage_micros
    return 0


class UsageCounters(Protocol):
    """A stored record with lifetime and period usage (keys and groups)."""

    @property
    def usage_micros(self) -> int: ...  # noqa: D102

    @property
    def period_usage_micros(self) -> int: ...  # noqa: D102

    @property
    def period_start(self) -> datetime | None: ...  # noqa: D102


def stored_usage(record: UsageCounters, reset: str | None, now: datetime) -> int:
    """What a stored key or group has spent in the current window of ``reset``."""
    return window_usage_micros(
        limit_reset=reset,
        usage_micros=record.usage_micros,
        period_usage_micros=record.period_usage_micros,
        period=record.period_start,
        now=now,
    )
