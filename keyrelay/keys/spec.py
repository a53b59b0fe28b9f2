"""Validated key input: the fields a client may set on a key, shared by the API, CLI and dashboard.

``None`` on a limit field means "inherit the owner's group default"; ``0`` means "unlimited".
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from keyrelay.fields import NumberOnly, Storable, StrictInput, Timestamp, json_number

MICROS_PER_USD = 1_000_000
MAX_LIST_ITEMS = 1000
LimitReset = Literal["daily", "weekly", "monthly"]
ModelId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), Storable]
ProviderName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), Storable]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=100), Storable]


def _whole_micros(value: Decimal) -> Decimal:
    if value != value.quantize(Decimal("0.000001")):
        raise ValueError("at most 6 decimal places (1 micro-dollar)")
    return value


# Every USD amount (key limits, balances, group defaults) is a JSON number, stored as whole micro-dollars.
Usd = Annotated[
    Decimal,
    Field(ge=0, le=Decimal(1_000_000_000), allow_inf_nan=False),
    BeforeValidator(json_number),
    NumberOnly,
    AfterValidator(_whole_micros),
]
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")  # fullmatch: "$" alone would admit a final newline


def usd_to_micros(value: Decimal) -> int:
    """Exact conversion of a USD amount to integer micro-dollars."""
    return int(value * MICROS_PER_USD)


def micros_to_usd(value: int) -> float:
    """Micro-dollars as a JSON-friendly USD number (exact for amounts below 2**53 micro-dollars)."""
    return value / MICROS_PER_USD


def normalise_cidr(value: str) -> str:
    """A CIDR rule in canonical form; a bare address becomes /32 or /128.

    A network inside ``::ffff:0:0/96`` (IPv4-mapped IPv6, RFC 4291 §2.5.5.2) becomes the IPv4 network it
    maps: client addresses are matched as IPv4 once unwrapped, so the mapped form could never match.

    Raises:
        ValueError: Not an IPv4/IPv6 address or network.
    """
    text = value.strip()
    try:
        if "%" in text:  # an IPv6 zone id names a local interface, not a network
            raise ValueError
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4/IPv6 address or CIDR") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return str(ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False))
    return str(network)


RATE_FIELDS = ("rpm", "per_5h", "per_1d", "per_7d", "tpm", "max_concurrent")


class RateLimits(StrictInput):
    """Request windows; None inherits the group default, 0 means no limit."""

    rpm: int | None = Field(default=None, ge=0, le=10_000_000)
    per_5h: int | None = Field(default=None, ge=0, le=1_000_000_000)
    per_1d: int | None = Field(default=None, ge=0, le=1_000_000_000)
    per_7d: int | None = Field(default=None, ge=0, le=1_000_000_000)
    tpm: int | None = Field(default=None, ge=0, le=1_000_000_000, description="Tokens per minute.")
    max_concurrent: int | None = Field(default=None, ge=0, le=100_000, description="Requests in flight.")


class _KeyFields(StrictInput):
    model_config = ConfigDict(str_strip_whitespace=True)

    limit: Usd | None = None
    limit_reset: LimitReset | None = None
    expires_at: Timestamp | None = Field(default=None, description="ISO 8601; UTC when no offset. In the future.")
    expires_in_days: int | None = Field(default=None, ge=0, le=36_500)
    rate_limits: RateLimits | None = None
    allowed_models: list[ModelId] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    allowed_providers: list[ProviderName] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    ip_allowlist: list[str] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    ip_denylist: list[str] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    region: str | None = Field(default=None, json_schema_extra={"pattern": _REGION.pattern})
    disabled: bool | None = None

    @field_validator("ip_allowlist", "ip_denylist")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        # [] and null mean the same (no rule); they are stored, and shown, as null.
        if not value:
            return None
        return list(dict.fromkeys(normalise_cidr(v) for v in value))

    @field_validator("allowed_models", "allowed_providers")
    @classmethod
    def _dedupe(cls, value: list[str] | None) -> list[str] | None:
        # [] means "no list of its own", like null: stored and shown as null, so that in every answer null
        # means no restriction and an empty list means nothing is allowed (GET /v1/key).
        return list(dict.fromkeys(value)) if value else None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError("lowercase letters, digits and '-', at most 32 characters")
        return value

    @field_validator("expires_in_days")
    @classmethod
    def _one_expiry(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A field (not model) validator so that the error names the field; expires_at is declared first.
        if value is not None and info.data.get("expires_at") is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        return value


class KeyCreate(_KeyFields):
    """Body of ``POST /api/v1/keys``."""

    name: KeyName
    account: Annotated[str, Storable] | None = Field(
        default=None, description="Owner's email (admin management keys only)."
    )


class KeyUpdate(_KeyFields):
    """Body of ``PATCH /api/v1/keys/{hash}``: only the fields present change; null clears to inherit."""

    name: KeyName | None = None

    @field_validator("name", "disabled")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Runs only for fields present in the body, so this rejects an explicit null.
        if value is None:
            raise ValueError("cannot be null")
        return value


class KeyRotate(StrictInput):
    """Body of ``POST /api/v1/keys/{hash}/rotate``."""

    grace_seconds: int = Field(default=0, ge=0, le=30 * 86_400)
