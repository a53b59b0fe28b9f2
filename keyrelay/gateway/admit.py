"""Admission: turn a principal's effective policy into one AdmissionRequest for the limits backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from keyrelay.cache.keycache import Principal
from keyrelay.limits.backend import AdmissionRequest, RequestWindow, SpendLevel
from keyrelay.limits.periods import period_end, period_start, stored_usage
from keyrelay.limits.windows import WINDOW_SECONDS

_REQUEST_WINDOWS = ("rpm", "per_5h", "per_1d", "per_7d")


class Pending:
    """What the usage writer has charged but not yet written, per key, account and group."""

    def __init__(
        self,
        *,
        key: Callable[[str], int],
        account: Callable[[int], int],
        group: Callable[[int], int],
    ) -> None:
        self.key = key
        self.account = account
        self.group = group


def _counter(reset: str | None, now: datetime) -> tuple[str, float | None]:
    start = period_start(reset, now)
    if start is None:
        return "life", None
    end = period_end(reset, now)
    assert end is not None
    return f"{reset}:{start.date().isoformat()}", (end - now).total_seconds()


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
                base_micros=account.spent_micros + pending.account(account.id),
                resets_in_s=None,
            )
        )
    if group is not None and group.quota_micros:
        counter, resets = _counter(group.quota_reset, now)
        stored = stored_usage(group, group.quota_reset, now)
        levels.append(
            SpendLevel("group", str(group.id), counter, group.quota_micros, stored + pending.group(group.id), resets)
        )
    if policy.limit_micros is not None:
        counter, resets = _counter(policy.limit_reset, now)
        stored = stored_usage(key, policy.limit_reset, now)
        levels.append(SpendLevel("key", key.hash, counter, policy.limit_micros, stored + pending.key(key.hash), resets))
    return tuple(levels)


def admission_request(
    principal: Principal,
    *,
    request_id: str,
    now: datetime,
    cost_micros: int,
    max_tokens: int,
    pending: Pending,
) -> AdmissionRequest:
    """Everything the limits backend checks for one request, in one object."""
    policy = principal.policy
    windows = tuple(
        RequestWindow(name, WINDOW_SECONDS[name], limit)
        for name in _REQUEST_WINDOWS
        if (limit := getattr(policy, name))
    )
    return AdmissionRequest(
        key_hash=principal.key.hash,
        request_id=request_id,
        now=now.timestamp(),
        cost_micros=cost_micros,
        spend=spend_levels(principal, now, pending),
        windows=windows,
        tpm=policy.tpm,
        max_tokens=max_tokens,
        max_concurrent=policy.max_concurrent,
    )
