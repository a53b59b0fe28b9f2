"""The audit log's write side: who (``Actor``) changed which key, account or group, how, when and from where.

The write services (``services/keys.py``, ``services/accounts.py``, ``services/signin.py``) take an ``Actor``
with every change and pass ``AuditTrail.hook(...)`` to the repository write. The repository calls it inside
the transaction of the change, with the row as it was (read before the write, locked on PostgreSQL) and as it
is, so an entry is committed exactly when its change is, and its old values are the ones really replaced.

An entry's ``changes`` are the stored fields (``limit_micros``, ``balance_micros``: integer micro-dollars):
``{field: [old, new]}`` for each field an update changed, ``{field: value}`` of the new record for a create
and of the removed record for a delete. Secrets never reach an entry (``SECRET_FIELDS`` are dropped before
anything else), nor do bookkeeping fields (timestamps, versions, usage counters).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from keyrelay.clock import Clock
from keyrelay.store.audit import AuditHook, AuditRepository
from keyrelay.store.logins import Login
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord

__all__ = [
    "SECRET_FIELDS",
    "Actor",
    "ActorType",
    "TargetType",
    "AuditTrail",
    "Audited",
    "changes_between",
    "entry_values",
]

ActorType = Literal["management_key", "account", "cli", "system"]
TargetType = Literal["key", "account", "group"]
Audited = KeyRecord | AccountRecord | GroupRecord | Login

# Never written to an entry, whatever the record: a secret's hash is as good as the secret to an attacker
# who can test guesses against it.
SECRET_FIELDS = frozenset({"secret_hash", "prev_secret_hash", "password_hash"})
# Not changes anyone made: the target's identity (in target_id), timestamps the entry has, versions and
# usage bookkeeping.
_BOOKKEEPING = frozenset(
    {
        "hash",
        "id",
        "created_at",
        "updated_at",
        "version",
        "usage_micros",
        "spent_micros",
        "period_usage",
        "last_used_at",
        "last_used_ip",
        "session_epoch",  # follows a password change or a deactivation, which the entry already shows
    }
)
_LABEL_MAX = 400  # audit_log.actor


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, as the audit log names them.

    Attributes:
        type: ``management_key`` (the management API), ``account`` (a portal user), ``cli``, ``system``.
        label: The management key's name and display form, the account's email, or ``cli``.
        account_id: The actor's account (a management key's or a signed-in user's), if any.
        ip: The client address the change came from, if known.
    """

    type: ActorType
    label: str
    account_id: int | None = None
    ip: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        """The ``keyrelay`` command (run by whoever can reach the store)."""
        return cls(type="cli", label="cli")

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        """The gateway itself acting (``keyrelay demo`` issuing its keys, for example)."""
        return cls(type="system", label=label)

    @classmethod
    def management_key(cls, key: KeyRecord, *, ip: str | None) -> Actor:
        """A management key calling the management API: labelled ``name (kr_mgmt_...wxyz)``."""
        return cls(type="management_key", label=f"{key.name} ({key.display})", account_id=key.account_id, ip=ip)

    @classmethod
    def account(cls, *, email: str, account_id: int | None, ip: str | None) -> Actor:
        """A portal user acting on their own account (``account_id`` None while it is being signed up)."""
        return cls(type="account", label=email, account_id=account_id, ip=ip)


def _json(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return value


def _public(record: Audited) -> dict[str, object]:
    """The fields of a record an entry may show, as JSON values."""
    return {
        f.name: _json(getattr(record, f.name))
        for f in fields(record)
        if f.name not in SECRET_FIELDS and f.name not in _BOOKKEEPING
    }


def changes_between(before: Audited | None, after: Audited | None) -> dict[str, object]:
    """What an entry records: the public fields of a create or delete, ``{field: [old, new]}`` of an update."""
    if before is None:
        return _public(after) if after is not None else {}
    if after is None:
        return _public(before)
    old, new = _public(before), _public(after)
    return {name: [old[name], value] for name, value in new.items() if old.get(name) != value}


def _target(record: Audited) -> tuple[TargetType, str, int | None]:
    """(target_type, target_id, target_account_id) of a record."""
    if isinstance(record, KeyRecord):
        return "key", record.hash, record.account_id
    if isinstance(record, GroupRecord):
        return "group", str(record.id), None
    return "account", str(record.id), record.id


def entry_values(
    *, actor: Actor, action: str, before: Audited | None, after: Audited | None, at: datetime
) -> dict[str, Any]:
    """The audit_log row of one change (``before`` None for a create, ``after`` None for a delete)."""
    record = after if after is not None else before
    if record is None:
        raise ValueError("an audit entry needs the record before or after the change")
    target_type, target_id, target_account_id = _target(record)
    return {
        "created_at": at,
        "actor_type": actor.type,
        "actor": actor.label[:_LABEL_MAX],
        "actor_account_id": actor.account_id,
        "ip": actor.ip,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "target_account_id": target_account_id,
        "changes": changes_between(before, after),
    }


class AuditTrail:
    """Builds the hook that records one change in the audit log, inside the change's transaction."""

    def __init__(self, *, log: AuditRepository, clock: Clock) -> None:
        self._log = log
        self._clock = clock

    def hook(self, *, actor: Actor, action: str) -> AuditHook[Audited]:
        """The repository hook recording ``action`` by ``actor`` (timestamped by the clock when it runs)."""

        async def record(conn: AsyncConnection, before: Audited | None, after: Audited | None) -> None:
            values = entry_values(actor=actor, action=action, before=before, after=after, at=self._clock.now_utc())
            await self._log.append(values=values, conn=conn)

        return record
