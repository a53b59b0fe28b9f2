"""Key strings, hashing, CIDR normalisation, key input validation and spend periods."""

from __future__ import annotations

import hashlib
import ipaddress
import string
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from keyrelay.keys.format import KeyType, display_form, generate, key_type_of, looks_like_key
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import (
    KeyCreate,
    KeyRotate,
    KeyUpdate,
    RateLimits,
    micros_to_usd,
    normalise_cidr,
    usd_to_micros,
)
from keyrelay.limits.periods import period_end, period_start
from keyrelay.services.inputs import AccountCreate, GroupCreate

ALPHABET = set(string.ascii_letters + string.digits + "-_")
PROPERTY = hsettings(max_examples=200, database=None, deadline=None)


# --- key strings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key_type", "prefix"), [(KeyType.REGULAR, "kr_live_"), (KeyType.MANAGEMENT, "kr_mgmt_")])
def test_generated_keys(key_type: KeyType, prefix: str) -> None:
    keys = [generate(key_type) for _ in range(1000)]
    assert len(set(keys)) == 1000
    for key in keys:
        assert key.startswith(prefix)
        assert len(key) == 51 >= 40
        assert set(key[len(prefix) :]) <= ALPHABET
        assert looks_like_key(key)
        assert key_type_of(key) is key_type
    # 256 random bits: the first 42 secret characters are uniform over 64 symbols (the 43rd holds 4 bits).
    counts = Counter(c for key in keys for c in key[len(prefix) : len(prefix) + 42])
    assert set(counts) == ALPHABET
    expected = 1000 * 42 / 64
    assert all(0.7 * expected < n < 1.3 * expected for n in counts.values()), counts
    assert len({key[-1] for key in keys}) == 16


def test_key_type_and_shape_checks() -> None:
    secret = "A" * 43
    assert key_type_of("kr_live_" + secret) is KeyType.REGULAR
    assert key_type_of("kr_mgmt_" + secret) is KeyType.MANAGEMENT
    assert key_type_of("sk-" + secret) is None
    assert key_type_of("") is None
    assert looks_like_key("kr_mgmt_" + secret)
    for bad in (
        "kr_live_" + "A" * 42,
        "kr_live_" + "A" * 44,
        "kr_live_" + "A" * 42 + "=",
        "kr_live_" + "A" * 42 + "+",
        "kr_test_" + secret,
        "KR_LIVE_" + secret,
        " kr_live_" + secret,
        "kr_live_" + secret + "\n",
        "",
    ):
        assert not looks_like_key(bad), bad


def test_display_form() -> None:
    key = "kr_live_" + "x" * 39 + "WXYZ"
    assert display_form(key) == "kr_live_...WXYZ"
    assert display_form("kr_mgmt_" + "y" * 39 + "1234") == "kr_mgmt_...1234"
    assert display_form("sk-abcdef1234") == "sk-...1234"
    generated = generate(KeyType.REGULAR)
    shown = display_form(generated)
    assert shown == f"kr_live_...{generated[-4:]}" and len(shown) <= 32  # fits the display column
    assert generated[8:-4] not in shown


def test_hashing() -> None:
    key = generate(KeyType.REGULAR)
    digest = key_hash(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert key_hash(key) == digest
    assert key_hash(key[:-1] + ("A" if key[-1] != "A" else "B")) != digest
    assert key_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 vector


# --- CIDR ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("10.0.0.1", "10.0.0.1/32"),
        (" 10.0.0.1 ", "10.0.0.1/32"),
        ("10.0.0.1/32", "10.0.0.1/32"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.0/255.255.255.0", "192.168.1.0/24"),
        ("::1", "::1/128"),
        ("2001:DB8::1", "2001:db8::1/128"),
        ("2001:0db8:0000:0000::/32", "2001:db8::/32"),
        ("2001:db8::ffff/64", "2001:db8::/64"),
        ("::/0", "::/0"),
    ],
)
def test_normalise_cidr(given_value: str, expected: str) -> None:
    assert normalise_cidr(given_value) == expected


