"""NotificationRepository: which notification was sent for what, and the rows the checks read.

``notifications_sent`` has one row per (kind, subject, period): inserting it claims the notification,
so two instances running the checks at once send it once (the primary key refuses the second insert).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import DateTime, and_, case, delete, func, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.store.keys import KEY_COLUMNS, KEY_USAGE_MICROS, KEYS_WITH_USAGE
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord
from keyrelay.store.rows import to_record
from keyrelay.store.schema import accounts, groups, keys, notifications_sent, spend_periods
from keyrelay.store.spend import latest_periods

__all__ = ["NotificationRepository", "Preferences"]

Preferences = tuple[bool, bool, bool]  # (spend, balance, expiry) notifications wanted


class NotificationRepository:
    """Claims of sent notifications, and paged reads of keys and accounts for the checks."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(self, *, kind: str, subject: str, period: str, account_id: int, at: datetime) -> bool:
        """Record that this notification is being sent; False if it was already (by anyone)."""
        values = {"kind": kind, "subject": subject, "period": period, "account_id": account_id, "sent_at": at}
        try:
            async with self._engine.begin() as conn:
                await conn.execute(notifications_sent.insert().values(**values))
        except IntegrityError:
            return False
        return True

    async def release(self, *, kind: str, subject: str, period: str) -> None:
        """Forget a claim whose mail could not be sent, so the next check tries again."""
        stmt = delete(notifications_sent).where(
            notifications_sent.c.kind == kind,
            notifications_sent.c.subject == subject,
            notifications_sent.c.period == period,
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def keys_due_after(
        self,
        *,
        after_hash: str,
        limit: int,
        now: datetime,
        period_starts: Mapping[str, datetime],
        notice: timedelta,
        spend_percent: int,
    ) -> list[KeyRecord]:
        """Live, enabled, unexpired API keys that may be due a notification, in hash order after ``after_hash``.

        Due: expiring within ``notice`` of ``now`` (UTC), or having spent at least ``spend_percent`` % of their
        spend limit (their own, else their group's default) in the period containing ``now`` (lifetime for a
        limit that never resets). ``period_starts``: the start of that period for each reset kind, such as
        ``{"daily": 2026-12-06T00:00Z, ...}``. Decided in the database, so a check of 100,000 keys reads only
        the few that are due (it read them all: about 1 s of CPU a minute in every process). Each record
        comes with its latest period spend.
        """
        own = keys.c.limit_micros.is_not(None)  # a key's own limit, even 0 (no limit), hides its group's default
        cap = case((own, keys.c.limit_micros), else_=groups.c.default_limit_micros)
        reset = case((own, keys.c.limit_reset), else_=groups.c.default_limit_reset)
        period_spend = (
            select(spend_periods.c.usage_micros)
            .where(
                spend_periods.c.scope == "key",
                spend_periods.c.ident == keys.c.hash,
                spend_periods.c.reset == reset,
                spend_periods.c.period_start
                == case(
                    *((reset == name, literal(start, DateTime(timezone=True))) for name, start in period_starts.items())
                ),
            )
            .scalar_subquery()
        )
        spent = case((reset.is_(None), KEY_USAGE_MICROS), else_=func.coalesce(period_spend, 0))
        stmt = (
            select(*KEY_COLUMNS)
            .select_from(
                KEYS_WITH_USAGE.outerjoin(accounts, accounts.c.id == keys.c.account_id).outerjoin(
                    groups, groups.c.id == accounts.c.group_id
                )
            )
            .where(
                keys.c.deleted_at.is_(None),
                keys.c.key_type == "regular",
                keys.c.hash > after_hash,
                keys.c.disabled.is_(False),
                or_(keys.c.expires_at.is_(None), keys.c.expires_at > now),
                or_(
                    keys.c.expires_at <= now + notice,
                    and_(
                        cap > 0,
                        # First the lifetime spend, which no period's exceeds: most keys stop here, before their
                        # period's row is looked up.
                        cap * spend_percent <= KEY_USAGE_MICROS * 100,
                        cap * spend_percent <= spent * 100,
                    ),
                ),
            )
            .order_by(keys.c.hash)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
            periods = await latest_periods(conn, scope="key", idents=[r["hash"] for r in rows])
        return [to_record(KeyRecord, r, period_usage=periods.get(r["hash"], {})) for r in rows]

    async def accounts_by_id(self, *, ids: list[int]) -> dict[int, tuple[AccountRecord, str, Preferences]]:
        """Accounts by id with their email and notification preferences."""
        if not ids:
            return {}
        stmt = select(accounts).where(accounts.c.id.in_(ids))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return {
            r["id"]: (
                to_record(AccountRecord, r),
                r["email"],
                (r["notify_spend"], r["notify_balance"], r["notify_expiry"]),
            )
            for r in rows
        }

    async def accounts_low_after(
        self, *, after_id: int, limit: int, below_micros: int
    ) -> list[tuple[AccountRecord, Preferences]]:
        """Active accounts with a balance whose credit left is below ``below_micros``, in id order after ``after_id``.

        Chosen by the database: a check reads the accounts running low, not every account.
        """
        stmt = (
            select(accounts)
            .where(
                accounts.c.id > after_id,
                accounts.c.status == "active",
                accounts.c.balance_micros.is_not(None),
                accounts.c.balance_micros - accounts.c.spent_micros < below_micros,
            )
            .order_by(accounts.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            (to_record(AccountRecord, r), (r["notify_spend"], r["notify_balance"], r["notify_expiry"])) for r in rows
        ]

    async def groups_all(self) -> dict[int, GroupRecord]:
        """Every group by id (their default limits apply to keys without their own)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(groups))).mappings().all()
            periods = await latest_periods(conn, scope="group", idents=[str(r["id"]) for r in rows])
        return {r["id"]: to_record(GroupRecord, r, period_usage=periods.get(str(r["id"]), {})) for r in rows}

    async def set_preferences(self, *, account_id: int, spend: bool, balance: bool, expiry: bool) -> None:
        """Switch an account's notifications on or off."""
        stmt = (
            accounts.update()
            .where(accounts.c.id == account_id)
            .values(notify_spend=spend, notify_balance=balance, notify_expiry=expiry)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def preferences(self, *, account_id: int) -> Preferences:
        """An account's notification switches (all on for an unknown account)."""
        stmt = select(accounts.c.notify_spend, accounts.c.notify_balance, accounts.c.notify_expiry).where(
            accounts.c.id == account_id
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return (True, True, True) if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))
