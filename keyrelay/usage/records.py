"""The usage record: one request's accounting line, as the store, the journal and the writer know it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyrelay.limits.periods import SpendPeriod


@dataclass(slots=True)
class UsageRecord:
    """One request's accounting line.

    ``created_at`` is the admission time, and ``key_period`` / ``group_period`` are the spend periods the
    request was admitted in (None for a key or group whose spend never resets): the ones its reservation
    was held against, and the only ones its cost is added to.
    """

    request_id: str
    created_at: datetime
    key_hash: str
    key_name: str
    account_id: int
    key_period: SpendPeriod | None
    group_id: int | None
    group_period: SpendPeriod | None
    model: str | None
    provider: str | None
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    usage_estimated: bool
    status: int
    error_type: str | None
    latency_ms: int | None
    ttft_ms: int | None
    client_ip: str | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    protocol: str = "openai"
    upstream_kind: str | None = None
    attempts: str | None = None  # JSON list of the upstream attempts, when one failed (None: one that succeeded)

    def row(self) -> dict[str, Any]:
        """The usage_records row."""
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "key_hash": self.key_hash,
            "key_name": self.key_name,
            "account_id": self.account_id,
            "model": self.model,
            "provider": self.provider,
            "streamed": self.streamed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_micros": self.cost_micros,
            "usage_estimated": self.usage_estimated,
            "status": self.status,
            "error_type": self.error_type,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "client_ip": self.client_ip,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "protocol": self.protocol,
            "upstream_kind": self.upstream_kind,
            "attempts": self.attempts,
        }
