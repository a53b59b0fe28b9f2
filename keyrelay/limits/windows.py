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

    Buckets live in one flat list, oldest first, ``[index, count, index, count, ...]``, with a running total, so
    counting does not walk 60 buckets on every request. The in-process backend uses this; the functions above
    are the specification it is tested against. Memory is what grows with the number of keys in use: a window
    of one bucket is this object and one list of two integers (an empty deque alone weighed some 600 bytes, a
    list per bucket 72 more), and the bucket width is worked out when needed rather than kept per window.
    """

    __slots__ = ("_buckets", "_seconds", "_total")

    def __init__(self, seconds: int) -> None:
        self._seconds = seconds
        self._buckets: list[int] = []  # index, count, index, count, ...: oldest first
        self._total = 0

    def _current(self, now: float) -> int:
        return math.floor(now / (self._seconds / BUCKETS))  # as bucket_of(): the same float operations

    def _advance(self, current: int) -> None:
        oldest = current - BUCKETS + 1
        buckets = self._buckets
        gone = 0
        while gone < len(buckets) and buckets[gone] < oldest:
            self._total -= buckets[gone + 1]
            gone += 2
        if gone:
            del buckets[:gone]

    def used(self, now: float) -> int:
        """What the window holds at ``now`` (epoch seconds); forgets the buckets that have left it."""
        self._advance(self._current(now))
        return self._total

    def used_at(self, now: float) -> int:
        """What ``used(now)`` returns (``now`` in epoch seconds), without forgetting anything: a pure read.

        The buckets that have left the window are oldest first, so only they are walked (at most 60).
        """
        oldest = self._current(now) - BUCKETS + 1
        buckets = self._buckets
        total = self._total
        for at in range(0, len(buckets), 2):
            if buckets[at] >= oldest:
                break
            total -= buckets[at + 1]
        return total

    def add(self, now: float, weight: int) -> None:
        """Count ``weight`` at ``now`` (call ``used`` first for the same ``now``)."""
        current = self._current(now)
        buckets = self._buckets
        if not buckets:
            self._buckets = [current, weight]  # exactly two slots: most windows never hold a second bucket
        elif buckets[-2] == current:
            buckets[-1] += weight
        else:
            buckets += (current, weight)
        self._total += weight

    def adjust(self, bucket: int, delta: int) -> None:
        """Correct an earlier ``add`` in ``bucket`` (tpm settlement), if it is still in the window."""
        buckets = self._buckets
        for at in range(0, len(buckets), 2):
            if buckets[at] == bucket:
                before = buckets[at + 1]
                buckets[at + 1] = max(0, before + delta)
                self._total += buckets[at + 1] - before  # the total is the buckets' sum: no need to add them up again
                return

    def retry_after(self, now: float, limit: int, weight: int) -> float:
        """Seconds until ``weight`` more fit under ``limit``."""
        excess = self._total + weight - limit
        freed = 0
        buckets = self._buckets
        for at in range(0, len(buckets), 2):
            freed += buckets[at + 1]
            if freed >= excess:
                return max(0.0, (buckets[at] + BUCKETS) * (self._seconds / BUCKETS) - now)
        return float(self._seconds)

    def next_expiry(self, now: float) -> float:
        """Seconds until the oldest counted bucket leaves the window (the whole window if empty)."""
        if not self._buckets:
            return float(self._seconds)
        return max(0.0, (self._buckets[0] + BUCKETS) * (self._seconds / BUCKETS) - now)

    def bucket(self, now: float) -> int:
        """The bucket index of ``now``."""
        return self._current(now)

    def buckets(self) -> list[tuple[int, int]]:
        """The buckets held, oldest first, as ``(index, count)`` pairs (for tests and inspection)."""
        return list(zip(self._buckets[::2], self._buckets[1::2], strict=True))
