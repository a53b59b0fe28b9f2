"""AccountRepository and GroupRepository: storage of accounts and groups."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyrelay.clock import ensure_utc
from keyrelay.store.audit import AuditHook
from keyrelay.store.records import AccountRecord, Change, GroupRecord
from keyrelay.store.rows import NO_PERIOD_USAGE, to_record
from keyrelay.store.schema import accounts, groups, keys, spend_periods
from keyrelay.store.spend import latest_periods
from keyrelay.store.text_match import contains_folded, equals_folded


async def _group_records(conn: AsyncConnection, rows: Sequence[RowMapping]) -> list[GroupRecord]:
    """Group records with their latest period spend from the ledger (one more query for all of them)."""
    periods = await latest_periods(conn, scope="group", idents=[str(r["id"]) for r in rows])
    return [to_record(GroupRecord, r, period_usage=periods.get(str(r["id"])) or NO_PERIOD_USAGE) for r in rows]


async def _locked(conn: AsyncConnection, stmt: Select[Any]) -> RowMapping | None:
    """The row of ``stmt`` read for update (locked until the transaction ends on PostgreSQL; SQLite has one writer)."""
    row: RowMapping | None = (await conn.execute(stmt.with_for_update())).mappings().first()
    return row


class AccountRepository:
    """Storage of accounts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, *, account_id: int) -> AccountRecord | None:
        """One account by id."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).mappings().first()
        return to_record(AccountRecord, row) if row else None

    async def get_by_email(self, *, email: str) -> AccountRecord | None:
        """One account by email (case-insensitive)."""
        stmt = select(accounts).where(equals_folded(accounts.c.email, email))
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return to_record(AccountRecord, row) if row else None

    async def list_all(self, *, limit: int, offset: int, email_contains: str | None = None) -> list[AccountRecord]:
        """Accounts in id order; ``email_contains`` keeps emails holding that text (case-insensitive)."""
        stmt = select(accounts)
        if email_contains:
            stmt = stmt.where(contains_folded(accounts.c.email, email_contains))
        stmt = stmt.order_by(accounts.c.id).offset(offset).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [to_record(AccountRecord, r) for r in rows]

    async def insert(self, *, values: dict[str, Any], audit: AuditHook[AccountRecord] | None = None) -> AccountRecord:
        """Insert an account and return it; ``audit`` is called in the same transaction."""
        async with self._engine.begin() as conn:
            result = await conn.execute(accounts.insert().values(**values).returning(accounts.c.id))
            new_id = result.scalar_one()
            row = (await conn.execute(select(accounts).where(accounts.c.id == new_id))).mappings().one()
            record = to_record(AccountRecord, row)
            if audit is not None:
                await audit(conn, None, record)
        return record

    async def update(
        self, *, account_id: int, values: dict[str, Any], audit: AuditHook[AccountRecord] | None = None
    ) -> AccountRecord | None:
        """Update an account and bump its version; None if it does not exist.

        With ``audit``, the row is read (locked, on PostgreSQL) before the update, and ``audit`` is called
        with it and the updated row in the same transaction.
        """
        async with self._engine.begin() as conn:
            before = None
            if audit is not None:
                old = await _locked(conn, select(accounts).where(accounts.c.id == account_id))
                if old is None:
                    return None
                before = to_record(AccountRecord, old)
            result = await conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(**values, version=accounts.c.version + 1)
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).mappings().one()
            record = to_record(AccountRecord, row)
            if audit is not None:
                await audit(conn, before, record)
        return record

    async def changed_since(self, *, since: datetime) -> list[Change]:
        """Accounts whose row changed at or after ``since``."""
        stmt = select(accounts.c.id, accounts.c.version, accounts.c.updated_at).where(accounts.c.updated_at >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Change(ident=str(r.id), version=r.version, updated_at=ensure_utc(r.updated_at)) for r in rows]

    async def key_hashes(self, *, account_ids: list[int]) -> list[str]:
        """Current and previous secret hashes of every key of these accounts."""
        stmt = select(keys.c.secret_hash, keys.c.prev_secret_hash).where(keys.c.account_id.in_(account_ids))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [h for r in rows for h in (r.secret_hash, r.prev_secret_hash) if h]


class GroupRepository:
    """Storage of groups."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, *, group_id: int) -> GroupRecord | None:
        """One group by id."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(groups).where(groups.c.id == group_id))).mappings().first()
            return (await _group_records(conn, [row]))[0] if row else None

    async def get_by_name(self, *, name: str) -> GroupRecord | None:
        """One group by name."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(groups).where(groups.c.name == name))).mappings().first()
            return (await _group_records(conn, [row]))[0] if row else None

    async def list_all(self) -> list[GroupRecord]:
        """All groups by name."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(groups).order_by(groups.c.name))).mappings().all()
            return await _group_records(conn, rows)

    async def insert(self, *, values: dict[str, Any], audit: AuditHook[GroupRecord] | None = None) -> GroupRecord:
        """Insert a group and return it; ``audit`` is called in the same transaction."""
        async with self._engine.begin() as conn:
            result = await conn.execute(groups.insert().values(**values).returning(groups.c.id))
            new_id = result.scalar_one()
            row = (await conn.execute(select(groups).where(groups.c.id == new_id))).mappings().one()
            record = (await _group_records(conn, [row]))[0]
            if audit is not None:
                await audit(conn, None, record)
            return record

    async def update(
        self, *, group_id: int, values: dict[str, Any], audit: AuditHook[GroupRecord] | None = None
    ) -> GroupRecord | None:
        """Update a group and bump its version; None if it does not exist.

        With ``audit``, the row is read (locked, on PostgreSQL) before the update, and ``audit`` is called
        with it and the updated row in the same transaction.
        """
        async with self._engine.begin() as conn:
            before = None
            if audit is not None:
                old = await _locked(conn, select(groups).where(groups.c.id == group_id))
                if old is None:
                    return None
                before = to_record(GroupRecord, old, period_usage={})
            result = await conn.execute(
                groups.update().where(groups.c.id == group_id).values(**values, version=groups.c.version + 1)
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(select(groups).where(groups.c.id == group_id))).mappings().one()
            record = (await _group_records(conn, [row]))[0]
            if audit is not None:
                await audit(conn, before, record)
            return record

    async def delete(self, *, group_id: int, audit: AuditHook[GroupRecord] | None = None) -> bool:
        """Delete a group that no account uses, with its period spend; False when it does not exist.

        SQLite may give a later group the same id again, which must not inherit this group's spend. With
        ``audit``, it is called with the deleted row in the same transaction.
        """
        async with self._engine.begin() as conn:
            before = None
            if audit is not None:
                old = await _locked(conn, select(groups).where(groups.c.id == group_id))
                if old is None:
                    return False
                before = to_record(GroupRecord, old, period_usage={})
            result = await conn.execute(groups.delete().where(groups.c.id == group_id))
            await conn.execute(
                spend_periods.delete().where(spend_periods.c.scope == "group", spend_periods.c.ident == str(group_id))
            )
            if audit is not None and result.rowcount:
                await audit(conn, before, None)
        return bool(result.rowcount)

    async def member_count(self, *, group_id: int) -> int:
        """How many accounts belong to the group."""
        stmt = select(func.count()).select_from(accounts).where(accounts.c.group_id == group_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def changed_since(self, *, since: datetime) -> list[Change]:
        """Groups whose row changed at or after ``since``."""
        stmt = select(groups.c.id, groups.c.version, groups.c.updated_at).where(groups.c.updated_at >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Change(ident=str(r.id), version=r.version, updated_at=ensure_utc(r.updated_at)) for r in rows]
