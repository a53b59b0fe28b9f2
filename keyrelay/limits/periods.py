"""Calendar-aligned spend periods in UTC: daily at 00:00, weekly on Monday 00:00, monthly on the 1st."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


def period_start(reset: str | None, now: datetime) -> datetime | None:
    """Start of the spend period containing ``now``; None for a lifetime cap (no reset).

    Raises:
        ValueError: Unknown reset name.
    """
    period = spend_period(reset, now)
    return None if period is None else period.start


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


@functools.lru_cache(maxsize=256)
def counter_name(reset: str, start: datetime) -> str:
    """The name of one period's spend counter, e.g. ``"daily:2026-11-23"``.

    The limits backends (``SpendLevel.counter``), the usage writer and the store's spend ledger all name a
    period this way, so a charge reaches the same period everywhere. Cached: every usage record asks for the
    names of its periods (``SpendPeriod.counter``) when queued and again when written, and they change once a day.
    """
    return f"{reset}:{start.date().isoformat()}"


@dataclass(frozen=True, slots=True)
class SpendPeriod:
    """One calendar spend period: its reset kind and its start (UTC)."""

    reset: str
    start: datetime

    @property
    def counter(self) -> str:
        """The period's counter name (see :func:`counter_name`)."""
        return counter_name(self.reset, self.start)


def spend_period(reset: str | None, at: datetime) -> SpendPeriod | None:
    """The period of ``reset`` that contains ``at``; None for a lifetime cap.

    A request's charge belongs to the period of its admission (``at`` = the admission time): the one its
    reservation was held in. It is added to that period's counter only, however late it is written.

    Raises:
        ValueError: Unknown reset name.
    """
    if reset is None:
        return None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return _period_of(reset, at.toordinal())


@functools.lru_cache(maxsize=256)
def _period_of(reset: str, day: int) -> SpendPeriod:
    # One object per period and kind: every usage record of a day shares it.
    return SpendPeriod(reset, _start_of(reset, day))


class UsageCounters(Protocol):
    """A stored key or group: lifetime usage and the spend of its latest stored period of each reset kind."""

    @property
    def usage_micros(self) -> int: ...  # noqa: D102

    @property
    def period_usage(self) -> Mapping[str, int]: ...  # noqa: D102


def stored_usage(record: UsageCounters, reset: str | None, now: datetime) -> int:
    """What a stored key or group has spent in the window of ``reset`` containing ``now`` (micro-dollars).

    Lifetime usage for a cap that never resets; else the stored spend of the current period, 0 when the
    store has none for it (a new period starts from zero by itself).
    """
    period = spend_period(reset, now)
    if period is None:
        return record.usage_micros
    return record.period_usage.get(period.counter, 0)
