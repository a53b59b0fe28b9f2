"""Admission: turn a principal's effective policy into one AdmissionRequest for the limits backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from keyrelay.cache.keycache import Principal
from keyrelay.limits.backend import AdmissionRequest, SpendLevel
from keyrelay.limits.periods import counter_name, period_end, period_start
from keyrelay.store.records import GroupRecord, KeyRecord


class Pending:
    """What the usage writer has charged but not yet written, per spend counter.

    ``spend(scope, ident, counter)`` names a counter as a ``SpendLevel`` does ("key", key hash, "daily:2026-11-23");
    a record's cost is pending on the counters of the periods it was admitted in, and on the lifetime ones.
    """

    def __init__(self, spend: Callable[[str, str, str], int]) -> None:
        self.spend = spend

    def key(self, key_hash: str) -> int:
        """Lifetime cost pending for a key."""
        return self.spend("key", key_hash, "life")


# (reset, UTC day number) → (counter name, period end as epoch seconds). Periods only change at
# midnight, so the calendar arithmetic runs once a day per reset kind instead of per request.
_PERIODS: dict[tuple[str | None, int], tuple[str, float | None]] = {}


def _counter(reset: str | None, now: datetime) -> tuple[str, float | None]:
    if reset is None:
        return "life", None
    timestamp = now.timestamp()
    slot = (reset, int(timestamp // 86_400))
    cached = _PERIODS.get(slot)
    if cached is None:
        start, end = period_start(reset, now), period_end(reset, now)
        assert start is not None and end is not None
        if len(_PERIODS) > 64:
            _PERIODS.clear()
        cached = _PERIODS[slot] = (counter_name(reset, start), end.timestamp())
    name, end_ts = cached
    return name, None if end_ts is None else end_ts - timestamp


def _stored(record: GroupRecord | KeyRecord, reset: str | None, counter: str) -> int:
    """What the cached record shows as spent on ``counter`` (``_counter``'s name for ``reset`` now).

    As ``periods.stored_usage``, without working out the period again: lifetime usage for a cap that never
    resets, else the stored spend of the period (0 when the store has none for it).
    """
    return record.usage_micros if reset is None else record.period_usage.get(counter, 0)


def spend_levels(principal: Principal, now: datetime, pending: Pending) -> tuple[SpendLevel, ...]:
    """The spend counters a request of this principal must fit in: account, group, key (in check order)."""
    levels: list[SpendLevel] = []
    account, group, key, policy = principal.account, principal.group, principal.key, principal.policy
    if account.balance_micros is not None:
        levels.append(
            SpendLevel(
                scope="account",
                ident=str(account.id),
                counter="life",
                cap_micros=account.balance_micros,
                base_micros=account.spent_micros + pending.spend("account", str(account.id), "life"),
                resets_in_s=None,
            )
        )
    # A level's base is its period's spend only: the store's figure for that period plus what is pending
    # for it. A late record of an earlier period is pending on that period's counter, not on this one.
    if group is not None and group.quota_micros:
        counter, resets = _counter(group.quota_reset, now)
        ident = str(group.id)
        base = _stored(group, group.quota_reset, counter) + pending.spend("group", ident, counter)
        levels.append(SpendLevel("group", ident, counter, group.quota_micros, base, resets))
    if policy.limit_micros is not None:
        counter, resets = _counter(policy.limit_reset, now)
        base = _stored(key, policy.limit_reset, counter) + pending.spend("key", key.hash, counter)
        levels.append(SpendLevel("key", key.hash, counter, policy.limit_micros, base, resets))
    return tuple(levels)


def admission_request(
    principal: Principal,
    *,
    request_id: str,
    now: datetime,
    cost_micros: int,
    max_tokens: int,
    pending: Pending,
    check: bool = True,
) -> AdmissionRequest:
    """Everything the limits backend checks for one request, in one object.

    ``check``: include the principal's state marks, for the backend to compare (``LimitsBackend.mark``).
    """
    policy = principal.policy
    return AdmissionRequest(
        key_hash=principal.key.hash,
        request_id=request_id,
        now=now.timestamp(),
        cost_micros=cost_micros,
        spend=spend_levels(principal, now, pending),
        windows=policy.windows,
        tpm=policy.tpm,
        max_tokens=max_tokens,
        max_concurrent=policy.max_concurrent,
        marks=principal.marks if check else (),
    )
