"""Public JSON shapes of the management API (responses), and record → JSON conversion."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, Field

from keyrelay.errors import ErrorType
from keyrelay.keys.spec import RATE_FIELDS, micros_to_usd
from keyrelay.limits.periods import stored_usage
from keyrelay.services.audit import ActorType, TargetType
from keyrelay.store.audit import AuditEntry
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord


class ErrorDetail(BaseModel):
    """The ``error`` object of every error answer (keyrelay.errors.GatewayError.to_body)."""

    message: str = Field(description="A sentence for people; never a secret.")
    type: str = Field(
        description="keyrelay's error type; fixes the HTTP status.",
        json_schema_extra={"enum": [t.name for t in ErrorType]},
    )
    code: str = Field(description="OpenAI's string code where one fits, else a lowercase name of the type.")
    param: str | None = Field(default=None, description="The request field at fault, when there is one.")
    request_id: str = Field(description="Also sent as the x-request-id header.")
    metadata: dict[str, str] | None = Field(default=None, description="e.g. limit_source for quota errors.")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of keyrelay: ``{"error": {...}}``."""

    error: ErrorDetail


class RateLimitsOut(BaseModel):
    """Request windows as set on the key (null = inherited from the group)."""

    rpm: int | None
    per_5h: int | None
    per_1d: int | None
    per_7d: int | None
    tpm: int | None = None
    max_concurrent: int | None = None


class KeyOut(BaseModel):
    """A key as the API shows it. Never the plaintext."""

    hash: str
    name: str
    label: str
    key_type: str
    disabled: bool
    limit: float | None
    limit_remaining: float | None
    limit_reset: str | None
    usage: float
    rate_limits: RateLimitsOut
    allowed_providers: list[str] | None
    allowed_models: list[str] | None
    ip_allowlist: list[str] | None
    ip_denylist: list[str] | None
    region: str | None
    account_id: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str | None
    rotation_grace_until: datetime | None


class KeyEnvelope(BaseModel):
    """``{"data": key}`` with any warnings about the input."""

    data: KeyOut
    warnings: list[str] = []


class KeyIssued(KeyEnvelope):
    """Answer to create and rotate: the plaintext ``key`` appears here once and never again."""

    key: str


class KeyPage(BaseModel):
    """One page of keys; ``next_page_token`` is null on the last page."""

    data: list[KeyOut]
    next_page_token: str | None


class KeyDeleted(BaseModel):
    """Answer to DELETE."""

    data: dict[str, str | bool]


class GroupOut(BaseModel):
    """A group and its defaults."""

    id: int
    name: str
    description: str | None
    price_multiplier: float
    default_limit: float | None
    default_limit_reset: str | None
    default_rate_limits: RateLimitsOut
    allowed_models: list[str] | None
    allowed_providers: list[str] | None
    quota: float | None
    quota_reset: str | None
    quota_used: float
    created_at: datetime
    updated_at: datetime


class AccountOut(BaseModel):
    """An account: ``balance`` is the credit left (null = unlimited), ``spent`` everything charged so far."""

    id: int
    email: str
    status: str
    balance: float | None
    spent: float
    group: str | None
    created_at: datetime
    updated_at: datetime


class AuditEntryOut(BaseModel):
    """One change to a key, account or group: who made it, from where, and the fields it changed."""

    id: int = Field(description="Increases with every entry; newer entries have higher ids.")
    created_at: datetime
    actor_type: ActorType
    actor: str = Field(description="The management key's name and display form, the account's email, or 'cli'.")
    actor_account_id: int | None
    ip: str | None = Field(description="The client address of the change (null from the CLI).")
    action: str = Field(description="e.g. key.create, key.update, key.rotate, key.revoke, account.update.")
    target_type: TargetType
    target_id: str = Field(description="The key's hash, or the account's or group's id.")
    target_account_id: int | None = Field(description="The account the target belongs to (null for groups).")
    changes: dict[str, Any] = Field(
        description="Stored fields: {field: [old, new]} for an update; {field: value} of the record for a create "
        "or delete. Never a secret or a hash of one."
    )


class AuditPage(BaseModel):
    """One page of audit entries, newest first; ``next_page_token`` is null on the last page."""

    data: list[AuditEntryOut]
    next_page_token: str | None


def _rates(record: KeyRecord | GroupRecord, prefix: str) -> RateLimitsOut:
    return RateLimitsOut(**{name: getattr(record, prefix + name) for name in RATE_FIELDS})


def _list(value: tuple[str, ...] | None) -> list[str] | None:
    return None if value is None else list(value)


def key_out(record: KeyRecord, now: datetime) -> KeyOut:
    """The API view of a key record at time ``now``."""
    limit = record.limit_micros
    remaining = (
        None
        if not limit
        else max(
            0,
            limit - stored_usage(record, record.limit_reset, now),
        )
    )
    grace = record.prev_secret_expires_at
    return KeyOut(
        hash=record.hash,
        name=record.name,
        label=record.display,
        key_type=record.key_type,
        disabled=record.disabled,
        limit=None if limit is None else micros_to_usd(limit),
        limit_remaining=None if remaining is None else micros_to_usd(remaining),
        limit_reset=record.limit_reset,
        usage=micros_to_usd(record.usage_micros),
        rate_limits=_rates(record, ""),
        allowed_providers=_list(record.allowed_providers),
        allowed_models=_list(record.allowed_models),
        ip_allowlist=_list(record.ip_allowlist),
        ip_denylist=_list(record.ip_denylist),
        region=record.region,
        account_id=record.account_id,
        created_at=record.created_at,
        updated_at=record.updated_at,
        expires_at=record.expires_at,
        last_used_at=record.last_used_at,
        last_used_ip=record.last_used_ip,
        rotation_grace_until=grace if grace is not None and grace > now else None,
    )


def group_out(group: GroupRecord, now: datetime) -> GroupOut:
    """The API view of a group."""
    return GroupOut(
        id=group.id,
        name=group.name,
        description=group.description,
        price_multiplier=group.price_multiplier_ppm / 1_000_000,
        default_limit=None if group.default_limit_micros is None else micros_to_usd(group.default_limit_micros),
        default_limit_reset=group.default_limit_reset,
        default_rate_limits=_rates(group, "default_"),
        quota=None if group.quota_micros is None else micros_to_usd(group.quota_micros),
        quota_reset=group.quota_reset,
        quota_used=micros_to_usd(stored_usage(group, group.quota_reset, now)),
        allowed_models=_list(group.allowed_models),
        allowed_providers=_list(group.allowed_providers),
        created_at=group.created_at,
        updated_at=group.updated_at,
    )


def account_out(account: AccountRecord, group_name: str | None) -> AccountOut:
    """The API view of an account."""
    return AccountOut(
        id=account.id,
        email=account.email,
        status=account.status,
        balance=None if account.remaining_micros is None else micros_to_usd(account.remaining_micros),
        spent=micros_to_usd(account.spent_micros),
        group=group_name,
        created_at=account.created_at,
        updated_at=account.updated_at,
    )


def audit_out(entry: AuditEntry) -> AuditEntryOut:
    """The API view of an audit entry."""
    return AuditEntryOut(
        id=entry.id,
        created_at=entry.created_at,
        actor_type=cast(ActorType, entry.actor_type),
        actor=entry.actor,
        actor_account_id=entry.actor_account_id,
        ip=entry.ip,
        action=entry.action,
        target_type=cast(TargetType, entry.target_type),
        target_id=entry.target_id,
        target_account_id=entry.target_account_id,
        changes=dict(entry.changes),
    )
