"""Validated input for accounts and groups, shared by the management API and the CLI."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from keyrelay.keys.spec import MAX_LIST_ITEMS, LimitReset, ModelId, ProviderName, RateLimits, Usd

Email = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
]
GroupName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
AccountStatus = Literal["active", "inactive"]
Multiplier = Annotated[Decimal, Field(gt=0, le=1000, decimal_places=6, allow_inf_nan=False)]


class AccountCreate(BaseModel):
    """Body of ``POST /api/v1/accounts``; ``balance`` null means unlimited."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    group: GroupName | None = None
    balance: Usd | None = None
    status: AccountStatus = "active"


class AccountUpdate(BaseModel):
    """Body of ``PATCH /api/v1/accounts/{id}``: only present fields change."""

    model_config = ConfigDict(extra="forbid")

    group: GroupName | None = None
    balance: Usd | None = None
    status: AccountStatus | None = None


class _GroupFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=500)
    price_multiplier: Multiplier | None = None
    default_limit: Usd | None = None
    default_limit_reset: LimitReset | None = None
    default_rate_limits: RateLimits | None = None
    allowed_models: list[ModelId] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    allowed_providers: list[ProviderName] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    quota: Usd | None = Field(default=None, description="Spend cap shared by every key of the group's accounts.")
    quota_reset: LimitReset | None = None


class GroupCreate(_GroupFields):
    """Body of ``POST /api/v1/groups``."""

    name: GroupName


class GroupUpdate(_GroupFields):
    """Body of ``PATCH /api/v1/groups/{id}``: only present fields change."""

    name: GroupName | None = None
