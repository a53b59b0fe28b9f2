"""UsageRepository: indexed aggregates over usage records (totals, grouped by day, model or key) and the log.

The request log is read newest first by ``(created_at, id)``, keyset-paginated: each page starts where the
last one ended with one row comparison that the indexes ``(account_id | key_id, created_at, id)`` and
``(created_at, id)`` answer directly, so a deep page costs what the first one does (docs/benchmarks.md). A key
is asked for by its hash, and its records found by its number (``keys.id``, migration 0013), looked up first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Select, case, false, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from keyrelay.store.rows import to_record
from keyrelay.store.schema import keys, usage_records

GroupBy = Literal["day", "model", "key", "protocol", "provider"]
_S = TypeVar("_S", bound=Select[Any])
# Which records by HTTP status: "ok" (below 400), "error" (400 and above), or exactly this status.
StatusFilter = Literal["ok", "error"] | int


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Summed usage of a set of records; ``group`` names the bucket when grouped."""

    group: str | None
    key_name: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One request's usage record as stored (a line of the request log)."""

    id: int
    request_id: str
    created_at: datetime
    key_hash: str
    key_name: str
    account_id: int
    model: str | None
    provider: str | None
    protocol: str
    upstream_kind: str | None
    streamed: bool
    status: int
    error_type: str | None
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_micros: int
    usage_estimated: bool
    latency_ms: int | None
    ttft_ms: int | None
    client_ip: str | None
    attempts: str | None = None  # JSON list of the upstream attempts, when one failed


@dataclass(frozen=True, slots=True)
class UsageSlice:
    """Summed usage of one UTC day, key and model (``model`` is '' for records without one)."""

    day: str
    key_hash: str
    key_name: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


