"""Accounts and groups: the single write path (store writes, then cache invalidation).

Every write names its ``Actor`` and is recorded in the audit log in its own transaction
(``services/audit.py``): ``account.create``, ``account.update``, ``group.create``, ``group.update``,
``group.delete``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from keyrelay.cache.keycache import KeyCache
from keyrelay.clock import Clock
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.spec import RATE_FIELDS, usd_to_micros
from keyrelay.services.audit import Actor, AuditTrail
from keyrelay.services.inputs import AccountCreate, AccountUpdate, GroupCreate, GroupUpdate
from keyrelay.store.accounts import AccountRepository, GroupRepository
from keyrelay.store.records import AccountRecord, GroupRecord
from keyrelay.store.schema import accounts as accounts_table

PPM = 1_000_000


def _default_rates(spec: GroupCreate | GroupUpdate) -> dict[str, int | None]:
    """Columns for ``default_rate_limits``: null clears every window; an object changes only those it names."""
    rates = spec.default_rate_limits
    if rates is None:
        return {f"default_{name}": None for name in RATE_FIELDS}
    return {f"default_{name}": getattr(rates, name) for name in RATE_FIELDS if name in rates.model_fields_set}


def _dedupe(value: list[str] | None) -> list[str] | None:
    return None if value is None else list(dict.fromkeys(value))


class AccountService:
    """Creates and changes accounts and groups."""

    def __init__(
        self,
        *,
        accounts: AccountRepository,
        groups: GroupRepository,
        cache: KeyCache | None,
        clock: Clock,
        audit: AuditTrail,
    ) -> None:
        self._accounts = accounts
        self._groups = groups
        self._cache = cache
        self._clock = clock
        self._audit = audit

    async def _group_id(self, name: str | None) -> int | None:
        if name is None:
            return None
        group = await self._groups.get_by_name(name=name)
        if group is None:
            raise GatewayError(ErrorType.INVALID_REQUEST, f"group {name!r} does not exist", field="group")
        return group.id

    async def create_account(self, spec: AccountCreate, *, actor: Actor) -> AccountRecord:
        """Create an account; 409 if the email is taken."""
        if await self._accounts.get_by_email(email=spec.email) is not None:
            raise GatewayError(ErrorType.CONFLICT, f"an account with email {spec.email!r} exists", field="email")
        now = self._clock.now_utc()
        values = {
            "email": spec.email,
            "status": spec.status,
            "balance_micros": None if spec.balance is None else usd_to_micros(spec.balance),
            "group_id": await self._group_id(spec.group),
            "created_at": now,
            "updated_at": now,
        }
        try:
            return await self._accounts.insert(
                values=values, audit=self._audit.hook(actor=actor, action="account.create")
            )
        except IntegrityError:
            raise GatewayError(
                ErrorType.CONFLICT, f"an account with email {spec.email!r} exists", field="email"
            ) from None

    async def update_account(self, account: AccountRecord, spec: AccountUpdate, *, actor: Actor) -> AccountRecord:
        """Change group, balance or status; keys of the account see it on their next request."""
        present = spec.model_fields_set
        values: dict[str, Any] = {"updated_at": self._clock.now_utc()}
        if "group" in present:
            values["group_id"] = await self._group_id(spec.group)
        if "balance" in present:
            # ``balance`` is what should be left: the credit is that plus what was already spent.
            # Computed inside the UPDATE, so a usage flush committing meanwhile cannot eat the top-up.
            values["balance_micros"] = (
                None if spec.balance is None else accounts_table.c.spent_micros + usd_to_micros(spec.balance)
            )
        if "status" in present:
            if spec.status is None:
                raise GatewayError(ErrorType.INVALID_REQUEST, "status cannot be null", field="status")
            values["status"] = spec.status
            if spec.status != "active":
                # Portal sessions of a deactivated account end for good (a reactivation does not revive them).
                values["session_epoch"] = accounts_table.c.session_epoch + 1
        audit = self._audit.hook(actor=actor, action="account.update")
        updated = await self._accounts.update(account_id=account.id, values=values, audit=audit)
        if updated is None:
            raise GatewayError(ErrorType.NOT_FOUND, "No such account.")
        if self._cache is not None:
            await self._cache.account_changed(updated)
        return updated

    async def top_up(self, account: AccountRecord, amount_micros: int, *, actor: Actor) -> AccountRecord:
        """Add ``amount_micros`` (> 0) to the account's credit, atomically (``balance_micros + amount``).

        Raises INVALID_REQUEST (field ``amount``) for an amount that is not positive or an account whose credit
        is unlimited, NOT_FOUND when the account is gone. Its keys see the new credit on their next request.
        """
        if amount_micros <= 0:
            raise GatewayError(ErrorType.INVALID_REQUEST, "The amount must be more than 0.", field="amount")
        if account.balance_micros is None:
            raise GatewayError(
                ErrorType.INVALID_REQUEST,
                "This account's credit is unlimited: there is nothing to top up.",
                field="amount",
            )
        values: dict[str, Any] = {
            "updated_at": self._clock.now_utc(),
            "balance_micros": accounts_table.c.balance_micros + amount_micros,
        }
        audit = self._audit.hook(actor=actor, action="account.top_up")
        updated = await self._accounts.update(account_id=account.id, values=values, audit=audit)
        if updated is None:
            raise GatewayError(ErrorType.NOT_FOUND, "No such account.")
        if self._cache is not None:
            await self._cache.account_changed(updated)
        return updated

    def _group_values(self, spec: GroupCreate | GroupUpdate, present: set[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "name" in present:
            if spec.name is None:
                raise GatewayError(ErrorType.INVALID_REQUEST, "name cannot be null", field="name")
            values["name"] = spec.name
        for field in ("description", "default_limit_reset", "quota_reset"):
            if field in present:
                values[field] = getattr(spec, field)
        for field, column in (("default_limit", "default_limit_micros"), ("quota", "quota_micros")):
            if field in present:
                amount = getattr(spec, field)
                values[column] = None if amount is None else usd_to_micros(amount)
        if "price_multiplier" in present:
            values["price_multiplier_ppm"] = int((spec.price_multiplier or 1) * PPM)
        if "default_rate_limits" in present:
            values.update(_default_rates(spec))
        for name in ("allowed_models", "allowed_providers"):
            if name in present:
                values[name] = _dedupe(getattr(spec, name))
        return values

    async def create_group(self, spec: GroupCreate, *, actor: Actor) -> GroupRecord:
        """Create a group; 409 if the name is taken."""
        if await self._groups.get_by_name(name=spec.name) is not None:
            raise GatewayError(ErrorType.CONFLICT, f"a group named {spec.name!r} exists", field="name")
        now = self._clock.now_utc()
        values = {"price_multiplier_ppm": PPM, "created_at": now, "updated_at": now}
        values.update(self._group_values(spec, set(spec.model_fields_set) | {"name"}))
        try:
            return await self._groups.insert(values=values, audit=self._audit.hook(actor=actor, action="group.create"))
        except IntegrityError:
            raise GatewayError(ErrorType.CONFLICT, f"a group named {spec.name!r} exists", field="name") from None

    async def update_group(self, group: GroupRecord, spec: GroupUpdate, *, actor: Actor) -> GroupRecord:
        """Change a group; keys of its accounts see the new defaults on their next request."""
        values = self._group_values(spec, set(spec.model_fields_set))
        if "name" in values and values["name"] != group.name and await self._groups.get_by_name(name=values["name"]):
            raise GatewayError(ErrorType.CONFLICT, f"a group named {values['name']!r} exists", field="name")
        values["updated_at"] = self._clock.now_utc()
        audit = self._audit.hook(actor=actor, action="group.update")
        updated = await self._groups.update(group_id=group.id, values=values, audit=audit)
        if updated is None:
            raise GatewayError(ErrorType.NOT_FOUND, "No such group.")
        if self._cache is not None:
            await self._cache.group_changed(updated)
        return updated

    async def delete_group(self, group: GroupRecord, *, actor: Actor) -> None:
        """Delete a group that no account belongs to."""
        members = await self._groups.member_count(group_id=group.id)
        if members:
            raise GatewayError(ErrorType.CONFLICT, f"group {group.name!r} still has {members} account(s)")
        await self._groups.delete(group_id=group.id, audit=self._audit.hook(actor=actor, action="group.delete"))
