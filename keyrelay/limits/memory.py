"""In-process limits backend: the default when no Redis is configured (one gateway process).

Counters live in dicts; admission checks every level and only then applies every change, all
without an ``await`` in between, so on one event loop it is atomic exactly like the Redis script.

What is kept per key is what grows with the number of keys in use, so it is kept small and dropped once
idle: a key's request windows go when every one of them is empty (their period is over) and it has no
request in flight; a spend counter goes a day after its period ends. Housekeeping (``maintain``, every
second) looks at a bounded batch of entries per call, so it never stalls the event loop however many keys
there are.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from keyrelay.limits import windows as w
from keyrelay.limits.backend import (
    Admission,
    AdmissionRequest,
    RequestWindow,
    Reservation,
    SpendLevel,
    WindowStatus,
    WindowUsage,
    precheck,
    spend_refusal,
    window_refusal,
)

# Entries housekeeping examines per call (once a second): about a millisecond's work whatever the key count.
SWEEP_BATCH = 4096

# A spend counter by (scope, ident, counter): the strings are the ones the cached key already holds, where
# SpendLevel.name would build a new one per request.
_SpendSlot = tuple[str, str, str]

Name = TypeVar("Name", bound=Hashable)
State = TypeVar("State")


@dataclass(slots=True)
class _Spend:
    spent: int
    reserved: int = 0
    expires_at: float | None = None


class _KeyState:
    """One key's request windows (None until used) and requests in flight: no dict, a slot per window."""

    __slots__ = ("in_flight", "per_1d", "per_5h", "per_7d", "rpm", "tpm")

    def __init__(self) -> None:
        self.rpm: w.SlidingWindow | None = None
        self.per_5h: w.SlidingWindow | None = None
        self.per_1d: w.SlidingWindow | None = None
        self.per_7d: w.SlidingWindow | None = None
        self.tpm: w.SlidingWindow | None = None
        self.in_flight = 0

    def window(self, name: str) -> w.SlidingWindow | None:
        """The window of that name ("rpm", "per_5h", "per_1d", "per_7d", "tpm"), None while unused."""
        window: w.SlidingWindow | None = getattr(self, name)
        return window

    def idle(self, now: float) -> bool:
        """Nothing in flight and every window empty at ``now``: dropping it changes no decision."""
        if self.in_flight:
            return False
        windows = (self.rpm, self.per_5h, self.per_1d, self.per_7d, self.tpm)
        return all(window is None or not window.used_at(now) for window in windows)


class _Sweep(Generic[Name, State]):
    """Walks a dict a batch per call, from a list of its names taken when the walk starts.

    A dict never gives back the table it grew to by deletions alone, so a walk that leaves the dict at less
    than a quarter of the largest size seen since it was last rebuilt rebuilds it.
    """

    __slots__ = ("_at", "_names", "_peak")

    def __init__(self) -> None:
        self._names: list[Name] = []
        self._at = 0
        self._peak = 0

    def __call__(self, table: dict[Name, State], expired: Callable[[State], bool]) -> dict[Name, State]:
        """Drop the expired entries of the next batch; returns the table (a smaller copy once most of it went)."""
        if not self._names:
            self._names, self._at = list(table), 0
            self._peak = max(self._peak, len(table))
        batch = self._names[self._at : self._at + SWEEP_BATCH]
        self._at += len(batch)
        for name in batch:
            state = table.get(name)
            if state is not None and expired(state):
                del table[name]
        if self._at >= len(self._names):  # the walk is over
            self._names = []
            if len(table) * 4 < self._peak:
                table, self._peak = dict(table), len(table)
        return table


