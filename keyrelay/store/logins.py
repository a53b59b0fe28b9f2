"""LoginRepository: storage of portal sign-in (passwords, sessions, emailed tokens, failed sign-ins).

Stores values as given (secrets arrive already hashed); the rules live in ``services/signin.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.store.audit import AuditHook
from keyrelay.store.rows import to_record
from keyrelay.store.schema import account_tokens, accounts, portal_sessions, signin_failures
from keyrelay.store.text_match import equals_folded

__all__ = ["Login", "LoginRepository", "SessionRecord"]


@dataclass(frozen=True, slots=True)
class Login:
    """What sign-in needs of an account: never read by the gateway or kept in its cache."""

    id: int
    email: str
    status: str
    password_hash: str | None
    email_verified_at: datetime | None
    is_admin: bool
    session_epoch: int


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One portal session as stored (the cookie's id only as its SHA-256)."""

    id_hash: str
    account_id: int
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    session_epoch: int


_LOGIN_COLUMNS = (
    accounts.c.id,
    accounts.c.email,
    accounts.c.status,
    accounts.c.password_hash,
    accounts.c.email_verified_at,
    accounts.c.is_admin,
    accounts.c.session_epoch,
)


class LoginRepository:
    """Storage of sign-in state; every method is one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def login_by_email(self, *, email: str) -> Login | None:
        """The sign-in view of an account by email (case-insensitive)."""
        stmt = select(*_LOGIN_COLUMNS).where(equals_folded(accounts.c.email, email))
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return to_record(Login, row) if row else None

    async def login_by_id(self, *, account_id: int) -> Login | None:
        """The sign-in view of an account by id."""
        stmt = select(*_LOGIN_COLUMNS).where(accounts.c.id == account_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return to_record(Login, row) if row else None

    async def set_login(
        self,
        *,
        account_id: int,
        values: dict[str, Any],
        audit: AuditHook[Login] | None = None,
        keep_sessions: bool = False,
    ) -> None:
        """Write sign-in columns (``password_hash``, ``email_verified_at``, ``is_admin``) of an account.

        Writing ``password_hash`` also bumps ``session_epoch`` (not with ``keep_sessions``: the same password
        hashed again with new parameters).

        The row version is not bumped: none of these columns is read by the gateway's cache. With ``audit``,
        it is called with the sign-in view before and after the write, in the same transaction (not at all
        when the account does not exist).
        """
        where = accounts.c.id == account_id
        if "password_hash" in values and not keep_sessions:
            # A new password voids every session opened before it, even one whose sign-in checked the old
            # password while this write ran (``SigninService.session`` compares the epochs).
            values = {**values, "session_epoch": accounts.c.session_epoch + 1}
        async with self._engine.begin() as conn:
            before = None
            if audit is not None:
                old = (await conn.execute(select(*_LOGIN_COLUMNS).where(where).with_for_update())).mappings().first()
                if old is None:
                    return
                before = to_record(Login, old)
            await conn.execute(update(accounts).where(where).values(**values))
            if audit is not None:
                row = (await conn.execute(select(*_LOGIN_COLUMNS).where(where))).mappings().one()
                await audit(conn, before, to_record(Login, row))

    # Sessions.

    async def add_session(self, *, values: dict[str, Any]) -> None:
        """Insert a session row."""
        async with self._engine.begin() as conn:
            await conn.execute(portal_sessions.insert().values(**values))

    async def get_session(self, *, id_hash: str) -> SessionRecord | None:
        """One session by the hash of its id."""
        stmt = select(portal_sessions).where(portal_sessions.c.id_hash == id_hash)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return to_record(SessionRecord, row) if row else None

    async def touch_session(self, *, id_hash: str, last_seen_at: datetime) -> None:
        """Record activity on a session (the idle lifetime counts from here)."""
        stmt = update(portal_sessions).where(portal_sessions.c.id_hash == id_hash).values(last_seen_at=last_seen_at)
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def renew_session(self, *, id_hash: str, session_epoch: int) -> None:
        """Carry a session over to the account's new ``session_epoch`` (its owner changed the password)."""
        stmt = update(portal_sessions).where(portal_sessions.c.id_hash == id_hash).values(session_epoch=session_epoch)
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def sessions_of(self, *, account_id: int) -> list[SessionRecord]:
        """Every session row of an account, newest first (expired ones included until pruned)."""
        stmt = (
            select(portal_sessions)
            .where(portal_sessions.c.account_id == account_id)
            .order_by(portal_sessions.c.created_at.desc())
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [to_record(SessionRecord, r) for r in rows]

    async def delete_sessions(self, *, account_id: int, except_hash: str | None = None) -> int:
        """End every session of an account (but ``except_hash``); the number ended."""
        stmt = delete(portal_sessions).where(portal_sessions.c.account_id == account_id)
        if except_hash is not None:
            stmt = stmt.where(portal_sessions.c.id_hash != except_hash)
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    async def delete_session(self, *, id_hash: str, account_id: int | None = None) -> bool:
        """End one session (only of ``account_id`` when given); whether it existed."""
        stmt = delete(portal_sessions).where(portal_sessions.c.id_hash == id_hash)
        if account_id is not None:
            stmt = stmt.where(portal_sessions.c.account_id == account_id)
        async with self._engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    # Emailed single-use tokens.

    async def add_token(self, *, values: dict[str, Any]) -> None:
        """Insert an emailed token row."""
        async with self._engine.begin() as conn:
            await conn.execute(account_tokens.insert().values(**values))

    async def claim_token(self, *, values: dict[str, Any]) -> bool:
        """Insert a token row; False when one with the same hash exists (the insert is the claim)."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(account_tokens.insert().values(**values))
        except IntegrityError:
            return False
        return True

    async def use_token(self, *, token_hash: str, purpose: str, now: datetime) -> int | None:
        """Mark a token used, once: the account id, or None if unknown, used, expired or of another purpose.

        One conditional UPDATE, so two concurrent uses of the same link cannot both succeed.
        """
        stmt = (
            update(account_tokens)
            .where(
                account_tokens.c.token_hash == token_hash,
                account_tokens.c.purpose == purpose,
                account_tokens.c.used_at.is_(None),
                account_tokens.c.expires_at > now,
            )
            .values(used_at=now)
            .returning(account_tokens.c.account_id)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return int(row[0]) if row else None

    async def token_usable(self, *, token_hash: str, purpose: str, now: datetime) -> bool:
        """Whether a token could still be used (for showing its form; using it is ``use_token``)."""
        return await self.token_account(token_hash=token_hash, purpose=purpose, now=now) is not None

    async def token_account(self, *, token_hash: str, purpose: str, now: datetime) -> int | None:
        """The account of a token that could still be used, without using it; None otherwise."""
        stmt = select(account_tokens.c.account_id).where(
            account_tokens.c.token_hash == token_hash,
            account_tokens.c.purpose == purpose,
            account_tokens.c.used_at.is_(None),
            account_tokens.c.expires_at > now,
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return int(row[0]) if row else None

    async def token_recent(self, *, account_id: int, purpose: str, since: datetime) -> bool:
        """Whether a token of this account and purpose was issued at or after ``since``."""
        stmt = select(account_tokens.c.token_hash).where(
            account_tokens.c.account_id == account_id,
            account_tokens.c.purpose == purpose,
            account_tokens.c.created_at >= since,
        )
        async with self._engine.connect() as conn:
            return (await conn.execute(stmt.limit(1))).first() is not None

    async def retire_tokens(self, *, account_id: int, purpose: str, now: datetime) -> None:
        """Mark every unused token of an account and purpose used (a newer one replaces them)."""
        stmt = (
            update(account_tokens)
            .where(
                account_tokens.c.account_id == account_id,
                account_tokens.c.purpose == purpose,
                account_tokens.c.used_at.is_(None),
            )
            .values(used_at=now)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    # Failed sign-ins.

    async def add_failure(self, *, email: str, ip: str, at: datetime) -> int:
        """Record a failed (or not yet checked) sign-in; its id."""
        stmt = signin_failures.insert().values(email=email, ip=ip, created_at=at).returning(signin_failures.c.id)
        async with self._engine.begin() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def remove_failure(self, *, failure_id: int) -> None:
        """Take back a recorded attempt that turned out right."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(signin_failures).where(signin_failures.c.id == failure_id))

    async def failures_since(self, *, email: str, ip: str, since: datetime) -> tuple[int, int]:
        """Failed sign-ins since ``since``: (for this email, from this IP)."""
        by_email = select(func.count()).where(signin_failures.c.email == email, signin_failures.c.created_at >= since)
        by_ip = select(func.count()).where(signin_failures.c.ip == ip, signin_failures.c.created_at >= since)
        async with self._engine.connect() as conn:
            return int((await conn.execute(by_email)).scalar_one()), int((await conn.execute(by_ip)).scalar_one())

    async def prune(self, *, now: datetime, failures_before: datetime) -> None:
        """Delete expired sessions, tokens and failures older than ``failures_before``."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(portal_sessions).where(portal_sessions.c.expires_at <= now))
            await conn.execute(delete(account_tokens).where(account_tokens.c.expires_at <= now))
            await conn.execute(delete(signin_failures).where(signin_failures.c.created_at < failures_before))
