"""Time source: timezone-aware UTC wall clock and a monotonic clock, injectable for tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What the code may ask about time."""

    def now_utc(self) -> datetime:
        """The current wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...


class SystemClock:
    """The real clock."""

    def now_utc(self) -> datetime:
        """The current wall-clock time, timezone-aware UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        return time.monotonic()


def ensure_utc(value: datetime) -> datetime:
    """Interpret a naive datetime as UTC (as SQLite returns them) and convert aware ones to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
