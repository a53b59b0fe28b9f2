"""UsageRepository: indexed aggregates over usage records (totals, grouped by day, model or key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from keyrelay.store.schema import usage_records

GroupBy = Literal["day", "model", "key", "protocol", "provider"]


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
        columns = [
            func.count().label("requests"),
            func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0).label("errors"),
            func.coalesce(func.sum(c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(c.cost_micros), 0).label("cost_micros"),
            func.coalesce(func.sum(c.cache_read_tokens), 0).label("cache_read_tokens"),
            func.coalesce(func.sum(c.cache_write_tokens), 0).label("cache_write_tokens"),
            func.coalesce(func.sum(c.reasoning_tokens), 0).label("reasoning_tokens"),
            func.max(c.key_name).label("key_name"),
        ]
        stmt = select(*(([group_col.label("grp")] if group_col is not None else []) + columns))
        if account_id is not None:
            stmt = stmt.where(c.account_id == account_id)
        if key_hash is not None:
            stmt = stmt.where(c.key_hash == key_hash)
        if model is not None:
            stmt = stmt.where(c.model == model)
        if start is not None:
            stmt = stmt.where(c.created_at >= start)
        if end is not None:
            stmt = stmt.where(c.created_at < end)
        if group_col is not None:
            stmt = stmt.group_by(group_col).order_by(group_col)
        async with self._engine.connect() as conn:
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
