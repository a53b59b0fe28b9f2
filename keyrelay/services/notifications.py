"""Email notifications to account holders: spend limits, low balances, keys about to expire.

A key's spend at 80 % and 100 % of its limit, a low account balance, and a key expiring within 7 days.

``Notifier.check_once`` runs periodically (``KEYRELAY_NOTIFY_INTERVAL_S``, every process). It reads the
store, not the hot path, so the spend it sees is what the usage writer flushed (about a second behind). The
database picks the keys that may be due (``NotificationRepository.keys_due_after``); the rules below are then
applied to those only, so a check costs what is due, not what exists.
Each notification goes out at most once per period:

- spend: once per key, kind (80 or 100) and spend period (the period's start; ``lifetime`` for a limit
  that never resets), against the key's own limit or else its group's default;
- balance: once per account and credit granted (a top-up makes a new credit, so a later fall below the
  threshold is told again), when what is left drops below ``KEYRELAY_LOW_BALANCE_USD``;
- expiry: once per key and expiry time, when it is less than 7 days away.

A claim row (``store/notifications.py``) is written before the mail is sent, so two processes never both
send; a mail the SMTP server refused releases its claim, to be tried again on the next check. Each kind
can be switched off per account on the portal's account page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import get_args

from keyrelay.clock import Clock
from keyrelay.keys.spec import LimitReset
from keyrelay.limits.periods import period_start, stored_usage
from keyrelay.mail import Mailer, MailError
from keyrelay.store.notifications import NotificationRepository
from keyrelay.store.records import GroupRecord, KeyRecord

__all__ = ["EXPIRY_NOTICE", "Notifier", "SPEND_THRESHOLDS"]

log = logging.getLogger("keyrelay.notifications")

SPEND_THRESHOLDS = (80, 100)  # percent of a key's spend limit
EXPIRY_NOTICE = timedelta(days=7)
_PAGE = 500


@dataclass(frozen=True, slots=True)
class _Limit:
    micros: int
    reset: str | None


def effective_limit(key: KeyRecord, group: GroupRecord | None) -> _Limit | None:
    """The spend limit that applies to a key: its own, else its group's default; None when there is none."""
    if key.limit_micros is not None:
        return _Limit(key.limit_micros, key.limit_reset) if key.limit_micros > 0 else None
    if group is not None and group.default_limit_micros:
        return _Limit(group.default_limit_micros, group.default_limit_reset)
    return None


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


