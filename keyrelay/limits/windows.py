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


class SlidingWindow:
    """The same arithmetic as the functions above, kept incrementally: O(1) amortised per request.

    Buckets live in a list, oldest first, with a running total, so counting does not walk 60
    buckets on every request. The in-process backend uses this; the functions above are the
    specification it is tested against. A list, not a deque: it holds at most 60 buckets, so taking
    the oldest costs no more, and an empty deque alone weighs some 600 bytes, twice per key in use.
    """

    __slots__ = ("_buckets", "_seconds", "_total", "_width")

    def __init__(self, seconds: int) -> None:
        self._seconds = seconds
        self._width = seconds / BUCKETS
        self._buckets: list[list[int]] = []  # [index, count], oldest first
        self._total = 0

    def _advance(self, current: int) -> None:
        oldest = current - BUCKETS + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            self._total -= buckets.pop(0)[1]

    def used(self, now: float) -> int:
        """What the window holds at ``now`` (epoch seconds); forgets the buckets that have left it."""
        self._advance(math.floor(now / self._width))
        return self._total

    def used_at(self, now: float) -> int:
        """What ``used(now)`` returns (``now`` in epoch seconds), without forgetting anything: a pure read.

        The buckets that have left the window are oldest first, so only they are walked (at most 60).
        """
        oldest = math.floor(now / self._width) - BUCKETS + 1
        total = self._total
        for index, count in self._buckets:
            if index >= oldest:
                break
            total -= count
        return total

    def add(self, now: float, weight: int) -> None:
        """Count ``weight`` at ``now`` (call ``used`` first for the same ``now``)."""
        current = math.floor(now / self._width)
        buckets = self._buckets
        if buckets and buckets[-1][0] == current:
            buckets[-1][1] += weight
        else:
            buckets.append([current, weight])
        self._total += weight

    def adjust(self, bucket: int, delta: int) -> None:
        """Correct an earlier ``add`` in ``bucket`` (tpm settlement), if it is still in the window."""
        for entry in self._buckets:
            if entry[0] == bucket:
                before = entry[1]
                entry[1] = max(0, before + delta)
                self._total += entry[1] - before  # the total is the buckets' sum: no need to add them up again
                return

    def retry_after(self, now: float, limit: int, weight: int) -> float:
        """Seconds until ``weight`` more fit under ``limit``."""
        excess = self._total + weight - limit
        freed = 0
        for index, count in self._buckets:
            freed += count
            if freed >= excess:
                return max(0.0, (index + BUCKETS) * self._width - now)
        return float(self._seconds)

    def next_expiry(self, now: float) -> float:
        """Seconds until the oldest counted bucket leaves the window (the whole window if empty)."""
        if not self._buckets:
            return float(self._seconds)
        return max(0.0, (self._buckets[0][0] + BUCKETS) * self._width - now)

    def bucket(self, now: float) -> int:
        """The bucket index of ``now``."""
        return math.floor(now / self._width)
