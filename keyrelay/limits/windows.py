"""Pure sliding-window arithmetic over 60 sub-buckets per window.

A window of ``seconds`` is cut into 60 buckets of ``seconds / 60``; a request counts in the bucket
of its arrival time, and the window holds the buckets whose index is within the last 60, the
current one included. Memory per window is at most 60 integers whatever the traffic, so a
rolling 7-day window costs as little as a 1-minute one. A request is admitted when the count
plus its own weight stays within the limit. Both backends use these functions (the Redis Lua
script mirrors them line by line).
"""

from __future__ import annotations

import math

BUCKETS = 60

# name → window length in seconds. rpm, per_5h, per_1d and per_7d count requests; tpm counts tokens.
WINDOW_SECONDS: dict[str, int] = {
    "rpm": 60,
    "per_5h": 5 * 3600,
    "per_1d": 86_400,
    "per_7d": 7 * 86_400,
    "tpm": 60,
}


def width(seconds: int) -> float:
    """Length of one bucket."""
    return seconds / BUCKETS


def bucket_of(now: float, seconds: int) -> int:
    """Index of the bucket that ``now`` falls in."""
    return math.floor(now / width(seconds))


def live(buckets: dict[int, int], current: int) -> int:
    """Sum of the buckets still inside the window ending at bucket ``current``."""
    oldest = current - BUCKETS + 1
    return sum(count for index, count in buckets.items() if index >= oldest)


def prune(buckets: dict[int, int], current: int) -> None:
    """Drop buckets that have left the window."""
    oldest = current - BUCKETS + 1
    for index in [i for i in buckets if i < oldest]:
        del buckets[index]


def retry_after(buckets: dict[int, int], current: int, seconds: int, now: float, limit: int, weight: int) -> float:
    """Seconds until enough of the window has expired for ``weight`` more to fit under ``limit``."""
    oldest = current - BUCKETS + 1
    excess = live(buckets, current) + weight - limit
    freed = 0
    for index in sorted(i for i in buckets if i >= oldest):
        freed += buckets[index]
        if freed >= excess:
            return max(0.0, (index + BUCKETS) * width(seconds) - now)
    return float(seconds)  # the weight alone exceeds the limit: it never fits
