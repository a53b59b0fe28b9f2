"""Usage records for tests that write them directly (the journal, the writers, retention)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from keyrelay.limits.periods import spend_period
from keyrelay.usage.records import UsageRecord


def usage_record(
    request_id: str, created_at: datetime, *, key_hash: str, account_id: int, **fields: Any
) -> UsageRecord:
    """A successful chat record of 1 + 1 tokens and 10 micro-dollars; ``fields`` replace any other field."""
    record = UsageRecord(
        request_id=request_id,
        created_at=created_at,
        key_hash=key_hash,
        key_name="test",
        account_id=account_id,
        key_period=None,
        group_id=None,
        group_period=None,
        model="gpt-4o-mini",
        provider="mock",
        streamed=False,
        prompt_tokens=1,
        completion_tokens=1,
        cost_micros=10,
        usage_estimated=False,
        status=200,
        error_type=None,
        latency_ms=1,
        ttft_ms=None,
        client_ip=None,
    )
    return replace(record, **fields) if fields else record


def daily_record(request_id: str, at: datetime, owner: tuple[str, int, int | None], cost_micros: int) -> UsageRecord:
    """A record of ``owner`` = (key hash, account id, group id or None) admitted at ``at``, charged to the key's
    and, with a group, the group's daily period."""
    key_hash, account_id, group_id = owner
    return usage_record(
        request_id,
        at,
        key_hash=key_hash,
        account_id=account_id,
        key_period=spend_period("daily", at),
        group_id=group_id,
        group_period=spend_period("daily", at) if group_id is not None else None,
        cost_micros=cost_micros,
    )