@pytest.mark.parametrize(
    "bad",
    ["", " ", "10.0.0.256", "10.0.0", "10.0.0.1/33", "10.0.0.1/-1", "010.0.0.1", "::g", "2001:db8::/129",
     "fe80::1%eth0", "localhost", "10.0.0.1/24/8", "10.0.0.0/8,10.0.0.1"],
)  # fmt: skip
def test_normalise_cidr_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid IPv4/IPv6 address or CIDR"):
        normalise_cidr(bad)


@PROPERTY
@given(st.ip_addresses())
def test_bare_address_is_a_single_host_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    host = _as_matched(address)
    width = 32 if host.version == 4 else 128
    assert normalise_cidr(str(address)) == f"{host}/{width}"
    assert normalise_cidr(address.exploded) == f"{host}/{width}"


def _as_matched(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as client addresses are matched: IPv4-mapped IPv6 unwrapped to IPv4."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped if mapped is not None else address


@PROPERTY
@given(st.ip_addresses(), st.data())
def test_normalised_network_contains_the_address_and_is_stable(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    prefix = data.draw(st.integers(0, address.max_prefixlen))
    normal = normalise_cidr(f"{address}/{prefix}")
    network = ipaddress.ip_network(normal)
    host = _as_matched(address)
    if host is not address and prefix >= 96:  # an IPv4-mapped rule is stored as the IPv4 network it maps
        assert host in network and network.prefixlen == prefix - 96
    else:
        assert address in network and network.prefixlen == prefix
    assert normalise_cidr(normal) == normal


# --- key input -------------------------------------------------------------------------------------------


def _error(model: type[Any], data: Any) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    first = info.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


def test_key_create_accepts_and_normalises() -> None:
    spec = KeyCreate.model_validate_json(
        '{"name": " prod ", "limit": 0.1, "limit_reset": "weekly", "allowed_models": [" a ", "b", "a"],'
        ' "ip_allowlist": ["10.0.0.1", "10.0.0.1/32", "::1"], "expires_at": "2030-01-01T02:00:00+02:00",'
        ' "rate_limits": {"rpm": 0}}'
    )
    assert spec.name == "prod"
    assert spec.limit == Decimal("0.1") and usd_to_micros(spec.limit) == 100_000  # no float rounding
    assert spec.allowed_models == ["a", "b"]
    assert spec.ip_allowlist == ["10.0.0.1/32", "::1/128"]
    assert spec.expires_at == datetime(2030, 1, 1, tzinfo=UTC) and spec.expires_at.tzinfo is UTC
    assert spec.rate_limits == RateLimits(rpm=0)
    assert spec.rate_limits is not None and spec.rate_limits.model_fields_set == {"rpm"}
    assert spec.model_fields_set == {
        "name", "limit", "limit_reset", "allowed_models", "ip_allowlist", "expires_at", "rate_limits",
    }  # fmt: skip
    naive = KeyCreate(name="n", expires_at=datetime(2030, 5, 5, 12, 0))  # noqa: DTZ001 - naive on purpose
    assert naive.expires_at == datetime(2030, 5, 5, 12, 0, tzinfo=UTC)
    assert KeyCreate(name="n" * 100, expires_in_days=36_500, expires_at=None).expires_in_days == 36_500
    assert KeyCreate(name="n", expires_in_days=0).expires_in_days == 0
    assert KeyCreate(name="n", limit=Decimal("1000000000")).limit == Decimal(1_000_000_000)
    assert KeyCreate(name="n", region="a" * 32).region == "a" * 32


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"name": "x", "limit": -0.000001}, "limit"),
        ({"name": "x", "limit": "0.0000001"}, "limit"),
        ({"name": "x", "limit": "1000000000.000001"}, "limit"),
        ({"name": "x", "limit": float("nan")}, "limit"),
        ({"name": "x", "limit": float("inf")}, "limit"),
        ({"name": "x", "limit_reset": "yearly"}, "limit_reset"),
        ({"name": "x", "limit_reset": ""}, "limit_reset"),
        ({"name": "x", "expires_in_days": -1}, "expires_in_days"),
        ({"name": "x", "expires_in_days": 36_501}, "expires_in_days"),
        ({"name": "x", "expires_at": "2030-01-01T00:00:00Z", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "expires_at": "2030-01-01T00:00:00Z", "expires_in_days": 5}, "expires_in_days"),
        ({"name": "x", "rate_limits": {"rpm": -1}}, "rate_limits.rpm"),
        ({"name": "x", "rate_limits": {"rpm": 10_000_001}}, "rate_limits.rpm"),
        ({"name": "x", "rate_limits": {"per_5h": 1_000_000_001}}, "rate_limits.per_5h"),
        ({"name": "x", "rate_limits": {"per_1h": 1}}, "rate_limits.per_1h"),
        ({"name": "x", "allowed_models": ["m" * 201]}, "allowed_models.0"),
        ({"name": "x", "allowed_providers": ["p" * 65]}, "allowed_providers.0"),
        ({"name": "x", "allowed_models": ["m"] * 1001}, "allowed_models"),
        ({"name": "x", "ip_allowlist": ["1.2.3.4", "nope"]}, "ip_allowlist"),
        ({"name": "x", "ip_denylist": ["::1/200"]}, "ip_denylist"),
        ({"name": "x", "region": "a" * 33}, "region"),
        ({"name": "x", "region": "EU"}, "region"),
        ({"name": "x", "region": "eu_west"}, "region"),
        ({"name": "x", "region": ""}, "region"),
        ({"name": "x", "extra": 1}, "extra"),
        ({"name": "x", "hash": "abc"}, "hash"),
    ],
)
def test_key_create_rejects(data: dict[str, Any], where: str) -> None:
    assert _error(KeyCreate, data)[0] == where