class Notifier:
    """Finds what is due and mails it; one instance per process."""

    def __init__(
        self,
        *,
        repo: NotificationRepository,
        mailer: Mailer,
        clock: Clock,
        public_url: str,
        low_balance_micros: int,
    ) -> None:
        self._repo = repo
        self._mailer = mailer
        self._clock = clock
        self._public_url = public_url.rstrip("/")
        self._low_balance_micros = low_balance_micros

    async def check_once(self) -> int:
        """Send every notification that is due; the number sent."""
        now = self._clock.now_utc()
        groups = await self._repo.groups_all()
        sent = await self._check_keys(now, groups)
        return sent + await self._check_balances(now)

    async def _check_keys(self, now: datetime, groups: dict[int, GroupRecord]) -> int:
        sent = 0
        after = ""
        starts = {reset: start for reset in get_args(LimitReset) if (start := period_start(reset, now)) is not None}
        while True:
            page = await self._repo.keys_due_after(
                after_hash=after,
                limit=_PAGE,
                now=now,
                period_starts=starts,
                notice=EXPIRY_NOTICE,
                spend_percent=SPEND_THRESHOLDS[0],
            )
            if not page:
                return sent
            after = page[-1].hash
            owners = await self._repo.accounts_by_id(ids=sorted({k.account_id for k in page}))
            for key in page:
                owner = owners.get(key.account_id)
                expired = key.expires_at is not None and key.expires_at <= now
                if owner is None or owner[0].status != "active" or key.disabled or expired:
                    continue
                account, email, (spend_on, _, expiry_on) = owner
                group = groups.get(account.group_id) if account.group_id is not None else None
                if spend_on:
                    sent += await self._spend(key, group, email, now)
                if expiry_on:
                    sent += await self._expiry(key, email, now)

    async def _spend(self, key: KeyRecord, group: GroupRecord | None, email: str, now: datetime) -> int:
        limit = effective_limit(key, group)
        if limit is None:
            return 0
        spent = stored_usage(key, limit.reset, now)
        start = period_start(limit.reset, now)
        period = start.isoformat() if start is not None else "lifetime"
        reached = [t for t in SPEND_THRESHOLDS if spent * 100 >= limit.micros * t]
        if not reached:
            return 0
        threshold = reached[-1]  # at 100 %, the 80 % mail is not sent as well
        when = {"daily": "today", "weekly": "this week", "monthly": "this month"}.get(limit.reset or "", "in all")
        if threshold == 100:
            subject = f"Key {key.name!r} reached its spend limit"
            body = (
                f"Your keyrelay key {key.name!r} ({key.display}) has spent {_usd(spent)} of its {_usd(limit.micros)} "
                f"limit {when}. Its requests are refused until the limit resets or is raised.\n"
            )
        else:
            subject = f"Key {key.name!r} used {threshold}% of its spend limit"
            body = (
                f"Your keyrelay key {key.name!r} ({key.display}) has spent {_usd(spent)} of its {_usd(limit.micros)} "
                f"limit {when} ({threshold}% or more).\n"
            )
        body += f"\nSee the key: {self._public_url}/keys/{key.hash}\n"
        return await self._send(f"spend{threshold}", key.hash, period, key.account_id, email, subject, body, now)

    async def _expiry(self, key: KeyRecord, email: str, now: datetime) -> int:
        expires = key.expires_at
        if expires is None or expires <= now or expires - now > EXPIRY_NOTICE:
            return 0
        subject = f"Key {key.name!r} expires on {expires:%Y-%m-%d}"
        body = (
            f"Your keyrelay key {key.name!r} ({key.display}) expires at {expires:%Y-%m-%d %H:%M} UTC. "
            f"After that its requests are refused.\n\nSee the key: {self._public_url}/keys/{key.hash}\n"
        )
        return await self._send("expiry", key.hash, expires.isoformat(), key.account_id, email, subject, body, now)

    async def _check_balances(self, now: datetime) -> int:
        sent = 0
        after = 0
        while True:
            page = await self._repo.accounts_low_after(
                after_id=after, limit=_PAGE, below_micros=self._low_balance_micros
            )
            if not page:
                return sent
            after = page[-1][0].id
            for account, (_, balance_on, _) in page:
                left = account.remaining_micros
                if not balance_on or left is None or left >= self._low_balance_micros:
                    continue
                subject = "Your keyrelay balance is low"
                body = (
                    f"Your keyrelay account has {_usd(max(0, left))} of credit left "
                    f"(below {_usd(self._low_balance_micros)}). "
                    "When it runs out, every key of the account is refused with 402. Ask an administrator for a "
                    f"top-up.\n\nAccount: {self._public_url}/account\n"
                )
                period = str(account.balance_micros)
                sent += await self._send(
                    "balance", str(account.id), period, account.id, account.email, subject, body, now
                )

    async def _send(
        self, kind: str, subject_id: str, period: str, account_id: int, to: str, subject: str, body: str, now: datetime
    ) -> int:
        if not await self._repo.claim(kind=kind, subject=subject_id, period=period, account_id=account_id, at=now):
            return 0
        try:
            await self._mailer.send(to=to, subject=subject, body=body)
        except MailError as exc:
            log.error("notification %s for %s not sent, will retry: %s", kind, subject_id, exc)
            await self._repo.release(kind=kind, subject=subject_id, period=period)
            return 0
        return 1
