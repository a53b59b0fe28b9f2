"""AccountRepository and GroupRepository: storage of accounts and groups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.clock import ensure_utc
from keyrelay.store.records import AccountRecord, Change, GroupRecord
from keyrelay.store.rows import to_record
from keyrelay.store.schema import accounts, groups, keys


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
        stmt = select(accounts).where(func.lower(accounts.c.email) == email.lower())
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return to_record(AccountRecord, row) if row else None

    async def list_all(self, *, limit: int, offset: int) -> list[AccountRecord]:
        """Accounts in id order."""
        stmt = select(accounts).order_by(accounts.c.id).offset(offset).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [to_record(AccountRecord, r) for r in rows]

    async def insert(self, *, values: dict[str, Any]) -> AccountRecord:
        """Insert an account and return it."""
        async with self._engine.begin() as conn:
            result = await conn.execute(accounts.insert().values(**values).returning(accounts.c.id))
            new_id = result.scalar_one()
            row = (await conn.execute(select(accounts).where(accounts.c.id == new_id))).mappings().one()
        return to_record(AccountRecord, row)

    async def update(self, *, account_id: int, values: dict[str, Any]) -> AccountRecord | None:
        """Update an account and bump its version; None if it does not exist."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(**values, version=accounts.c.version + 1)
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).mappings().one()
        return to_record(AccountRecord, row)

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
        return to_record(GroupRecord, row) if row else None

    async def get_by_name(self, *, name: str) -> GroupRecord | None:
        """One group by name."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(groups).where(groups.c.name == name))).mappings().first()
        return to_record(GroupRecord, row) if row else None

    async def list_all(self) -> list[GroupRecord]:
        """All groups by name."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(groups).order_by(groups.c.name))).mappings().all()
        return [to_record(GroupRecord, r) for r in rows]

    async def insert(self, *, values: dict[str, Any]) -> GroupRecord:
        """Insert a group and return it."""
        async with self._engine.begin() as conn:
            result = await conn.execute(groups.insert().values(**values).returning(groups.c.id))
            new_id = result.scalar_one()
            row = (await conn.execute(select(groups).where(groups.c.id == new_id))).mappings().one()
        return to_record(GroupRecord, row)

    async def update(self, *, group_id: int, values: dict[str, Any]) -> GroupRecord | None:
        """Update a group and bump its version; None if it does not exist."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                groups.update().where(groups.c.id == group_id).values(**values, version=groups.c.version + 1)
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(select(groups).where(groups.c.id == group_id))).mappings().one()
        return to_record(GroupRecord, row)

    async def delete(self, *, group_id: int) -> bool:
        """Delete a group that no account uses; False when it does not exist."""
        async with self._engine.begin() as conn:
            result = await conn.execute(groups.delete().where(groups.c.id == group_id))
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
