"""In-process limits: request windows and spend reservations for a single gateway process.

Request windows are sliding windows over 60 sub-buckets each (rpm: 1 s buckets, 5 h: 5 min, 1 d:
24 min, 7 d: 2.8 h), so a 7-day window costs 60 integers per key, not one entry per request.
Spend is reserved before the upstream call (the request's maximum cost) and settled afterwards
to the actual cost, so concurrent requests cannot overshoot a limit. The ledgers start from the
stored usage plus whatever the usage writer has not yet flushed.

A key's ledger then counts every settled cost itself and never goes back to the store: the cache
may hold several snapshots of one key (the two secrets of a rotated key, entries reloaded after an
update) read before or after the usage writer charged the store, and starting over from one of them
would forget or double charges. An account's ledger starts over only from a snapshot whose
``updated_at`` is later (a top-up or a new balance; the usage writer never touches ``updated_at``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from keyrelay.cache.keycache import Principal
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.limits.periods import period_end, period_start, window_usage_micros

BUCKETS = 60
WINDOWS: tuple[tuple[str, int], ...] = (("rpm", 60), ("per_5h", 5 * 3600), ("per_1d", 86_400), ("per_7d", 7 * 86_400))


@dataclass(slots=True)
class _Window:
    width: float
    buckets: dict[int, int] = field(default_factory=dict)

    def count(self, now_s: float) -> int:
        current = int(now_s // self.width)
        stale = [i for i in self.buckets if i <= current - BUCKETS]
        for i in stale:
            del self.buckets[i]
        return sum(self.buckets.values())

    def add(self, now_s: float) -> None:
        current = int(now_s // self.width)
        self.buckets[current] = self.buckets.get(current, 0) + 1

    def frees_in(self, now_s: float) -> float:
        if not self.buckets:
            return 0.0
        oldest = min(self.buckets)
        return max(0.0, (oldest + BUCKETS) * self.width - now_s)


@dataclass(slots=True)
class _Ledger:
    version: datetime  # updated_at of the snapshot the ledger started from
    period: datetime | None
    spent: int
    reserved: int = 0
    lifetime: int = 0  # keys: all-time usage
    balance: int | None = None  # accounts: the balance of the snapshot (None = unlimited)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one in-flight request, to be settled or released exactly once."""

    key_hash: str
    account_id: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class WindowStatus:
    """The tightest request window after admission, for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_s: float


PendingLookup = Callable[[str], int]


class MemoryLimits:
    """Single-process limits backend."""

    def __init__(self, *, pending_for_key: PendingLookup, pending_for_account: Callable[[int], int]) -> None:
        self._windows: dict[str, dict[str, _Window]] = {}
        self._keys: dict[str, _Ledger] = {}
        self._accounts: dict[int, _Ledger] = {}
        self._pending_for_key = pending_for_key
        self._pending_for_account = pending_for_account

    def _key_ledger(self, principal: Principal, now: datetime) -> _Ledger:
        key = principal.key
        group = principal.group
        # The group's defaults are part of the key's policy (e.g. its limit_reset).
        version = max(key.updated_at, group.updated_at) if group is not None else key.updated_at
        period = period_start(principal.policy.limit_reset, now)
        ledger = self._keys.get(key.hash)
        if ledger is None:
            stored = window_usage_micros(
                limit_reset=principal.policy.limit_reset,
                usage_micros=key.usage_micros,
                period_usage_micros=key.period_usage_micros,
                period=key.period_start,
                now=now,
            )
            pending = self._pending_for_key(key.hash)
            ledger = _Ledger(
                version=version, period=period, spent=stored + pending, lifetime=key.usage_micros + pending
            )
            self._keys[key.hash] = ledger
        elif version >= ledger.version:  # an older snapshot's policy must not undo a newer one's
            ledger.version = version
            if period != ledger.period:
                # A new calendar period, or a new kind of window (which the key service starts empty);
                # a cap that never resets counts everything.
                ledger.period = period
                ledger.spent = ledger.lifetime if period is None else 0
        return ledger

    def _account_ledger(self, principal: Principal) -> _Ledger:
        account = principal.account
        ledger = self._accounts.get(account.id)
        if ledger is None or account.updated_at > ledger.version:
            ledger = _Ledger(
                version=account.updated_at,
                period=None,
                spent=self._pending_for_account(account.id),
                reserved=ledger.reserved if ledger is not None else 0,
                balance=account.balance_micros,
            )
            self._accounts[account.id] = ledger
        return ledger

    def admit(
        self, principal: Principal, max_cost_micros: int, now: datetime
    ) -> tuple[Reservation, WindowStatus | None]:
        """Check every window and spend level, then count the request and hold its maximum cost.

        Raises:
            GatewayError: RATE_LIMIT_EXCEEDED, API_KEY_QUOTA_EXHAUSTED or INSUFFICIENT_BALANCE; nothing is
                counted or held when a check fails.
        """
        policy = principal.policy
        account_ledger = self._account_ledger(principal)
        balance = account_ledger.balance
        if balance is not None and account_ledger.spent + account_ledger.reserved + max_cost_micros > balance:
            left = max(0, balance - account_ledger.spent - account_ledger.reserved)
            raise GatewayError(
                ErrorType.INSUFFICIENT_BALANCE,
                f"The account balance is exhausted: ${left / 1e6:.6f} left, this request may cost up to "
                f"${max_cost_micros / 1e6:.6f}.",
                limit_source="account",
            )
        key_ledger = self._key_ledger(principal, now)
        if (
            policy.limit_micros is not None
            and key_ledger.spent + key_ledger.reserved + max_cost_micros > policy.limit_micros
        ):
            end = period_end(policy.limit_reset, now)
            left = max(0, policy.limit_micros - key_ledger.spent - key_ledger.reserved)
            raise GatewayError(
                ErrorType.API_KEY_QUOTA_EXHAUSTED,
                f"The key's spend limit is used up: ${left / 1e6:.6f} left, this request may cost up to "
                f"${max_cost_micros / 1e6:.6f} (lower max_tokens to fit).",
                limit_source="key",
                retry_after=(end - now).total_seconds() if end else None,
            )
        now_s = now.timestamp()
        windows = self._windows.setdefault(principal.key.hash, {})
        tightest: WindowStatus | None = None
        checks: list[_Window] = []
        for name, seconds in WINDOWS:
            limit = getattr(policy, name)
            if not limit:
                continue
            window = windows.get(name)
            if window is None:
                window = windows[name] = _Window(width=seconds / BUCKETS)
            used = window.count(now_s)
            if used >= limit:
                raise GatewayError(
                    ErrorType.RATE_LIMIT_EXCEEDED,
                    f"Rate limit {name}={limit} reached for this key.",
                    retry_after=math.ceil(window.frees_in(now_s)) or 1,
                )
            status = WindowStatus(limit=limit, remaining=limit - used - 1, reset_s=window.frees_in(now_s) or seconds)
            if tightest is None or status.remaining < tightest.remaining:
                tightest = status
            checks.append(window)
        for window in checks:
            window.add(now_s)
        key_ledger.reserved += max_cost_micros
        account_ledger.reserved += max_cost_micros
        return Reservation(principal.key.hash, principal.account.id, max_cost_micros), tightest

    def spent_micros(self, principal: Principal, now: datetime) -> int:
        """Settled spend of the key in its current limit window (what ``limit_remaining`` is based on)."""
        return self._key_ledger(principal, now).spent

    def usage_micros(self, principal: Principal, now: datetime) -> int:
        """All-time usage of the key: stored, not yet flushed, and settled since (what ``usage`` shows)."""
        return self._key_ledger(principal, now).lifetime

    def settle(self, reservation: Reservation, actual_micros: int) -> None:
        """Replace the held amount by the actual cost (0 releases it entirely)."""
        for ledger in (self._keys.get(reservation.key_hash), self._accounts.get(reservation.account_id)):
            if ledger is not None:
                ledger.reserved = max(0, ledger.reserved - reservation.amount_micros)
                ledger.spent += actual_micros
                ledger.lifetime += actual_micros
