"""KeyRepository: reads and writes the keys table; stores values as given, returns KeyRecords."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, and_, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyrelay.clock import ensure_utc
from keyrelay.store.audit import AuditHook
from keyrelay.store.records import AccountRecord, Change, GroupRecord, KeyRecord
from keyrelay.store.rows import NO_PERIOD_USAGE, to_record
from keyrelay.store.schema import accounts, groups, key_usage, keys
from keyrelay.store.spend import key_and_group_periods, latest_periods
from keyrelay.store.text_match import contains_folded

# A key's running figures: the key row's (charged before migration 0014, or by a process of an earlier release during
# a rolling upgrade) plus ``key_usage``'s (every flush since), the later of the two last uses. Every read of a key
# selects KEY_COLUMNS from KEYS_WITH_USAGE, so a KeyRecord's ``usage_micros`` is the whole lifetime spend.
KEY_USAGE_MICROS: ColumnElement[int] = keys.c.usage_micros + func.coalesce(key_usage.c.usage_micros, 0)
_LATER_USE = and_(
    key_usage.c.last_used_at.is_not(None),
    or_(keys.c.last_used_at.is_(None), key_usage.c.last_used_at > keys.c.last_used_at),
)
_RUNNING = frozenset({"usage_micros", "last_used_at", "last_used_ip"})
KEY_COLUMNS = (
    *(c for c in keys.c if c.name not in _RUNNING),
    KEY_USAGE_MICROS.label("usage_micros"),
    case((_LATER_USE, key_usage.c.last_used_at), else_=keys.c.last_used_at).label("last_used_at"),
    case((_LATER_USE, key_usage.c.last_used_ip), else_=keys.c.last_used_ip).label("last_used_ip"),
)
KEYS_WITH_USAGE = keys.outerjoin(key_usage, key_usage.c.key_id == keys.c.id)


def _select_keys() -> Select[Any]:
    """Every column of a KeyRecord, running figures included (``KEY_COLUMNS``), from ``KEYS_WITH_USAGE``."""
    return select(*KEY_COLUMNS).select_from(KEYS_WITH_USAGE)


async def _records(conn: AsyncConnection, rows: Sequence[RowMapping]) -> list[KeyRecord]:
    """Key records with their latest period spend from the ledger (one more query for all of them)."""
    periods = await latest_periods(conn, scope="key", idents=[r["hash"] for r in rows])
    return [_record(r, periods.get(r["hash"])) for r in rows]


# A live key by its current secret, or its previous one within its grace, joined with its account and the
# account's group (columns a_* and g_*; g_* NULL without a group): a fixed statement, compiled once.
_SECRET = bindparam("secret", type_=keys.c.secret_hash.type)
_WITH_OWNER = (
    select(*KEY_COLUMNS, *(c.label(f"a_{c.name}") for c in accounts.c), *(c.label(f"g_{c.name}") for c in groups.c))
    .select_from(
        KEYS_WITH_USAGE.join(accounts, accounts.c.id == keys.c.account_id).outerjoin(
            groups, groups.c.id == accounts.c.group_id
        )
    )
    .where(
        keys.c.deleted_at.is_(None),
        or_(
            keys.c.secret_hash == _SECRET,
            and_(
                keys.c.prev_secret_hash == _SECRET,
                keys.c.prev_secret_expires_at > bindparam("now", type_=keys.c.prev_secret_expires_at.type),
            ),
        ),
    )
)


def _record(row: RowMapping, period_usage: Mapping[str, int] | None) -> KeyRecord:
    # A key never rotated has its first secret's hash as its stable hash: one string for both (the key cache
    # holds many records).
    same = row["secret_hash"] == row["hash"]
    extra = {"secret_hash": row["hash"]} if same else {}
    return to_record(KeyRecord, row, period_usage=period_usage or NO_PERIOD_USAGE, **extra)


class KeyRepository:
    """Storage of keys. Soft-deleted rows stay (usage history and cross-process revocation need them)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, *, key_hash: str, include_deleted: bool = False) -> KeyRecord | None:
        """The key whose stable ``hash`` is given; deleted keys only when asked (for usage history)."""
        stmt = _select_keys().where(keys.c.hash == key_hash)
        if not include_deleted:
            stmt = stmt.where(keys.c.deleted_at.is_(None))
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            return (await _records(conn, [row]))[0] if row else None

    async def find_by_secret(self, *, secret_hash: str, now: datetime) -> KeyRecord | None:
        """The live key whose current secret, or previous secret within its grace period, hashes to this."""
        stmt = _select_keys().where(
            keys.c.deleted_at.is_(None),
            or_(
                keys.c.secret_hash == secret_hash,
                and_(keys.c.prev_secret_hash == secret_hash, keys.c.prev_secret_expires_at > now),
            ),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            return (await _records(conn, [row]))[0] if row else None

    async def find_with_owner(
        self, *, secret_hash: str, now: datetime
    ) -> tuple[KeyRecord, AccountRecord, GroupRecord | None] | None:
        """``find_by_secret``, with the key's account and the account's group (None without one), in two queries.

        What the key cache loads on a key's first request: the three rows joined in one read, then the key's and
        the group's latest spend periods in one more (five statements, each a round trip, before). None when no
        live key matches, or its account is gone.
        """
        async with self._engine.connect() as conn:
            row = (await conn.execute(_WITH_OWNER, {"secret": secret_hash, "now": now})).mappings().first()
            if row is None:
                return None
            group_id = row["g_id"]
            key_periods, group_periods = await key_and_group_periods(conn, key_hash=row["hash"], group_id=group_id)
        account = to_record(AccountRecord, {c.name: row[f"a_{c.name}"] for c in accounts.c})
        group = None
        if group_id is not None:
            group_row = {c.name: row[f"g_{c.name}"] for c in groups.c}
            group = to_record(GroupRecord, group_row, period_usage=group_periods or NO_PERIOD_USAGE)
        return _record(row, key_periods), account, group

    async def list_all(
        self,
        *,
        account_id: int | None,
        key_type: str,
        limit: int,
        after: tuple[datetime, str] | None = None,
        offset: int = 0,
        name_contains: str | None = None,
        status: str | None = None,
        now: datetime | None = None,
    ) -> list[KeyRecord]:
        """Live keys, newest first, keyset-paginated by (created_at, hash) and/or offset.

        ``name_contains`` keeps names holding that text (case-insensitive); ``status`` keeps ``active``,
        ``disabled`` or ``expired`` keys, an expiry judged at ``now`` (required with ``status``).
        """
        stmt = _select_keys().where(keys.c.deleted_at.is_(None), keys.c.key_type == key_type)
        if account_id is not None:
            stmt = stmt.where(keys.c.account_id == account_id)
        if name_contains:
            stmt = stmt.where(contains_folded(keys.c.name, name_contains))
        if status is not None:
            assert now is not None, "a status filter needs the time it is judged at"
            expired = and_(keys.c.expires_at.is_not(None), keys.c.expires_at <= now)
            if status == "disabled":
                stmt = stmt.where(keys.c.disabled.is_(True))
            elif status == "expired":
                stmt = stmt.where(keys.c.disabled.is_(False), expired)
            else:
                stmt = stmt.where(keys.c.disabled.is_(False), or_(keys.c.expires_at.is_(None), keys.c.expires_at > now))
        if after is not None:
            created, key_hash = after
            stmt = stmt.where(
                or_(keys.c.created_at < created, and_(keys.c.created_at == created, keys.c.hash < key_hash))
            )
        stmt = stmt.order_by(keys.c.created_at.desc(), keys.c.hash.desc()).offset(offset).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
            return await _records(conn, rows)

    async def count(self, *, account_id: int | None, key_type: str) -> int:
        """Number of live keys of a type (optionally of one account)."""
        stmt = select(func.count()).select_from(keys).where(keys.c.deleted_at.is_(None), keys.c.key_type == key_type)
        if account_id is not None:
            stmt = stmt.where(keys.c.account_id == account_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def insert(self, *, values: dict[str, Any], audit: AuditHook[KeyRecord] | None = None) -> KeyRecord:
        """Insert a key row and return it; ``audit`` is called in the same transaction."""
        async with self._engine.begin() as conn:
            await conn.execute(keys.insert().values(**values))
            row = (await conn.execute(_select_keys().where(keys.c.hash == values["hash"]))).mappings().one()
            record = (await _records(conn, [row]))[0]
            if audit is not None:
                await audit(conn, None, record)
            return record

    async def update(
        self, *, key_hash: str, values: dict[str, Any], audit: AuditHook[KeyRecord] | None = None
    ) -> KeyRecord | None:
        """Update a live key and bump its version; None when it does not exist (or is deleted).

        With ``audit``, the row is read (locked, on PostgreSQL) before the update, and ``audit`` is called
        with it and the updated row in the same transaction.
        """
        live = (keys.c.hash == key_hash, keys.c.deleted_at.is_(None))
        async with self._engine.begin() as conn:
            before = None
            if audit is not None:
                old = (await conn.execute(_select_keys().where(*live).with_for_update(of=keys))).mappings().first()
                if old is None:
                    return None
                before = to_record(KeyRecord, old, period_usage={})
            result = await conn.execute(keys.update().where(*live).values(**values, version=keys.c.version + 1))
            if result.rowcount == 0:
                return None
            row = (await conn.execute(_select_keys().where(keys.c.hash == key_hash))).mappings().one()
            record = (await _records(conn, [row]))[0]
            if audit is not None:
                await audit(conn, before, record)
            return record

    async def changed_since(self, *, since: datetime) -> list[Change]:
        """Keys (deleted ones included) whose row changed at or after ``since``, with versions and secret hashes."""
        columns = (keys.c.hash, keys.c.secret_hash, keys.c.prev_secret_hash, keys.c.version, keys.c.updated_at)
        stmt = select(*columns).where(keys.c.updated_at >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Change(
                ident=row.hash,
                version=row.version,
                updated_at=ensure_utc(row.updated_at),
                secrets=(row.secret_hash, row.prev_secret_hash) if row.prev_secret_hash else (row.secret_hash,),
            )
            for row in rows
        ]

    async def secret_hashes_of(self, *, key_hashes: Sequence[str]) -> list[str]:
        """Every current and previous secret hash of the given keys (for cache invalidation)."""
        if not key_hashes:
            return []
        stmt = select(keys.c.secret_hash, keys.c.prev_secret_hash).where(keys.c.hash.in_(list(key_hashes)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [h for row in rows for h in (row.secret_hash, row.prev_secret_hash) if h]