class MemoryLimits:
    """Single-process limits backend."""

    takes_records = False  # the usage writer's journal keeps the records of this shape

    def __init__(self) -> None:
        self._spend: dict[_SpendSlot, _Spend] = {}
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)
        # The latest admission time seen: housekeeping measures age on the clock admissions use (the
        # gateway's injected clock), never on the wall clock, so a counter is dropped only once its
        # period is over by that clock.
        self._now = 0.0
        self._sweep_keys: _Sweep[str, _KeyState] = _Sweep()
        self._sweep_spend: _Sweep[_SpendSlot, _Spend] = _Sweep()

    def _level(self, level: SpendLevel, now: float) -> _Spend:
        slot = (level.scope, level.ident, level.counter)
        state = self._spend.get(slot)
        if state is None:
            expires = None if level.ttl_s is None else now + level.ttl_s
            state = self._spend[slot] = _Spend(spent=level.base_micros, expires_at=expires)
        return state

    async def admit(self, request: AdmissionRequest) -> Admission:
        """Check everything, then reserve everything (no await in between)."""
        precheck(request)
        now = request.now
        self._now = max(self._now, now)
        levels = self._check_spend(request)
        key = self._keys.get(request.key_hash)
        if key is None:
            key = _KeyState()
            if request.windows or request.tpm or request.max_concurrent:  # else it would hold nothing
                self._keys[request.key_hash] = key
        counted, tightest = self._check_windows(request, key)
        tpm = self._check_tpm(request, key)
        if request.max_concurrent and key.in_flight >= request.max_concurrent:
            raise window_refusal("max_concurrent", request.max_concurrent, 1.0, in_flight=key.in_flight)
        # Every check passed: apply every change.
        for state in levels:
            state.reserved += request.cost_micros
        for window in counted:
            window.add(now, 1)
        tpm_bucket: int | None = None
        if tpm is not None:
            tpm.add(now, request.max_tokens)
            tpm_bucket = tpm.bucket(now)
        if request.max_concurrent:
            key.in_flight += 1
        reservation = Reservation(
            ident=str(next(self._ids)),
            key_hash=request.key_hash,
            spend=request.spend,
            cost_micros=request.cost_micros,
            tpm_bucket=tpm_bucket,
            max_tokens=request.max_tokens if tpm_bucket is not None else 0,
            concurrent=bool(request.max_concurrent),
        )
        return Admission(reservation=reservation, window=tightest)

    def _check_spend(self, request: AdmissionRequest) -> list[_Spend]:
        cost = request.cost_micros
        states = []
        for level in request.spend:
            state = self._spend.get((level.scope, level.ident, level.counter)) or self._level(level, request.now)
            if state.spent + state.reserved + cost > level.cap_micros:
                left = max(0, level.cap_micros - state.spent - state.reserved)
                raise spend_refusal(level, left, cost, level.resets_in_s)
            states.append(state)
        return states

    def _check_windows(
        self, request: AdmissionRequest, key: _KeyState
    ) -> tuple[list[w.SlidingWindow], WindowStatus | None]:
        now = request.now
        tightest: tuple[int, int, w.SlidingWindow] | None = None
        counted: list[w.SlidingWindow] = []
        for spec in request.windows:
            window = key.window(spec.name)
            if window is None:
                window = w.SlidingWindow(spec.seconds)
                setattr(key, spec.name, window)
            used = window.used(now)
            if used + 1 > spec.limit:
                raise window_refusal(spec.name, spec.limit, window.retry_after(now, spec.limit, 1))
            remaining = spec.limit - used - 1
            if tightest is None or remaining < tightest[1]:
                tightest = (spec.limit, remaining, window)
            counted.append(window)
        if tightest is None:
            return counted, None
        limit, remaining, window = tightest
        return counted, WindowStatus(limit=limit, remaining=remaining, reset_s=window.next_expiry(now))

    def _check_tpm(self, request: AdmissionRequest, key: _KeyState) -> w.SlidingWindow | None:
        if not request.tpm:
            return None
        window = key.tpm
        if window is None:
            window = key.tpm = w.SlidingWindow(w.WINDOW_SECONDS["tpm"])
        if window.used(request.now) + request.max_tokens > request.tpm:
            raise window_refusal("tpm", request.tpm, window.retry_after(request.now, request.tpm, request.max_tokens))
        return window

    async def settle(
        self, reservation: Reservation, *, cost_micros: int, tokens: int, now: float, record: bytes | None = None
    ) -> bool:
        """Release the reservation and count the actual cost and tokens; never takes ``record`` (False)."""
        for level in reservation.spend:
            state = self._spend.get((level.scope, level.ident, level.counter))
            if state is not None:
                state.reserved = max(0, state.reserved - reservation.cost_micros)
                state.spent += cost_micros
        key = self._keys.get(reservation.key_hash)
        if key is None:
            return False
        if reservation.tpm_bucket is not None:
            window = key.tpm
            if window is not None:
                window.adjust(reservation.tpm_bucket, tokens - reservation.max_tokens)
        if reservation.concurrent:
            key.in_flight = max(0, key.in_flight - 1)
        return False

    async def window_usage(
        self, key_hash: str, windows: tuple[RequestWindow, ...], *, tpm: bool, now: float
    ) -> WindowUsage:
        """The key's window counts at ``now`` (epoch seconds); reads ``used_at``, so nothing is pruned or created.

        Nor does it move the housekeeping clock: only admissions do.
        """
        key = self._keys.get(key_hash)
        counts = {spec.name: _used_at(None if key is None else key.window(spec.name), now) for spec in windows}
        tokens = _used_at(None if key is None else key.tpm, now) if tpm else None
        return WindowUsage(counts=counts, tokens_per_minute=tokens, in_flight=0 if key is None else key.in_flight)

    async def spent(self, level: SpendLevel) -> int:
        """Settled spend of a counter."""
        state = self._spend.get((level.scope, level.ident, level.counter))
        return level.base_micros if state is None else state.spent

    async def maintain(self) -> None:
        """Drop, from the next batch of entries, idle keys' windows and spend counters a day past their period.

        Age is judged on the admission clock. A key is idle when all its windows are empty and nothing is in
        flight (``_KeyState.idle``); a counter is kept a day after its period (``SpendLevel.ttl_s``) so that a
        request admitted before midnight and settled after still finds it.
        """
        now = self._now
        self._keys = self._sweep_keys(self._keys, lambda key: key.idle(now))
        self._spend = self._sweep_spend(
            self._spend, lambda spend: spend.expires_at is not None and spend.expires_at < now
        )

    async def mark(self, marks: tuple[tuple[str, int], ...]) -> None:
        """Nothing to record: in one process the services invalidate the cache itself, synchronously."""

    async def check_current(self, marks: tuple[tuple[str, int], ...]) -> None:
        """Always current: see ``mark``."""

    async def close(self) -> None:
        """Nothing to release."""


def _used_at(window: w.SlidingWindow | None, now: float) -> int:
    return 0 if window is None else window.used_at(now)
