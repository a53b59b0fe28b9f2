"""Domain records the repositories return: plain slotted dataclasses, UTC datetimes, integer money."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group: default key limits, allowed models and a price multiplier for its accounts."""

    id: int
    name: str
    description: str | None
    price_multiplier_ppm: int
    default_limit_micros: int | None
    default_limit_reset: str | None
    default_rpm: int | None
    default_per_5h: int | None
    default_per_1d: int | None
    default_per_7d: int | None
    default_tpm: int | None
    default_max_concurrent: int | None
    allowed_models: tuple[str, ...] | None
    allowed_providers: tuple[str, ...] | None
    quota_micros: int | None
    quota_reset: str | None
    usage_micros: int
    # Spend of the latest stored quota period of each reset kind, by counter name ("daily:2026-11-23").
    period_usage: Mapping[str, int] = field(hash=False)
    created_at: datetime
    updated_at: datetime
    version: int = 1  # bumped by every write (see store/schema.py); the cache compares it


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """A user account: owns keys, holds a prepaid balance (None = unlimited), belongs to a group."""

    id: int
    email: str
    status: str
    balance_micros: int | None  # credit granted; None = unlimited
    spent_micros: int
    group_id: int | None
    created_at: datetime
    updated_at: datetime
    version: int = 1  # bumped by every write (see store/schema.py); the cache compares it

    @property
    def remaining_micros(self) -> int | None:
        """Credit left as the store shows it (None = unlimited)."""
        return None if self.balance_micros is None else self.balance_micros - self.spent_micros

    @property
    def active(self) -> bool:
        """Whether the account may make requests."""
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as stored: never the plaintext, only hashes and the display form."""

    hash: str
    secret_hash: str
    prev_secret_hash: str | None
    prev_secret_expires_at: datetime | None
    display: str
    key_type: str
    is_admin: bool
    name: str
    account_id: int
    disabled: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    deleted_at: datetime | None
    limit_micros: int | None
    limit_reset: str | None
    rpm: int | None
    per_5h: int | None
    per_1d: int | None
    per_7d: int | None
    tpm: int | None
    max_concurrent: int | None
    allowed_models: tuple[str, ...] | None
    allowed_providers: tuple[str, ...] | None
    ip_allowlist: tuple[str, ...] | None
    ip_denylist: tuple[str, ...] | None
    region: str | None
    usage_micros: int
    # Spend of the latest stored limit period of each reset kind, by counter name ("daily:2026-11-23").
    period_usage: Mapping[str, int] = field(hash=False)
    last_used_at: datetime | None
    last_used_ip: str | None
    version: int = 1  # bumped by every write (see store/schema.py); the cache compares it
    # The key's number (``keys.id``, migration 0013), which its usage records carry: the usage writer charges it by
    # number rather than looking the number up by hash (None: a record built without it, as some tests do).
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A row that changed since a point in time, as seen by the cache poller.

    Attributes:
        ident: The row's identity: a key's stable hash, or an account or group id as text.
        version: The row's version now; a cached entry of a lower version is stale.
        updated_at: The row's ``updated_at`` (UTC); at an equal version, a cached entry that read another one is
            stale too (a writer that does not bump the version, such as a process still on the previous release).
        secrets: For a key, its current and previous secret hashes (the cache remembers unknown secrets, and a
            secret that a key now has is no longer unknown); empty for accounts and groups.
    """

    ident: str
    version: int
    updated_at: datetime
    secrets: tuple[str, ...] = ()