class UsageRepository:
    """Read side of the usage records (the writer lives in ``keyrelay.usage.writer``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _day(self) -> ColumnElement[str]:
        if self._engine.dialect.name == "sqlite":
            return func.date(usage_records.c.created_at)
        # Days are UTC days whatever the session time zone of the PostgreSQL connection.
        return func.to_char(func.timezone("UTC", usage_records.c.created_at), "YYYY-MM-DD")

    async def totals(
        self,
        *,
        account_id: int | None,
        key_hash: str | None,
        model: str | None,
        start: datetime | None,
        end: datetime | None,
        group_by: GroupBy | None,
    ) -> list[UsageTotals]:
        """Totals over the matching records, optionally grouped; groups in ascending order."""
        c = usage_records.c
        group_col: ColumnElement[str] | None = None
        if group_by == "day":
            group_col = self._day()
        elif group_by == "model":
            group_col = func.coalesce(c.model, "")
        elif group_by == "key":
            group_col = c.key_hash
        elif group_by == "protocol":
            group_col = c.protocol
        elif group_by == "provider":
            group_col = func.coalesce(c.provider, "")
        columns: list[ColumnElement[Any]] = [*_SUMS, func.max(c.key_name).label("key_name")]
        stmt = select(*(([group_col.label("grp")] if group_col is not None else []) + columns))
        stmt = _within(stmt, account_id=account_id, start=start, end=end)
        if model is not None:
            stmt = stmt.where(c.model == model)
        if group_col is not None:
            stmt = stmt.group_by(group_col).order_by(group_col)
        async with self._engine.connect() as conn:
            if key_hash is not None:
                stmt = await _of_key(conn, stmt, key_hash)
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            UsageTotals(
                group=str(r["grp"]) if group_col is not None else None,
                key_name=r["key_name"] if group_by == "key" else None,
                requests=int(r["requests"]),
                errors=int(r["errors"]),
                prompt_tokens=int(r["prompt_tokens"]),
                completion_tokens=int(r["completion_tokens"]),
                cost_micros=int(r["cost_micros"]),
                cache_read_tokens=int(r["cache_read_tokens"]),
                cache_write_tokens=int(r["cache_write_tokens"]),
                reasoning_tokens=int(r["reasoning_tokens"]),
            )
            for r in rows
        ]

    async def breakdown(
        self, *, account_id: int | None, start: datetime | None, end: datetime | None
    ) -> list[UsageSlice]:
        """Totals per UTC day, key and model over ``start`` (inclusive) to ``end`` (exclusive), in that order."""
        c = usage_records.c
        day = self._day()
        model = func.coalesce(c.model, "")
        stmt = select(
            day.label("day"),
            c.key_hash,
            func.max(c.key_name).label("key_name"),
            model.label("model"),
            *_SUMS,
        )
        stmt = _within(stmt, account_id=account_id, start=start, end=end)
        stmt = stmt.group_by(day, c.key_hash, model).order_by(day, c.key_hash, model)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            UsageSlice(
                day=str(r["day"]),
                key_hash=r["key_hash"],
                key_name=r["key_name"],
                model=r["model"],
                **{name: int(r[name]) for name in _SUM_NAMES},
            )
            for r in rows
        ]

    async def records(
        self,
        *,
        account_id: int | None,
        limit: int,
        before: tuple[datetime, int] | None = None,
        key_hash: str | None = None,
        model: str | None = None,
        status: StatusFilter | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageEntry]:
        """Up to ``limit`` records, newest first by ``(created_at, id)``, strictly older than ``before``.

        ``account_id`` None reads every account's (admins). Every filter given must hold: ``start`` is
        inclusive, ``end`` exclusive.
        """
        c = usage_records.c
        stmt = _within(select(usage_records), account_id=account_id, start=start, end=end)
        if before is not None:
            # One row comparison, not "a < x OR (a = x AND b < y)": PostgreSQL uses a row comparison as an
            # index bound on (..., created_at, id) and starts the scan right at the cursor.
            stmt = stmt.where(tuple_(c.created_at, c.id) < before)  # typed as the columns: id is a BIGINT
        if model is not None:
            stmt = stmt.where(c.model == model)
        if status == "ok":
            stmt = stmt.where(c.status < 400)
        elif status == "error":
            stmt = stmt.where(c.status >= 400)
        elif status is not None:
            stmt = stmt.where(c.status == status)
        stmt = stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            if key_hash is not None:
                stmt = await _of_key(conn, stmt, key_hash)
            rows = (await conn.execute(stmt)).mappings().all()
        return [to_record(UsageEntry, r) for r in rows]


_SUM_NAMES = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_c = usage_records.c
_SUMS = (
    func.count().label("requests"),
    func.coalesce(func.sum(case((_c.status >= 400, 1), else_=0)), 0).label("errors"),
    func.coalesce(func.sum(_c.prompt_tokens), 0).label("prompt_tokens"),
    func.coalesce(func.sum(_c.completion_tokens), 0).label("completion_tokens"),
    func.coalesce(func.sum(_c.cost_micros), 0).label("cost_micros"),
    func.coalesce(func.sum(_c.cache_read_tokens), 0).label("cache_read_tokens"),
    func.coalesce(func.sum(_c.cache_write_tokens), 0).label("cache_write_tokens"),
    func.coalesce(func.sum(_c.reasoning_tokens), 0).label("reasoning_tokens"),
)


async def _of_key(conn: AsyncConnection, stmt: _S, key_hash: str) -> _S:
    """``stmt`` kept to the records of the key of hash ``key_hash``: by its number, looked up first.

    A number rather than a subquery, so that PostgreSQL plans with the value (and the statistics object on
    ``(account_id, key_id)``). No records for a hash the store holds no key of.
    """
    number = (await conn.execute(select(keys.c.id).where(keys.c.hash == key_hash))).scalar_one_or_none()
    return stmt.where(usage_records.c.key_id == number if number is not None else false())


def _within(stmt: Select[Any], *, account_id: int | None, start: datetime | None, end: datetime | None) -> Select[Any]:
    c = usage_records.c
    if account_id is not None:
        stmt = stmt.where(c.account_id == account_id)
    if start is not None:
        stmt = stmt.where(c.created_at >= start)
    if end is not None:
        stmt = stmt.where(c.created_at < end)
    return stmt
