"""AuditRepository: appends entries to the audit log and reads them back newest first; never edits one.

Stores values as given (``services/audit.py`` decides what an entry holds). ``AuditHook`` is how the other
repositories write an entry inside the transaction of the change it describes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyrelay.store.rows import to_record
from keyrelay.store.schema import audit_log

__all__ = ["AuditEntry", "AuditHook", "AuditRepository"]

R = TypeVar("R")
# Called by a repository inside the transaction of a write, once the row is written: (connection, the row as
# it was, the row as it is); None for the row before a create or after a delete. An exception rolls the write back.
AuditHook = Callable[[AsyncConnection, R | None, R | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log as stored."""

    id: int
    created_at: datetime
    actor_type: str
    actor: str
    actor_account_id: int | None
    ip: str | None
    action: str
    target_type: str
    target_id: str
    target_account_id: int | None
    changes: Mapping[str, Any] = field(hash=False)


class AuditRepository:
    """Storage of the audit log: insert and read, nothing else."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(self, *, values: dict[str, Any], conn: AsyncConnection | None = None) -> None:
        """Insert one entry: on ``conn`` (in the caller's transaction) when given, else in a transaction of its own."""
        if conn is not None:
            await conn.execute(audit_log.insert().values(**values))
            return
        async with self._engine.begin() as own:
            await own.execute(audit_log.insert().values(**values))

    async def page(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        target_account_id: int | None = None,
        actor: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Up to ``limit`` entries, newest (highest id) first, below ``before_id`` when given.

        Every filter given must hold: ``action`` is exact (``key.rotate``), ``since`` is inclusive,
        ``until`` exclusive.
        """
        c = audit_log.c
        stmt = select(audit_log)
        if before_id is not None:
            stmt = stmt.where(c.id < before_id)
        if target_account_id is not None:
            stmt = stmt.where(c.target_account_id == target_account_id)
        if actor is not None:
            stmt = stmt.where(c.actor == actor)
        if target_type is not None:
            stmt = stmt.where(c.target_type == target_type)
        if target_id is not None:
            stmt = stmt.where(c.target_id == target_id)
        if action is not None:
            stmt = stmt.where(c.action == action)
        if since is not None:
            stmt = stmt.where(c.created_at >= since)
        if until is not None:
            stmt = stmt.where(c.created_at < until)
        stmt = stmt.order_by(c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [to_record(AuditEntry, r) for r in rows]
