"""In-process limits backend: the default when no Redis is configured (one gateway process).

Counters live in dicts; admission checks every level and only then applies every change, all
without an ``await`` in between, so on one event loop it is atomic exactly like the Redis script.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class _Spend:
    spent: int
    reserved: int = 0
    expires_at: float | None = None


@dataclass(slots=True)
class _KeyState:
    windows: dict[str, w.SlidingWindow] = field(default_factory=dict)
    in_flight: int = 0
    last_seen: float = 0.0


class MemoryLimits:
    """Single-process limits backend."""

    takes_records = False  # the usage writer's journal keeps the records of this shape

    def __init__(self) -> None:
        self._spend: dict[str, _Spend] = {}
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)
        # The latest admission time seen: housekeeping measures age on the clock admissions use (the
        # gateway's injected clock), never on the wall clock, so a counter is dropped only once its
        # period is over by that clock.
        self._now = 0.0

    def _level(self, level: SpendLevel, now: float) -> _Spend:
        state = self._spend.get(level.name)
        if state is None:
            expires = None if level.ttl_s is None else now + level.ttl_s
            state = self._spend[level.name] = _Spend(spent=level.base_micros, expires_at=expires)
        return state

    def _prune(self, now: float) -> None:
        for name in [n for n, s in self._spend.items() if s.expires_at is not None and s.expires_at < now]:
            del self._spend[name]

    async def admit(self, request: AdmissionRequest) -> Admission:
        """Check everything, then reserve everything (no await in between)."""
        precheck(request)
        now = request.now
        self._now = max(self._now, now)
        levels = self._check_spend(request)
        key = self._keys.get(request.key_hash)
        if key is None:
            key = self._keys[request.key_hash] = _KeyState()
        key.last_seen = now
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
            state = self._spend.get(level.name) or self._level(level, request.now)
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
            window = key.windows.get(spec.name)
            if window is None:
                window = key.windows[spec.name] = w.SlidingWindow(spec.seconds)
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
        window = key.windows.get("tpm")
        if window is None:
            window = key.windows["tpm"] = w.SlidingWindow(w.WINDOW_SECONDS["tpm"])
        if window.used(request.now) + request.max_tokens > request.tpm:
            raise window_refusal("tpm", request.tpm, window.retry_after(request.now, request.tpm, request.max_tokens))
        return window

    async def settle(
        self, reservation: Reservation, *, cost_micros: int, tokens: int, now: float, record: bytes | None = None
    ) -> bool:
        """Release the reservation and count the actual cost and tokens; never takes ``record`` (False)."""
        for level in reservation.spend:
            state = self._spend.get(level.name)
            if state is not None:
                state.reserved = max(0, state.reserved - reservation.cost_micros)
                state.spent += cost_micros
        key = self._keys.get(reservation.key_hash)
        if key is None:
            return False
        if reservation.tpm_bucket is not None:
            window = key.windows.get("tpm")
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
        stored: dict[str, w.SlidingWindow] = {} if key is None else key.windows
        counts = {spec.name: _used_at(stored.get(spec.name), now) for spec in windows}
        tokens = _used_at(stored.get("tpm"), now) if tpm else None
        return WindowUsage(counts=counts, tokens_per_minute=tokens, in_flight=0 if key is None else key.in_flight)

    async def spent(self, level: SpendLevel) -> int:
        """Settled spend of a counter."""
        state = self._spend.get(level.name)
        return level.base_micros if state is None else state.spent

    async def maintain(self) -> None:
        """Drop counters whose period is over and windows of keys idle for more than a week (admission clock)."""
        now = self._now
        self._prune(now)
        idle = [
            key
            for key, state in self._keys.items()
            if not state.in_flight and now - state.last_seen > w.WINDOW_SECONDS["per_7d"]
        ]
        for key in idle:
            del self._keys[key]

    async def mark(self, marks: tuple[tuple[str, int], ...]) -> None:
        """Nothing to record: in one process the services invalidate the cache itself, synchronously."""

    async def check_current(self, marks: tuple[tuple[str, int], ...]) -> None:
        """Always current: see ``mark``."""

    async def close(self) -> None:
        """Nothing to release."""


def _used_at(window: w.SlidingWindow | None, now: float) -> int:
    return 0 if window is None else window.used_at(now)
