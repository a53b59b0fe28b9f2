"""Usage records: an in-memory queue flushed to the store in small batches.

Each flush, in one transaction, inserts the records, adds their cost to each key's and group's
lifetime and period usage and to each account's ``spent_micros``, and writes coalesced ``last_used_*``.
``close()`` flushes whatever is left, so a clean stop (SIGTERM) loses nothing. While records wait,
``pending_for_key`` / ``pending_for_account`` tell the limits ledger what the store does not show yet.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, case, literal
from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.limits.periods import period_start
from keyrelay.store.schema import accounts, groups, keys, usage_records

log = logging.getLogger("keyrelay.usage")


@dataclass(slots=True)
class UsageRecord:
    """One request's accounting line."""

    request_id: str
    created_at: datetime
    key_hash: str
    key_name: str
    account_id: int
    limit_reset: str | None
    group_id: int | None
    group_quota_reset: str | None
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
        }


_COLUMNS = (
    "request_id",
    "created_at",
    "key_hash",
    "key_name",
    "account_id",
    "model",
    "provider",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
    "usage_estimated",
    "status",
    "error_type",
    "latency_ms",
    "ttft_ms",
    "client_ip",
)


def _insert_sql(paramstyle: str) -> str | None:
    if paramstyle == "qmark":
        marks = ", ".join("?" for _ in _COLUMNS)
    elif paramstyle == "numeric_dollar":
        marks = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    else:
        return None
    return f"INSERT INTO usage_records ({', '.join(_COLUMNS)}) VALUES ({marks})"


def _charge(table: Table, period: datetime | None, cost: int) -> dict[str, Any]:
    """Column updates adding ``cost`` to lifetime usage and to the usage of ``period`` (restarting it if new)."""
    values: dict[str, Any] = {"usage_micros": table.c.usage_micros + cost}
    if period is not None:
        values["period_usage_micros"] = case(
            (table.c.period_start == period, table.c.period_usage_micros + cost), else_=literal(cost)
        )
        values["period_start"] = period
    return values