def test_key_update() -> None:
    assert KeyUpdate().model_fields_set == set()
    cleared = KeyUpdate(limit=None, rate_limits=None, region=None)
    assert cleared.model_fields_set == {"limit", "rate_limits", "region"}
    assert KeyUpdate(expires_at=None, expires_in_days=3).expires_in_days == 3
    partial = KeyUpdate.model_validate({"rate_limits": {"per_1d": None}})
    assert partial.rate_limits is not None and partial.rate_limits.model_fields_set == {"per_1d"}
    assert _error(KeyUpdate, {"name": None}) == ("name", "Value error, cannot be null")
    assert _error(KeyUpdate, {"disabled": None}) == ("disabled", "Value error, cannot be null")
    assert _error(KeyUpdate, {"account": "a@example.com"})[0] == "account"
    assert _error(KeyUpdate, {"limit": -1})[0] == "limit"


def test_key_rotate() -> None:
    assert KeyRotate().grace_seconds == 0
    assert KeyRotate(grace_seconds=30 * 86_400).grace_seconds == 30 * 86_400
    assert _error(KeyRotate, {"grace_seconds": -1})[0] == "grace_seconds"
    assert _error(KeyRotate, {"grace_seconds": 30 * 86_400 + 1})[0] == "grace_seconds"
    assert _error(KeyRotate, {"grace": 1})[0] == "grace"


def test_every_usd_amount_is_whole_micro_dollars() -> None:
    assert _error(AccountCreate, {"email": "a@b.c", "balance": "0.0000001"})[0] == "balance"
    assert _error(GroupCreate, {"name": "g", "default_limit": "1.0000001"})[0] == "default_limit"
    assert AccountCreate(email="a@b.c", balance=Decimal("0.000001")).balance == Decimal("0.000001")


@PROPERTY
@given(st.integers(0, 1_000_000_000 * 1_000_000))
def test_usd_micros_round_trip(micros: int) -> None:
    usd = Decimal(micros) / 1_000_000
    spec = KeyCreate(name="x", limit=usd)
    assert spec.limit is not None and usd_to_micros(spec.limit) == micros
    assert micros_to_usd(micros) == float(usd)


