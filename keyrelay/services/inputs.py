"""Validated input for accounts and groups, shared by the management API and the CLI."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, field_validator

from keyrelay.fields import NumberOnly, Storable, StrictInput, json_number
from keyrelay.keys.spec import MAX_LIST_ITEMS, LimitReset, ModelId, ProviderName, RateLimits, Usd

# One "@" with text on both sides, and none of the characters that mean something in a mail header
# (RFC 5322 specials, "=" of RFC 2047 encoded words, controls): the portal mails this address, and a
# header that parses as several recipients (a comma, an encoded word) would mail someone else.
_EMAIL_CHARS = r"[^@\s\x00-\x1f\x7f,;:<>()\[\]\"\\=]"
_EMAIL = re.compile(rf"{_EMAIL_CHARS}+@{_EMAIL_CHARS}+")
EMAIL_RULE = (
    "must be an email address such as name@example.com: one '@' with text on both sides, no spaces "
    'and none of , ; : < > ( ) [ ] " \\ ='
)


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(EMAIL_RULE)
    return value


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320),
    Storable,
    AfterValidator(_email),
    Field(json_schema_extra={"pattern": f"^{_EMAIL_CHARS}+@{_EMAIL_CHARS}+$"}),
]
GroupName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), Storable]
AccountStatus = Literal["active", "inactive"]
Multiplier = Annotated[
    Decimal,
    Field(gt=0, le=1000, decimal_places=6, allow_inf_nan=False),
    BeforeValidator(json_number),
    NumberOnly,
]


class AccountCreate(StrictInput):
    """Body of ``POST /api/v1/accounts``; ``balance`` null means unlimited."""

    email: Email
    group: GroupName | None = None
    balance: Usd | None = None
    status: AccountStatus = "active"


class AccountUpdate(StrictInput):
    """Body of ``PATCH /api/v1/accounts/{id}``: only present fields change."""

    group: GroupName | None = None
    balance: Usd | None = None
    status: AccountStatus | None = None


class _GroupFields(StrictInput):
    description: Annotated[str, Storable] | None = Field(default=None, max_length=500)
    price_multiplier: Multiplier | None = None
    default_limit: Usd | None = None
    default_limit_reset: LimitReset | None = None
    default_rate_limits: RateLimits | None = None
    allowed_models: list[ModelId] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    allowed_providers: list[ProviderName] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    quota: Usd | None = Field(default=None, description="Spend cap shared by every key of the group's accounts.")
    quota_reset: LimitReset | None = None

    @field_validator("allowed_models", "allowed_providers")
    @classmethod
    def _no_list_is_null(cls, value: list[str] | None) -> list[str] | None:
        # [] and null both mean no ceiling: stored and shown as null (one meaning everywhere).
        return list(dict.fromkeys(value)) if value else None


class GroupCreate(_GroupFields):
    """Body of ``POST /api/v1/groups``."""

    name: GroupName


class GroupUpdate(_GroupFields):
    """Body of ``PATCH /api/v1/groups/{id}``: only present fields change."""

    name: GroupName | None = None