class UsageWriter:
    """Batches usage records and charges keys and accounts."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500) -> None:
        self._engine = engine
        self._queue: list[UsageRecord] = []
        self._max_batch = max_batch
        self._lock = asyncio.Lock()
        self._pending_keys: dict[str, int] = {}
        self._pending_accounts: dict[int, int] = {}
        self._pending_groups: dict[int, int] = {}
        self._last_used: dict[str, tuple[datetime, str | None]] = {}
        # Records go in with one precompiled driver-level executemany: SQLAlchemy's per-row bind
        # processing cost ~11 µs a record on the event loop (measured), a 20 ms stall per 2000 records.
        self._insert_sql = _insert_sql(engine.dialect.paramstyle)
        self._sqlite = engine.dialect.name == "sqlite"

    def enqueue(self, record: UsageRecord) -> None:
        """Queue a record (no I/O); its cost counts as pending until flushed."""
        self._queue.append(record)
        if record.cost_micros:
            self._pending_keys[record.key_hash] = self._pending_keys.get(record.key_hash, 0) + record.cost_micros
            self._pending_accounts[record.account_id] = (
                self._pending_accounts.get(record.account_id, 0) + record.cost_micros
            )
            if record.group_id is not None:
                self._pending_groups[record.group_id] = (
                    self._pending_groups.get(record.group_id, 0) + record.cost_micros
                )

    def touch(self, key_hash: str, when: datetime, ip: str | None) -> None:
        """Remember the latest use of a key; written at the next flush."""
        self._last_used[key_hash] = (when, ip)

    def _as_tuple(self, record: UsageRecord) -> tuple[object, ...]:
        values = [getattr(record, name) for name in _COLUMNS]
        if self._sqlite:
            # SQLAlchemy's SQLite DATETIME storage format (UTC, no offset), so reads round-trip.
            values[1] = record.created_at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return tuple(values)

    def pending_for_key(self, key_hash: str) -> int:
        """Cost queued for a key but not yet in the store."""
        return self._pending_keys.get(key_hash, 0)

    def pending_for_account(self, account_id: int) -> int:
        """Cost queued for an account but not yet in the store."""
        return self._pending_accounts.get(account_id, 0)

    def pending_for_group(self, group_id: int) -> int:
        """Cost queued for a group but not yet in the store."""
        return self._pending_groups.get(group_id, 0)

    @property
    def queued(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    async def flush(self) -> int:
        """Write everything queued, batch by batch; on failure the rest stays queued for the next try.

        Batches are small and the loop yields between them, so a burst of records never stalls
        the event loop for long (each record costs some microseconds of Python before the driver).
        """
        written = 0
        while self._queue or self._last_used:
            written += await self._flush_batch()
            await asyncio.sleep(0)
        return written

    async def _flush_batch(self) -> int:
        async with self._lock:
            if not self._queue and not self._last_used:
                return 0
            batch = self._queue[: self._max_batch]
            touched = self._last_used
            self._last_used = {}
            try:
                await self._write(batch, touched)
            except Exception:
                for key_hash, value in touched.items():
                    self._last_used.setdefault(key_hash, value)
                raise
            del self._queue[: len(batch)]
            for record in batch:
                if record.cost_micros:
                    self._release(record)
            return len(batch)

    def _release(self, record: UsageRecord) -> None:
        left = self._pending_keys.get(record.key_hash, 0) - record.cost_micros
        if left > 0:
            self._pending_keys[record.key_hash] = left
        else:
            self._pending_keys.pop(record.key_hash, None)
        left = self._pending_accounts.get(record.account_id, 0) - record.cost_micros
        if left > 0:
            self._pending_accounts[record.account_id] = left
        else:
            self._pending_accounts.pop(record.account_id, None)
        if record.group_id is not None:
            left = self._pending_groups.get(record.group_id, 0) - record.cost_micros
            if left > 0:
                self._pending_groups[record.group_id] = left
            else:
                self._pending_groups.pop(record.group_id, None)

    async def _write(self, batch: list[UsageRecord], touched: dict[str, tuple[datetime, str | None]]) -> None:
        per_key: dict[tuple[str, datetime | None], int] = {}
        per_group: dict[tuple[int, datetime | None], int] = {}
        per_account: dict[int, int] = {}
        for record in batch:
            cost = record.cost_micros
            if not cost:
                continue
            slot = (record.key_hash, period_start(record.limit_reset, record.created_at))
            per_key[slot] = per_key.get(slot, 0) + cost
            per_account[record.account_id] = per_account.get(record.account_id, 0) + cost
            if record.group_id is not None:
                gslot = (record.group_id, period_start(record.group_quota_reset, record.created_at))
                per_group[gslot] = per_group.get(gslot, 0) + cost
        async with self._engine.begin() as conn:
            if batch:
                if self._insert_sql is not None:
                    await conn.exec_driver_sql(self._insert_sql, [self._as_tuple(r) for r in batch])
                else:
                    await conn.execute(usage_records.insert(), [r.row() for r in batch])
            for (key_hash, period), cost in per_key.items():
                await conn.execute(keys.update().where(keys.c.hash == key_hash).values(**_charge(keys, period, cost)))
            for (group_id, period), cost in per_group.items():
                await conn.execute(
                    groups.update().where(groups.c.id == group_id).values(**_charge(groups, period, cost))
                )
            for account_id, cost in per_account.items():
                # spent_micros only: the credit (balance_micros) is the administrator's, never rewritten here.
                await conn.execute(
                    accounts.update()
                    .where(accounts.c.id == account_id)
                    .values(spent_micros=accounts.c.spent_micros + cost)
                )
            for key_hash, (used_at, ip) in touched.items():
                await conn.execute(
                    keys.update().where(keys.c.hash == key_hash).values(last_used_at=used_at, last_used_ip=ip)
                )

    async def close(self) -> None:
        """Flush everything; called on shutdown (SIGTERM included)."""
        try:
            await self.flush()
        except Exception:
            log.exception("usage flush failed during shutdown; %d records not written", len(self._queue))