# --- spend periods ---------------------------------------------------------------------------------------


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("reset", "now", "start", "end"),
    [
        ("daily", at(2025, 1, 15, 13, 45, 10), at(2025, 1, 15), at(2025, 1, 16)),
        ("daily", at(2025, 1, 15), at(2025, 1, 15), at(2025, 1, 16)),
        ("daily", at(2024, 12, 31, 23, 59, 59, 999_999), at(2024, 12, 31), at(2025, 1, 1)),
        ("daily", at(2024, 2, 28, 12), at(2024, 2, 28), at(2024, 2, 29)),
        ("weekly", at(2025, 1, 15, 9), at(2025, 1, 13), at(2025, 1, 20)),  # Wednesday → Monday
        ("weekly", at(2025, 1, 13), at(2025, 1, 13), at(2025, 1, 20)),  # Monday 00:00 starts a week
        ("weekly", at(2025, 1, 19, 23, 59, 59), at(2025, 1, 13), at(2025, 1, 20)),  # Sunday night
        ("weekly", at(2025, 1, 1, 8), at(2024, 12, 30), at(2025, 1, 6)),  # across the year
        ("monthly", at(2025, 1, 15, 9), at(2025, 1, 1), at(2025, 2, 1)),
        ("monthly", at(2025, 12, 31, 23, 59), at(2025, 12, 1), at(2026, 1, 1)),  # December → January
        ("monthly", at(2025, 12, 1), at(2025, 12, 1), at(2026, 1, 1)),
        ("monthly", at(2024, 2, 29, 12), at(2024, 2, 1), at(2024, 3, 1)),
        ("monthly", at(2025, 1, 31, 12), at(2025, 1, 1), at(2025, 2, 1)),
    ],
)
def test_period_bounds(reset: str, now: datetime, start: datetime, end: datetime) -> None:
    assert period_start(reset, now) == start
    assert period_end(reset, now) == end


def test_period_edge_cases() -> None:
    now = at(2025, 6, 1, 12)
    assert period_start(None, now) is None and period_end(None, now) is None  # lifetime cap
    with pytest.raises(ValueError, match="yearly"):
        period_start("yearly", now)
    # Periods are UTC: 01:00 on 1 January in UTC+2 is still 31 December in UTC.
    local = datetime(2025, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert period_start("daily", local) == at(2024, 12, 31)
    assert period_start("monthly", local) == at(2024, 12, 1)
    assert period_end("monthly", local) == at(2025, 1, 1)
    assert period_start("daily", local).tzinfo == UTC  # type: ignore[union-attr]


OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@PROPERTY
@given(
    st.sampled_from(["daily", "weekly", "monthly"]),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 12, 31), timezones=OFFSETS),  # noqa: DTZ001
)
def test_period_contains_now(reset: str, now: datetime) -> None:
    start, end = period_start(reset, now), period_end(reset, now)
    assert start is not None and end is not None
    assert start <= now < end
    assert start.tzinfo == UTC and end.tzinfo == UTC
    assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
    assert period_start(reset, end) == end  # the next period starts where this one ends
    assert period_start(reset, end - timedelta(microseconds=1)) == start
    if reset == "daily":
        assert end - start == timedelta(days=1)
    elif reset == "weekly":
        assert start.weekday() == 0 and end - start == timedelta(days=7)
    else:
        assert start.day == 1 and end.day == 1 and timedelta(days=28) <= end - start <= timedelta(days=31)


def test_ipv4_mapped_rules_become_ipv4() -> None:
    # Client addresses are unwrapped to IPv4 before matching: a mapped rule must be stored as the IPv4 it maps.
    from keyrelay.keys.spec import normalise_cidr

    assert normalise_cidr("::ffff:1.2.3.4/128") == "1.2.3.4/32"
    assert normalise_cidr("::ffff:10.0.0.0/104") == "10.0.0.0/8"
    assert normalise_cidr("::ffff:0:0/96") == "0.0.0.0/0"
    assert normalise_cidr("2001:db8::/32") == "2001:db8::/32"
