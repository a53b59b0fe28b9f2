"""The /api/v1/keys management API through real HTTP, on SQLite and PostgreSQL.

Every response in this module passes through ``_check_response`` (an httpx event hook), which
asserts the ``x-request-id`` header and, on errors, the shape of the shared error body.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.spec import KeyCreate, KeyUpdate
from keyrelay.services.inputs import AccountUpdate
from keyrelay.store.spend import PeriodCharge, add_charges
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import TEST_ACTOR, make_management_key

KEY_SHAPE = re.compile(r"^kr_live_[A-Za-z0-9_-]{43}$")
MGMT_SHAPE = re.compile(r"^kr_mgmt_[A-Za-z0-9_-]{43}$")
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
KEY_FIELDS = {
    "hash",
    "name",
    "label",
    "key_type",
    "disabled",
    "limit",
    "limit_remaining",
    "limit_reset",
    "usage",
    "rate_limits",
    "allowed_providers",
    "allowed_models",
    "ip_allowlist",
    "ip_denylist",
    "region",
    "account_id",
    "created_at",
    "updated_at",
    "expires_at",
    "last_used_at",
    "last_used_ip",
    "rotation_grace_until",
}
NO_RATES = {"rpm": None, "per_5h": None, "per_1d": None, "per_7d": None, "tpm": None, "max_concurrent": None}
_ABSENT = object()


# --- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings with one provider, so that the server knows which models exist."""
    provider = ProviderConfig(
        name="openai",
        base_url="http://127.0.0.1:9",
        region="eu-west-1",
        models=(ModelConfig(id="gpt-4o"), ModelConfig(id="gpt-4o-mini")),
    )
    return Settings(database_url=database_url, cache_poll_interval_s=0.2, log_level="warning", providers=(provider,))


async def _check_response(response: httpx.Response) -> None:
    rid = response.headers.get("x-request-id")
    assert rid is not None and REQUEST_ID.match(rid), f"{response.request.url}: bad x-request-id {rid!r}"
    if response.status_code >= 400:
        await response.aread()
        err = response.json()["error"]
        assert err["code"] == ErrorType[err["type"]].code
        assert ErrorType[err["type"]].status == response.status_code or err["type"] == "UPSTREAM_ERROR"
        assert err["request_id"] == rid
        assert isinstance(err["message"], str) and err["message"]
        assert set(err) <= {"message", "type", "code", "param", "request_id", "metadata"}


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose every response is checked for the request id and error shape."""
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, event_hooks={"response": [_check_response]}
    ) as c:
        yield c


@pytest.fixture
async def bob_key(server: RunningServer) -> str:
    """A non-admin management key of bob@example.com."""
    return await make_management_key(server, "bob@example.com")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def utc(value: Any) -> datetime:
    """Parse an API timestamp, insisting on ISO 8601 in UTC."""
    assert isinstance(value, str), value
    assert value.endswith(("Z", "+00:00")), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def assert_error(r: httpx.Response, status: int, error_type: str, param: object = _ABSENT) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["type"] == error_type, r.text
    if param is not _ABSENT:
        assert err.get("param") == param, r.text
    return err


async def create(client: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/keys", json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def list_all(client: httpx.AsyncClient, key: str, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/keys", params={"page_size": 100, **params}, headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["next_page_token"] is None
    data: list[dict[str, Any]] = r.json()["data"]
    return data


# --- create ----------------------------------------------------------------------------------------------


async def test_create_with_every_field(client: httpx.AsyncClient, server: RunningServer, mgmt_key: str) -> None:
    before = datetime.now(UTC)
    body = {
        "name": "production-backend",
        "limit": 150.25,
        "limit_reset": "monthly",
        "expires_at": "2031-06-30T12:00:00+02:00",
        "rate_limits": {
            "rpm": 60,
            "per_5h": 1000,
            "per_1d": 5000,
            "per_7d": 20000,
            "tpm": 90000,
            "max_concurrent": 8,
        },
        "allowed_models": ["gpt-4o", "openai/gpt-4o-mini"],
        "allowed_providers": ["openai"],
        "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"],
        "ip_denylist": ["10.6.6.6"],
        "region": "eu-west-1",
        "disabled": True,
    }
    r = await client.post("/api/v1/keys", json=body, headers=auth(mgmt_key))
    after = datetime.now(UTC)
    assert r.status_code == 201, r.text
    out = r.json()
    plaintext = out["key"]
    assert isinstance(plaintext, str) and KEY_SHAPE.match(plaintext)
    assert len(plaintext) >= 40
    assert out["warnings"] == []

    data = out["data"]
    assert set(data) >= KEY_FIELDS
    alice = await server.runtime.accounts.get_by_email(email="alice@example.com")
    assert alice is not None
    assert data["hash"] == sha256(plaintext)
    assert data["name"] == "production-backend"
    assert data["label"] == f"kr_live_...{plaintext[-4:]}"
    assert data["key_type"] == "regular"
    assert data["disabled"] is True
    assert isinstance(data["limit"], int | float) and data["limit"] == 150.25
    assert isinstance(data["limit_remaining"], int | float) and data["limit_remaining"] == 150.25
    assert data["limit_reset"] == "monthly"
    assert isinstance(data["usage"], int | float) and data["usage"] == 0
    assert data["rate_limits"] == {
        "rpm": 60,
        "per_5h": 1000,
        "per_1d": 5000,
        "per_7d": 20000,
        "tpm": 90000,
        "max_concurrent": 8,
    }
    assert data["allowed_models"] == ["gpt-4o", "openai/gpt-4o-mini"]
    assert data["allowed_providers"] == ["openai"]
    assert data["ip_allowlist"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert data["ip_denylist"] == ["10.6.6.6/32"]
    assert data["region"] == "eu-west-1"
    assert data["account_id"] == alice.id
    created = utc(data["created_at"])
    assert before <= created <= after
    assert utc(data["updated_at"]) == created
    assert utc(data["expires_at"]) == datetime(2031, 6, 30, 10, 0, tzinfo=UTC)
    assert data["last_used_at"] is None
    assert data["last_used_ip"] is None
    assert data["rotation_grace_until"] is None

    # Reading it back gives the same view, and never the secret.
    got = await client.get(f"/api/v1/keys/{data['hash']}", headers=auth(mgmt_key))
    assert got.status_code == 200, got.text
    assert got.json()["data"] == data
    assert "key" not in got.json()
    listed = await client.get("/api/v1/keys", headers=auth(mgmt_key))
    assert listed.json()["data"] == [data]
    for text in (got.text, listed.text):
        assert plaintext not in text and plaintext[8:] not in text


async def test_create_minimal_key_has_inheriting_defaults(client: httpx.AsyncClient, mgmt_key: str) -> None:
    out = await create(client, mgmt_key, name="  plain  ")
    data = out["data"]
    assert data["name"] == "plain"  # surrounding whitespace is stripped
    assert data["disabled"] is False
    assert data["limit"] is None and data["limit_remaining"] is None and data["limit_reset"] is None
    assert data["rate_limits"] == NO_RATES
    for field in ("allowed_models", "allowed_providers", "ip_allowlist", "ip_denylist", "region", "expires_at"):
        assert data[field] is None, field
    assert data["usage"] == 0


async def test_limit_values(client: httpx.AsyncClient, mgmt_key: str) -> None:
    micro = (await create(client, mgmt_key, name="micro", limit=0.000001, limit_reset="daily"))["data"]
    assert micro["limit"] == 0.000001 and micro["limit_remaining"] == 0.000001 and micro["limit_reset"] == "daily"
    unlimited = (await create(client, mgmt_key, name="zero", limit=0))["data"]
    assert unlimited["limit"] == 0 and unlimited["limit_remaining"] is None  # 0 = no limit
    big = (await create(client, mgmt_key, name="big", limit=1_000_000_000, limit_reset="weekly"))["data"]
    assert big["limit"] == 1_000_000_000 and big["limit_reset"] == "weekly"
    lifetime = (await create(client, mgmt_key, name="cap", limit=12.5))["data"]
    assert lifetime["limit"] == 12.5 and lifetime["limit_reset"] is None


async def test_tpm_and_max_concurrent(client: httpx.AsyncClient, server: RunningServer, mgmt_key: str) -> None:
    only_tpm = (await create(client, mgmt_key, name="tpm", rate_limits={"tpm": 120_000}))["data"]
    assert only_tpm["rate_limits"] == {**NO_RATES, "tpm": 120_000}
    only_conc = (await create(client, mgmt_key, name="conc", rate_limits={"max_concurrent": 3}))["data"]
    assert only_conc["rate_limits"] == {**NO_RATES, "max_concurrent": 3}
    top = {"tpm": 1_000_000_000, "max_concurrent": 100_000}
    biggest = (await create(client, mgmt_key, name="max", rate_limits=top))["data"]
    assert biggest["rate_limits"] == {**NO_RATES, **top}
    zero = (await create(client, mgmt_key, name="zero", rate_limits={"tpm": 0, "max_concurrent": 0}))["data"]
    assert zero["rate_limits"] == {**NO_RATES, "tpm": 0, "max_concurrent": 0}  # 0 = unlimited, stored as given
    record = await server.runtime.keys.get(key_hash=only_tpm["hash"])
    assert record is not None and (record.tpm, record.max_concurrent) == (120_000, None)

    url = f"/api/v1/keys/{only_tpm['hash']}"

    async def patch_rates(rates: dict[str, Any]) -> dict[str, Any]:
        r = await client.patch(url, json={"rate_limits": rates}, headers=auth(mgmt_key))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()["data"]["rate_limits"]
        assert (await client.get(url, headers=auth(mgmt_key))).json()["data"]["rate_limits"] == out
        return out

    # Patching one window keeps the others, in both directions.
    assert await patch_rates({"max_concurrent": 10}) == {**NO_RATES, "tpm": 120_000, "max_concurrent": 10}
    assert await patch_rates({"rpm": 30}) == {**NO_RATES, "rpm": 30, "tpm": 120_000, "max_concurrent": 10}
    assert await patch_rates({"tpm": 7}) == {**NO_RATES, "rpm": 30, "tpm": 7, "max_concurrent": 10}
    assert await patch_rates({"tpm": None}) == {**NO_RATES, "rpm": 30, "max_concurrent": 10}

    for rates, param in [
        ({"tpm": -1}, "rate_limits.tpm"),
        ({"tpm": 1_000_000_001}, "rate_limits.tpm"),
        ({"max_concurrent": -1}, "rate_limits.max_concurrent"),
        ({"max_concurrent": 100_001}, "rate_limits.max_concurrent"),
    ]:
        r = await client.post("/api/v1/keys", json={"name": "bad", "rate_limits": rates}, headers=auth(mgmt_key))
        err = assert_error(r, 400, "INVALID_REQUEST", param)
        assert param.split(".")[1] in err["message"], r.text
        assert_error(
            await client.patch(url, json={"rate_limits": rates}, headers=auth(mgmt_key)), 400, "INVALID_REQUEST", param
        )
    assert (await client.get(url, headers=auth(mgmt_key))).json()["data"]["rate_limits"] == {
        **NO_RATES,
        "rpm": 30,
        "max_concurrent": 10,
    }
    assert "bad" not in {k["name"] for k in await list_all(client, mgmt_key)}


async def test_expiry(client: httpx.AsyncClient, mgmt_key: str) -> None:
    never = (await create(client, mgmt_key, name="never", expires_in_days=0))["data"]
    assert never["expires_at"] is None

    start = datetime.now(UTC)
    month = (await create(client, mgmt_key, name="month", expires_in_days=30))["data"]
    end = datetime.now(UTC)
    # The server read its clock between start and end: no tolerance needed.
    assert start <= utc(month["expires_at"]) - timedelta(days=30) <= end

    naive = (await create(client, mgmt_key, name="naive", expires_at="2030-01-02T03:04:05"))["data"]
    assert utc(naive["expires_at"]) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    zulu = (await create(client, mgmt_key, name="zulu", expires_at="2030-01-02T03:04:05Z"))["data"]
    assert utc(zulu["expires_at"]) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    for days in (0, 7):
        r = await client.post(
            "/api/v1/keys",
            json={"name": "both", "expires_at": "2030-01-01T00:00:00Z", "expires_in_days": days},
            headers=auth(mgmt_key),
        )
        assert_error(r, 400, "INVALID_REQUEST", "expires_in_days")
    assert {k["name"] for k in await list_all(client, mgmt_key)} == {"never", "month", "naive", "zulu"}


async def test_ip_rules_are_normalised(client: httpx.AsyncClient, mgmt_key: str) -> None:
    data = (
        await create(
            client,
            mgmt_key,
            name="ips",
            ip_allowlist=["203.0.113.7", "2001:db8::1", "10.1.2.3/8", " 192.168.0.0/16 ", "2001:DB8:0:0::/48"],
            ip_denylist=["::1", "10.0.0.1", "10.0.0.1/32", "0.0.0.0/0", "::/0"],
        )
    )["data"]
    assert data["ip_allowlist"] == [
        "203.0.113.7/32",
        "2001:db8::1/128",
        "10.0.0.0/8",
        "192.168.0.0/16",
        "2001:db8::/48",
    ]
    assert data["ip_denylist"] == ["::1/128", "10.0.0.1/32", "0.0.0.0/0", "::/0"]  # duplicates collapse
    empty = (await create(client, mgmt_key, name="empty", ip_allowlist=[], ip_denylist=[]))["data"]
    assert empty["ip_allowlist"] is None and empty["ip_denylist"] is None  # [] means no rule, shown as null


# (case name, request kwargs for client.post, status, error type, param or _ABSENT)
JSON = {"content-type": "application/json"}
BAD_CREATE: list[tuple[str, dict[str, Any], int, str, object]] = [
    (
        "allow bad octet",
        {"json": {"name": "x", "ip_allowlist": ["10.0.0.256"]}},
        400,
        "INVALID_REQUEST",
        "ip_allowlist",
    ),
    (
        "allow bad prefix",
        {"json": {"name": "x", "ip_allowlist": ["10.0.0.0/33"]}},
        400,
        "INVALID_REQUEST",
        "ip_allowlist",
    ),
    ("allow word", {"json": {"name": "x", "ip_allowlist": ["localhost"]}}, 400, "INVALID_REQUEST", "ip_allowlist"),
    ("allow empty", {"json": {"name": "x", "ip_allowlist": [""]}}, 400, "INVALID_REQUEST", "ip_allowlist"),
    (
        "allow zone id",
        {"json": {"name": "x", "ip_allowlist": ["fe80::1%eth0"]}},
        400,
        "INVALID_REQUEST",
        "ip_allowlist",
    ),
    ("allow not list", {"json": {"name": "x", "ip_allowlist": "10.0.0.1"}}, 400, "INVALID_REQUEST", "ip_allowlist"),
    (
        "deny v6 prefix",
        {"json": {"name": "x", "ip_denylist": ["2001:db8::/129"]}},
        400,
        "INVALID_REQUEST",
        "ip_denylist",
    ),
    ("deny garbage", {"json": {"name": "x", "ip_denylist": ["1.2.3"]}}, 400, "INVALID_REQUEST", "ip_denylist"),
    ("negative limit", {"json": {"name": "x", "limit": -1}}, 400, "INVALID_REQUEST", "limit"),
    # JSON types are strict: no string, boolean or float stands in for another type.
    ("limit string", {"json": {"name": "x", "limit": "5"}}, 400, "INVALID_REQUEST", "limit"),
    ("limit bool", {"json": {"name": "x", "limit": True}}, 400, "INVALID_REQUEST", "limit"),
    ("disabled yes", {"json": {"name": "x", "disabled": "yes"}}, 400, "INVALID_REQUEST", "disabled"),
    ("disabled 1", {"json": {"name": "x", "disabled": 1}}, 400, "INVALID_REQUEST", "disabled"),
    (
        "max_concurrent false",
        {"json": {"name": "x", "rate_limits": {"max_concurrent": False}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.max_concurrent",
    ),
    ("rpm string", {"json": {"name": "x", "rate_limits": {"rpm": "5"}}}, 400, "INVALID_REQUEST", "rate_limits.rpm"),
    ("rpm 5.0", {"json": {"name": "x", "rate_limits": {"rpm": 5.0}}}, 400, "INVALID_REQUEST", "rate_limits.rpm"),
    ("days string", {"json": {"name": "x", "expires_in_days": "7"}}, 400, "INVALID_REQUEST", "expires_in_days"),
    ("name number", {"json": {"name": 5}}, 400, "INVALID_REQUEST", "name"),
    ("expires_at number", {"json": {"name": "x", "expires_at": 1e10}}, 400, "INVALID_REQUEST", "expires_at"),
    ("expires_at 0.5", {"json": {"name": "x", "expires_at": "0.5"}}, 400, "INVALID_REQUEST", "expires_at"),
    # Dates every store and every UTC offset can hold; nothing in the past.
    (
        "expires_at past year 9999",
        {"json": {"name": "x", "expires_at": "9999-12-31T23:59:59-14:00"}},
        400,
        "INVALID_REQUEST",
        "expires_at",
    ),
    (
        "expires_at year 1",
        {"json": {"name": "x", "expires_at": "0001-01-01T00:00:00+14:00"}},
        400,
        "INVALID_REQUEST",
        "expires_at",
    ),
    (
        "expires_at past",
        {"json": {"name": "x", "expires_at": "2020-01-01T00:00:00Z"}},
        400,
        "INVALID_REQUEST",
        "expires_at",
    ),
    # Text every store can hold: no NUL (PostgreSQL refuses it), no unpaired surrogate.
    ("name NUL", {"json": {"name": "a\u0000b"}}, 400, "INVALID_REQUEST", "name"),
    (
        "name surrogate",
        {"content": b'{"name": "a\\ud800b"}', "headers": {"content-type": "application/json"}},
        400,
        "INVALID_REQUEST",
        "name",
    ),
    ("model NUL", {"json": {"name": "x", "allowed_models": ["gpt\u0000"]}}, 400, "INVALID_REQUEST", "allowed_models.0"),
    (
        "provider NUL",
        {"json": {"name": "x", "allowed_providers": ["\u0000"]}},
        400,
        "INVALID_REQUEST",
        "allowed_providers.0",
    ),
    ("region NUL", {"json": {"name": "x", "region": "eu\u0000"}}, 400, "INVALID_REQUEST", "region"),
    ("account NUL", {"json": {"name": "x", "account": "a\u0000@example.com"}}, 400, "INVALID_REQUEST", "account"),
    ("ip NUL", {"json": {"name": "x", "ip_allowlist": ["10.0.0.1\u0000"]}}, 400, "INVALID_REQUEST", "ip_allowlist"),
    ("tiny negative", {"json": {"name": "x", "limit": -0.000001}}, 400, "INVALID_REQUEST", "limit"),
    ("7 decimals", {"json": {"name": "x", "limit": 1.0000001}}, 400, "INVALID_REQUEST", "limit"),
    ("huge limit", {"json": {"name": "x", "limit": 1e12}}, 400, "INVALID_REQUEST", "limit"),
    ("limit text", {"json": {"name": "x", "limit": "lots"}}, 400, "INVALID_REQUEST", "limit"),
    ("limit_reset", {"json": {"name": "x", "limit_reset": "yearly"}}, 400, "INVALID_REQUEST", "limit_reset"),
    ("limit_reset case", {"json": {"name": "x", "limit_reset": "Daily"}}, 400, "INVALID_REQUEST", "limit_reset"),
    ("name 101", {"json": {"name": "n" * 101}}, 400, "INVALID_REQUEST", "name"),
    ("name empty", {"json": {"name": ""}}, 400, "INVALID_REQUEST", "name"),
    ("name blank", {"json": {"name": "   "}}, 400, "INVALID_REQUEST", "name"),
    ("name null", {"json": {"name": None}}, 400, "INVALID_REQUEST", "name"),
    ("name number", {"json": {"name": 5}}, 400, "INVALID_REQUEST", "name"),
    ("name missing", {"json": {"limit": 5}}, 400, "INVALID_REQUEST", "name"),
    ("unknown field", {"json": {"name": "x", "colour": "red"}}, 400, "INVALID_REQUEST", "colour"),
    ("key_type field", {"json": {"name": "x", "key_type": "management"}}, 400, "INVALID_REQUEST", "key_type"),
    ("rpm negative", {"json": {"name": "x", "rate_limits": {"rpm": -1}}}, 400, "INVALID_REQUEST", "rate_limits.rpm"),
    (
        "per_5h negative",
        {"json": {"name": "x", "rate_limits": {"per_5h": -5}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.per_5h",
    ),
    (
        "per_7d float",
        {"json": {"name": "x", "rate_limits": {"per_7d": 1.5}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.per_7d",
    ),
    ("tpm negative", {"json": {"name": "x", "rate_limits": {"tpm": -1}}}, 400, "INVALID_REQUEST", "rate_limits.tpm"),
    (
        "tpm too large",
        {"json": {"name": "x", "rate_limits": {"tpm": 1_000_000_001}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.tpm",
    ),
    ("tpm float", {"json": {"name": "x", "rate_limits": {"tpm": 0.5}}}, 400, "INVALID_REQUEST", "rate_limits.tpm"),
    ("tpm text", {"json": {"name": "x", "rate_limits": {"tpm": "many"}}}, 400, "INVALID_REQUEST", "rate_limits.tpm"),
    (
        "max_concurrent negative",
        {"json": {"name": "x", "rate_limits": {"max_concurrent": -1}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.max_concurrent",
    ),
    (
        "max_concurrent too large",
        {"json": {"name": "x", "rate_limits": {"max_concurrent": 100_001}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.max_concurrent",
    ),
    (
        "max_concurrent float",
        {"json": {"name": "x", "rate_limits": {"max_concurrent": 1.5}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.max_concurrent",
    ),
    (
        "rate subfield",
        {"json": {"name": "x", "rate_limits": {"burst": 3}}},
        400,
        "INVALID_REQUEST",
        "rate_limits.burst",
    ),
    ("rate not object", {"json": {"name": "x", "rate_limits": 5}}, 400, "INVALID_REQUEST", "rate_limits"),
    ("days negative", {"json": {"name": "x", "expires_in_days": -1}}, 400, "INVALID_REQUEST", "expires_in_days"),
    ("expires_at text", {"json": {"name": "x", "expires_at": "tomorrow"}}, 400, "INVALID_REQUEST", "expires_at"),
    ("region spaces", {"json": {"name": "x", "region": "EU West"}}, 400, "INVALID_REQUEST", "region"),
    ("region long", {"json": {"name": "x", "region": "r" * 33}}, 400, "INVALID_REQUEST", "region"),
    ("region dash", {"json": {"name": "x", "region": "-eu"}}, 400, "INVALID_REQUEST", "region"),
    ("disabled text", {"json": {"name": "x", "disabled": "maybe"}}, 400, "INVALID_REQUEST", "disabled"),
    ("model empty", {"json": {"name": "x", "allowed_models": [""]}}, 400, "INVALID_REQUEST", "allowed_models.0"),
    ("models string", {"json": {"name": "x", "allowed_models": "gpt-4o"}}, 400, "INVALID_REQUEST", "allowed_models"),
    (
        "providers 1001",
        {"json": {"name": "x", "allowed_providers": ["p"] * 1001}},
        400,
        "INVALID_REQUEST",
        "allowed_providers",
    ),
    ("not json", {"content": b'{"name": "x",', "headers": JSON}, 400, "INVALID_REQUEST", "body"),
    ("json array", {"json": [{"name": "x"}]}, 400, "INVALID_REQUEST", "body"),
    ("json string", {"json": "x"}, 400, "INVALID_REQUEST", "body"),
    ("json number", {"json": 42}, 400, "INVALID_REQUEST", "body"),
    ("json null", {"content": b"null", "headers": JSON}, 400, "INVALID_REQUEST", "body"),
    ("no body", {}, 400, "INVALID_REQUEST", "body"),
    (
        "text/plain",
        {"content": b'{"name": "x"}', "headers": {"content-type": "text/plain"}},
        400,
        "INVALID_REQUEST",
        "body",
    ),
    ("form", {"data": {"name": "x"}}, 400, "INVALID_REQUEST", "body"),
    ("1 MiB + 1", {"content": b" " * (1024 * 1024 + 1), "headers": JSON}, 413, "PAYLOAD_TOO_LARGE", _ABSENT),
]


async def _chunks(total: int) -> AsyncIterator[bytes]:
    chunk = b" " * 65536
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


async def test_bad_input_is_rejected_naming_the_field_and_creates_nothing(
    client: httpx.AsyncClient, mgmt_key: str
) -> None:
    for case, request, status, error_type, param in BAD_CREATE:
        kwargs = dict(request)
        headers = {**auth(mgmt_key), **kwargs.pop("headers", {})}
        r = await client.post("/api/v1/keys", headers=headers, **kwargs)
        assert r.status_code == status, f"{case}: {r.text}"
        err = r.json()["error"]
        assert err["type"] == error_type, f"{case}: {r.text}"
        if param is not _ABSENT:
            assert err.get("param") == param, f"{case}: {r.text}"
            if isinstance(param, str) and param != "body":
                assert param.split(".")[0] in err["message"], f"{case}: message should name the field: {r.text}"
    # A body over the limit without Content-Length (chunked) is refused the same way.
    r = await client.post("/api/v1/keys", content=_chunks(1024 * 1024 + 65536), headers={**auth(mgmt_key), **JSON})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert await list_all(client, mgmt_key) == []
    # A body just under the limit is read (and then judged on its content).
    padded = b'{"name": "padded"' + b" " * (1024 * 1024 - 40) + b"}"
    r = await client.post("/api/v1/keys", content=padded, headers={**auth(mgmt_key), **JSON})
    assert r.status_code == 201, r.text


async def test_name_length_boundaries(client: httpx.AsyncClient, mgmt_key: str) -> None:
    long_name = "é" * 100  # 100 characters, 200 bytes
    assert (await create(client, mgmt_key, name=long_name))["data"]["name"] == long_name
    assert (await create(client, mgmt_key, name="a"))["data"]["name"] == "a"


async def test_unknown_model_is_allowed_with_a_warning(client: httpx.AsyncClient, mgmt_key: str) -> None:
    out = await create(client, mgmt_key, name="w", allowed_models=["gpt-4o", "gpt-9-imaginary", "openai/gpt-4o-mini"])
    assert out["data"]["allowed_models"] == ["gpt-4o", "gpt-9-imaginary", "openai/gpt-4o-mini"]
    assert len(out["warnings"]) == 1
    assert "gpt-9-imaginary" in out["warnings"][0] and "allowed_models" in out["warnings"][0]

    key_hash = out["data"]["hash"]
    r = await client.patch(
        f"/api/v1/keys/{key_hash}", json={"allowed_models": ["nope-1", "nope-2"]}, headers=auth(mgmt_key)
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["allowed_models"] == ["nope-1", "nope-2"]
    assert [("nope-1" in w, "nope-2" in w) for w in r.json()["warnings"]] == [(True, False), (False, True)]
    r = await client.patch(f"/api/v1/keys/{key_hash}", json={"name": "renamed"}, headers=auth(mgmt_key))
    assert r.json()["warnings"] == []  # only the whitelist being set is checked


# --- list ------------------------------------------------------------------------------------------------


async def test_pagination(client: httpx.AsyncClient, mgmt_key: str) -> None:
    made = [(await create(client, mgmt_key, name=f"k{i}"))["data"]["hash"] for i in range(5)]
    newest_first = made[::-1]

    seen: list[str] = []
    tokens: list[str | None] = []
    params: dict[str, Any] = {"page_size": 2}
    for _ in range(10):
        r = await client.get("/api/v1/keys", params=params, headers=auth(mgmt_key))
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"data", "next_page_token"}
        seen.extend(k["hash"] for k in page["data"])
        tokens.append(page["next_page_token"])
        if page["next_page_token"] is None:
            break
        params = {"page_size": 2, "page_token": page["next_page_token"]}
    assert len(tokens) == 3 and tokens[-1] is None and all(isinstance(t, str) for t in tokens[:2])
    assert seen == newest_first  # no duplicates, nothing missed, newest first

    async def hashes(**query: Any) -> tuple[list[str], str | None]:
        r = await client.get("/api/v1/keys", params=query, headers=auth(mgmt_key))
        assert r.status_code == 200, r.text
        return [k["hash"] for k in r.json()["data"]], r.json()["next_page_token"]

    assert await hashes() == (newest_first, None)  # default page size covers them
    assert await hashes(page_size=5) == (newest_first, None)  # exactly one full page: no next token
    assert (await hashes(offset=1, page_size=2))[0] == newest_first[1:3]
    assert await hashes(offset=4, page_size=2) == (newest_first[4:], None)
    assert await hashes(offset=5) == ([], None)
    assert (await hashes(page_size=1, page_token=tokens[0], offset=1))[0] == newest_first[3:4]

    # A token stays valid when the key it points after is deleted.
    r = await client.delete(f"/api/v1/keys/{newest_first[1]}", headers=auth(mgmt_key))
    assert r.status_code == 200
    assert await hashes(page_size=10, page_token=tokens[0]) == (newest_first[2:], None)

    for query, param in [
        ({"page_token": "garbage"}, "page_token"),
        ({"page_token": "eyJ4IjogMX0"}, "page_token"),  # base64 of {"x": 1}
        ({"page_token": "WzFd"}, "page_token"),  # base64 of [1]
        ({"page_token": "x" * 600}, "page_token"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"offset": -1}, "offset"),
    ]:
        r = await client.get("/api/v1/keys", params=query, headers=auth(mgmt_key))
        assert_error(r, 400, "INVALID_REQUEST", param)
    assert (await hashes(page_size=100))[0] == [h for h in newest_first if h != newest_first[1]]


# --- get, patch, delete ----------------------------------------------------------------------------------


async def test_patch_every_field(client: httpx.AsyncClient, mgmt_key: str) -> None:
    data = (
        await create(
            client,
            mgmt_key,
            name="orig",
            limit=10,
            limit_reset="monthly",
            rate_limits={"rpm": 1, "per_5h": 2, "per_1d": 3, "per_7d": 4, "tpm": 5, "max_concurrent": 6},
        )
    )["data"]
    key_hash = data["hash"]
    created_at = data["created_at"]

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        r = await client.patch(f"/api/v1/keys/{key_hash}", json=body, headers=auth(mgmt_key))
        assert r.status_code == 200, f"{body}: {r.text}"
        out: dict[str, Any] = r.json()["data"]
        got = await client.get(f"/api/v1/keys/{key_hash}", headers=auth(mgmt_key))
        assert got.json()["data"] == out  # persisted exactly as answered
        assert out["hash"] == key_hash and out["created_at"] == created_at
        return out

    assert (await patch({"name": "renamed"}))["name"] == "renamed"
    assert (await patch({"disabled": True}))["disabled"] is True
    assert (await patch({"disabled": False}))["disabled"] is False
    out = await patch({"limit": 42.5})
    assert out["limit"] == 42.5 and out["limit_remaining"] == 42.5 and out["limit_reset"] == "monthly"
    assert (await patch({"limit_reset": "daily"}))["limit_reset"] == "daily"
    assert (await patch({"limit_reset": "weekly"}))["limit_reset"] == "weekly"

    out = await patch({"rate_limits": {"rpm": 10}})
    rates = {"rpm": 10, "per_5h": 2, "per_1d": 3, "per_7d": 4, "tpm": 5, "max_concurrent": 6}
    assert out["rate_limits"] == rates  # other windows kept
    out = await patch({"rate_limits": {"per_1d": None, "per_7d": 0}})
    rates = {**rates, "per_1d": None, "per_7d": 0}
    assert out["rate_limits"] == rates
    out = await patch({"rate_limits": {"tpm": 50}})
    rates = {**rates, "tpm": 50}
    assert out["rate_limits"] == rates
    out = await patch({"rate_limits": {"max_concurrent": None, "tpm": 0}})
    rates = {**rates, "max_concurrent": None, "tpm": 0}
    assert out["rate_limits"] == rates
    assert (await patch({"rate_limits": {}}))["rate_limits"] == rates
    assert (await patch({"rate_limits": None}))["rate_limits"] == NO_RATES

    out = await patch({"allowed_models": ["gpt-4o"], "allowed_providers": ["openai", "azure"]})
    assert out["allowed_models"] == ["gpt-4o"] and out["allowed_providers"] == ["openai", "azure"]
    out = await patch({"ip_allowlist": ["192.0.2.1", "2001:db8::/64"], "ip_denylist": ["192.0.2.0/24"]})
    assert out["ip_allowlist"] == ["192.0.2.1/32", "2001:db8::/64"] and out["ip_denylist"] == ["192.0.2.0/24"]
    assert (await patch({"region": "us-east"}))["region"] == "us-east"
    assert utc((await patch({"expires_at": "2032-02-02T00:00:00Z"}))["expires_at"]) == datetime(2032, 2, 2, tzinfo=UTC)
    start = datetime.now(UTC)
    in_two = utc((await patch({"expires_in_days": 2}))["expires_at"])
    assert start <= in_two - timedelta(days=2) <= datetime.now(UTC)
    assert (await patch({"expires_in_days": 0}))["expires_at"] is None

    # null puts a field back to "inherit from the group".
    out = await patch(
        {
            "limit": None,
            "limit_reset": None,
            "allowed_models": None,
            "allowed_providers": None,
            "ip_allowlist": None,
            "ip_denylist": None,
            "region": None,
            "expires_at": None,
        }
    )
    assert out["limit"] is None and out["limit_remaining"] is None and out["limit_reset"] is None
    for field in ("allowed_models", "allowed_providers", "ip_allowlist", "ip_denylist", "region", "expires_at"):
        assert out[field] is None, field
    assert out["name"] == "renamed" and out["disabled"] is False  # untouched fields stay
    assert utc(out["updated_at"]) > utc(created_at)
    assert (await patch({}))["name"] == "renamed"


async def test_patch_bad_input_changes_nothing(client: httpx.AsyncClient, mgmt_key: str) -> None:
    data = (await create(client, mgmt_key, name="stable", limit=5, ip_allowlist=["10.0.0.1"]))["data"]
    url = f"/api/v1/keys/{data['hash']}"
    for body, param in [
        ({"name": None}, "name"),
        ({"disabled": None}, "disabled"),
        ({"name": "n" * 101}, "name"),
        ({"name": ""}, "name"),
        ({"limit": -5}, "limit"),
        ({"limit": 0.1234567}, "limit"),
        ({"limit_reset": "hourly"}, "limit_reset"),
        ({"ip_allowlist": ["10.0.0.1", "300.0.0.1"]}, "ip_allowlist"),
        ({"ip_denylist": ["::g"]}, "ip_denylist"),
        ({"rate_limits": {"rpm": -1}}, "rate_limits.rpm"),
        ({"rate_limits": {"per_hour": 5}}, "rate_limits.per_hour"),
        ({"rate_limits": {"tpm": -1}}, "rate_limits.tpm"),
        ({"rate_limits": {"tpm": 1_000_000_001}}, "rate_limits.tpm"),
        ({"rate_limits": {"max_concurrent": -2}}, "rate_limits.max_concurrent"),
        ({"rate_limits": {"max_concurrent": 100_001}}, "rate_limits.max_concurrent"),
        ({"rate_limits": {"rpm": 5, "tpm": -1}}, "rate_limits.tpm"),  # the valid window is not applied either
        ({"region": "Mars Base"}, "region"),
        ({"account": "bob@example.com"}, "account"),
        ({"expires_at": "2030-01-01T00:00:00Z", "expires_in_days": 1}, "expires_in_days"),
        ({"name": "ok", "limit": -1}, "limit"),  # one bad field: the good one is not applied either
    ]:
        r = await client.patch(url, json=body, headers=auth(mgmt_key))
        assert_error(r, 400, "INVALID_REQUEST", param)
    r = await client.patch(url, content=b"{broken", headers={**auth(mgmt_key), **JSON})
    assert_error(r, 400, "INVALID_REQUEST", "body")
    r = await client.patch(url, json=["name"], headers=auth(mgmt_key))
    assert_error(r, 400, "INVALID_REQUEST", "body")
    r = await client.patch(url, content=b" " * (1024 * 1024 + 1), headers={**auth(mgmt_key), **JSON})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    got = await client.get(url, headers=auth(mgmt_key))
    assert got.json()["data"] == data


async def test_delete_is_immediate_and_final(client: httpx.AsyncClient, server: RunningServer, mgmt_key: str) -> None:
    out = await create(client, mgmt_key, name="doomed")
    keep = await create(client, mgmt_key, name="kept")
    key_hash = out["data"]["hash"]
    secret_hash = sha256(out["key"])
    assert (await server.runtime.cache.get(secret_hash)) is not None  # warm the cache

    r = await client.delete(f"/api/v1/keys/{key_hash}", headers=auth(mgmt_key))
    assert r.status_code == 200, r.text
    assert r.json() == {"data": {"hash": key_hash, "deleted": True}}
    assert await server.runtime.cache.get(secret_hash) is None  # no stale cache entry serves it
    assert await server.runtime.keys.find_by_secret(secret_hash=secret_hash, now=datetime.now(UTC)) is None

    url = f"/api/v1/keys/{key_hash}"
    assert_error(await client.get(url, headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert_error(await client.delete(url, headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert_error(await client.patch(url, json={"disabled": False}, headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert_error(await client.post(f"{url}/rotate", headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert [k["hash"] for k in await list_all(client, mgmt_key)] == [keep["data"]["hash"]]


async def test_unknown_hash_is_404(client: httpx.AsyncClient, mgmt_key: str) -> None:
    for key_hash in ("0" * 64, "not-a-hash", sha256(mgmt_key)):  # the last is a management key: not listed here
        url = f"/api/v1/keys/{key_hash}"
        assert_error(await client.get(url, headers=auth(mgmt_key)), 404, "NOT_FOUND")
        assert_error(await client.patch(url, json={"name": "x"}, headers=auth(mgmt_key)), 404, "NOT_FOUND")
        assert_error(await client.delete(url, headers=auth(mgmt_key)), 404, "NOT_FOUND")
        assert_error(await client.post(f"{url}/rotate", json={}, headers=auth(mgmt_key)), 404, "NOT_FOUND")


async def test_limit_remaining_follows_the_current_window(settings: Settings) -> None:
    # A fake clock: "today" must be the server's today for the whole test, even across midnight.
    clock = FakeClock(datetime(2026, 3, 11, 15, 30, tzinfo=UTC))
    async with (
        running_server(settings, clock=clock) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10, event_hooks={"response": [_check_response]}) as client,
    ):
        mgmt_key = await make_management_key(server, "alice@example.com")
        await _limit_remaining_follows_the_current_window(client, server, mgmt_key, clock)


async def _limit_remaining_follows_the_current_window(
    client: httpx.AsyncClient, server: RunningServer, mgmt_key: str, clock: FakeClock
) -> None:
    lifetime = (await create(client, mgmt_key, name="life", limit=10))["data"]
    daily = (await create(client, mgmt_key, name="day", limit=10, limit_reset="daily"))["data"]
    stale = (await create(client, mgmt_key, name="stale", limit=10, limit_reset="daily"))["data"]
    today = clock.now_utc().replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    keys = server.runtime.keys
    await keys.update(key_hash=lifetime["hash"], values={"usage_micros": 2_500_000})
    await keys.update(key_hash=daily["hash"], values={"usage_micros": 9_000_000})
    async with server.runtime.engine.begin() as conn:
        await add_charges(
            conn,
            [
                PeriodCharge("key", daily["hash"], "daily", today - timedelta(days=1), 4_000_000),
                PeriodCharge("key", daily["hash"], "daily", today, 1_250_000),
                PeriodCharge("key", daily["hash"], "weekly", monday, 3_000_000),  # another reset kind's period
                PeriodCharge("key", stale["hash"], "daily", today - timedelta(days=1), 6_000_000),
            ],
        )

    async def view(key_hash: str) -> dict[str, Any]:
        r = await client.get(f"/api/v1/keys/{key_hash}", headers=auth(mgmt_key))
        out: dict[str, Any] = r.json()["data"]
        return out

    life = await view(lifetime["hash"])
    assert (life["usage"], life["limit_remaining"]) == (2.5, 7.5)
    # Only today's daily spend counts: not yesterday's, not the week's.
    day = await view(daily["hash"])
    assert (day["usage"], day["limit_remaining"]) == (9.0, 8.75)
    # Spend recorded in an earlier day does not count against today.
    assert (await view(stale["hash"]))["limit_remaining"] == 10
    # Over-spent: remaining is floored at zero.
    await keys.update(key_hash=lifetime["hash"], values={"usage_micros": 11_000_000})
    assert (await view(lifetime["hash"]))["limit_remaining"] == 0


# --- rotate ----------------------------------------------------------------------------------------------


async def test_rotate(client: httpx.AsyncClient, server: RunningServer, mgmt_key: str) -> None:
    first = await create(
        client, mgmt_key, name="rot", limit=20, limit_reset="weekly", rate_limits={"rpm": 7}, allowed_models=["gpt-4o"]
    )
    key_hash = first["data"]["hash"]
    await server.runtime.keys.update(key_hash=key_hash, values={"usage_micros": 1_500_000})
    url = f"/api/v1/keys/{key_hash}/rotate"

    r = await client.post(url, headers=auth(mgmt_key))  # no body: grace 0
    assert r.status_code == 200, r.text
    second = r.json()
    new_key = second["key"]
    assert KEY_SHAPE.match(new_key) and new_key != first["key"]
    data = second["data"]
    assert data["hash"] == key_hash
    assert data["label"] == f"kr_live_...{new_key[-4:]}"
    for field in ("name", "limit", "limit_reset", "rate_limits", "allowed_models", "created_at", "account_id"):
        assert data[field] == first["data"][field], field
    assert data["usage"] == 1.5
    assert data["rotation_grace_until"] is None
    record = await server.runtime.keys.get(key_hash=key_hash)
    assert record is not None
    assert record.secret_hash == sha256(new_key) and record.prev_secret_hash is None
    cache = server.runtime.cache
    assert await cache.get(sha256(first["key"])) is None  # the old secret stops at once
    principal = await cache.get(sha256(new_key))
    assert principal is not None and principal.key.hash == key_hash

    start = datetime.now(UTC)
    r = await client.post(url, json={"grace_seconds": 3600}, headers=auth(mgmt_key))
    end = datetime.now(UTC)
    assert r.status_code == 200, r.text
    third = r.json()
    assert third["key"] not in (first["key"], new_key)
    grace = utc(third["data"]["rotation_grace_until"])
    assert start <= grace - timedelta(seconds=3600) <= end
    old = await cache.get(sha256(new_key))  # the previous secret works during the grace period
    assert old is not None and old.via_previous_secret and old.key.hash == key_hash
    current = await cache.get(sha256(third["key"]))
    assert current is not None and not current.via_previous_secret
    got = await client.get(f"/api/v1/keys/{key_hash}", headers=auth(mgmt_key))
    assert got.json()["data"]["rotation_grace_until"] == third["data"]["rotation_grace_until"]
    assert [k["hash"] for k in await list_all(client, mgmt_key)] == [key_hash]  # still one key

    for body, param in [
        ({"grace_seconds": -1}, "grace_seconds"),
        ({"grace_seconds": 30 * 86400 + 1}, "grace_seconds"),
        ({"grace_seconds": "soon"}, "grace_seconds"),
        ({"grace": 5}, "grace"),
    ]:
        assert_error(await client.post(url, json=body, headers=auth(mgmt_key)), 400, "INVALID_REQUEST", param)
    assert (await client.get(f"/api/v1/keys/{key_hash}", headers=auth(mgmt_key))).json()["data"] == third["data"]


async def test_rotated_management_key_grace_through_http(client: httpx.AsyncClient, server: RunningServer) -> None:
    rt = server.runtime
    old = await make_management_key(server, "carol@example.com")
    assert (await client.get("/api/v1/keys", headers=auth(old))).status_code == 200
    record = await rt.keys.get(key_hash=sha256(old))
    assert record is not None

    graced = await rt.key_service.rotate(record=record, grace_seconds=60, actor=TEST_ACTOR)
    assert MGMT_SHAPE.match(graced.plaintext)
    assert (await client.get("/api/v1/keys", headers=auth(old))).status_code == 200
    assert (await client.get("/api/v1/keys", headers=auth(graced.plaintext))).status_code == 200

    final = await rt.key_service.rotate(record=graced.record, grace_seconds=0, actor=TEST_ACTOR)
    for stale in (old, graced.plaintext):
        assert_error(await client.get("/api/v1/keys", headers=auth(stale)), 401, "INVALID_API_KEY")
    assert (await client.get("/api/v1/keys", headers=auth(final.plaintext))).status_code == 200


# --- scoping ---------------------------------------------------------------------------------------------


async def test_keys_are_scoped_to_their_account(
    client: httpx.AsyncClient, server: RunningServer, mgmt_key: str, bob_key: str, admin_key: str
) -> None:
    alice_key_data = (await create(client, mgmt_key, name="alice-1"))["data"]
    bob_data = (await create(client, bob_key, name="bob-1", limit=3))["data"]
    bob_url = f"/api/v1/keys/{bob_data['hash']}"

    assert [k["hash"] for k in await list_all(client, mgmt_key)] == [alice_key_data["hash"]]
    assert [k["hash"] for k in await list_all(client, bob_key)] == [bob_data["hash"]]
    assert_error(await client.get(bob_url, headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert_error(await client.patch(bob_url, json={"name": "pwned"}, headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert_error(await client.delete(bob_url, headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert_error(await client.post(f"{bob_url}/rotate", headers=auth(mgmt_key)), 404, "NOT_FOUND")
    assert (await client.get(bob_url, headers=auth(bob_key))).json()["data"] == bob_data  # untouched

    bob = await server.runtime.accounts.get_by_email(email="bob@example.com")
    assert bob is not None
    r = await client.get("/api/v1/keys", params={"account_id": bob.id}, headers=auth(mgmt_key))
    assert_error(r, 403, "FORBIDDEN")
    r = await client.get("/api/v1/keys", params={"account_id": alice_key_data["account_id"]}, headers=auth(mgmt_key))
    assert [k["hash"] for k in r.json()["data"]] == [alice_key_data["hash"]]

    # A non-admin key may not name an owner, not even itself.
    for email in ("bob@example.com", "alice@example.com"):
        r = await client.post("/api/v1/keys", json={"name": "x", "account": email}, headers=auth(mgmt_key))
        assert_error(r, 403, "FORBIDDEN")
    assert len(await list_all(client, mgmt_key)) == 1

    # An admin key sees and changes everyone's keys, and creates keys for other accounts.
    assert {k["hash"] for k in await list_all(client, admin_key)} == {alice_key_data["hash"], bob_data["hash"]}
    assert (await client.get(bob_url, headers=auth(admin_key))).status_code == 200
    r = await client.patch(bob_url, json={"disabled": True}, headers=auth(admin_key))
    assert r.status_code == 200 and r.json()["data"]["disabled"] is True
    made = await create(client, admin_key, name="for-bob", account="BOB@example.com")
    assert made["data"]["account_id"] == bob.id
    assert {k["name"] for k in await list_all(client, bob_key)} == {"bob-1", "for-bob"}
    only_bob = await list_all(client, admin_key, account_id=bob.id)
    assert {k["name"] for k in only_bob} == {"bob-1", "for-bob"}
    r = await client.post("/api/v1/keys", json={"name": "x", "account": "nobody@example.com"}, headers=auth(admin_key))
    assert_error(r, 400, "INVALID_REQUEST", "account")
    r = await client.delete(bob_url, headers=auth(admin_key))
    assert r.status_code == 200
    assert [k["name"] for k in await list_all(client, bob_key)] == ["for-bob"]


# --- authentication --------------------------------------------------------------------------------------


async def test_bad_credentials_are_401(client: httpx.AsyncClient, mgmt_key: str) -> None:
    api_key = (await create(client, mgmt_key, name="llm"))["key"]
    unknown_mgmt = "kr_mgmt_" + "A" * 43
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": f"Basic {mgmt_key}"},
        {"Authorization": mgmt_key},
        {"Authorization": f"Bearer {mgmt_key}x"},
        {"Authorization": f"Bearer {unknown_mgmt}"},
        {"Authorization": f"Bearer {api_key}"},
    ):
        for method, url in (("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"), ("GET", "/api/v1/accounts")):
            r = await client.request(method, url, json={"name": "x"} if method == "POST" else None, headers=headers)
            assert_error(r, 401, "INVALID_API_KEY")
    r = await client.get("/api/v1/keys", headers=auth(api_key))
    assert "kr_mgmt_" in r.json()["error"]["message"]  # says what to use instead
    assert r.json()["error"]["message"].count(api_key) == 0
    assert [k["name"] for k in await list_all(client, mgmt_key)] == ["llm"]


async def test_management_key_states(settings: Settings) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with (
        running_server(settings, clock=clock) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10, event_hooks={"response": [_check_response]}) as client,
    ):
        mgmt_key = await make_management_key(server, "alice@example.com")
        rt = server.runtime
        record = await rt.keys.get(key_hash=sha256(mgmt_key))
        assert record is not None
        account = await rt.accounts.get(account_id=record.account_id)
        assert account is not None

        async def status() -> httpx.Response:
            return await client.get("/api/v1/keys", headers=auth(mgmt_key))

        assert (await status()).status_code == 200  # cached from here on
        record, _ = await rt.key_service.update(record=record, spec=KeyUpdate(disabled=True), actor=TEST_ACTOR)
        assert_error(await status(), 401, "API_KEY_DISABLED")
        record, _ = await rt.key_service.update(record=record, spec=KeyUpdate(disabled=False), actor=TEST_ACTOR)
        assert (await status()).status_code == 200

        # A key that expires in a minute works until the clock passes that minute.
        soon = clock.now_utc() + timedelta(minutes=1)
        record, _ = await rt.key_service.update(record=record, spec=KeyUpdate(expires_at=soon), actor=TEST_ACTOR)
        assert (await status()).status_code == 200
        clock.advance(60)
        assert_error(await status(), 401, "API_KEY_EXPIRED")
        record, _ = await rt.key_service.update(record=record, spec=KeyUpdate(expires_in_days=1), actor=TEST_ACTOR)
        assert (await status()).status_code == 200

        account = await rt.account_service.update_account(account, AccountUpdate(status="inactive"), actor=TEST_ACTOR)
        assert_error(await status(), 403, "USER_INACTIVE")
        r = await client.post("/api/v1/keys", json={"name": "x"}, headers=auth(mgmt_key))
        assert_error(r, 403, "USER_INACTIVE")
        await rt.account_service.update_account(account, AccountUpdate(status="active"), actor=TEST_ACTOR)
        assert (await status()).status_code == 200
        assert await list_all(client, mgmt_key) == []  # the refused create made nothing

        await rt.key_service.revoke(record=record, actor=TEST_ACTOR)
        assert_error(await status(), 401, "INVALID_API_KEY")


async def test_expires_at_must_be_in_the_future(settings: Settings) -> None:
    """A key that is expired when made is dead on arrival: refused on create and update, by the service itself."""
    clock = FakeClock(datetime(2030, 6, 1, 12, 0, tzinfo=UTC))
    async with (
        running_server(settings, clock=clock) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10, event_hooks={"response": [_check_response]}) as client,
    ):
        key = await make_management_key(server, "alice@example.com")
        headers = auth(key)
        now = clock.now_utc()
        for past in (now, now - timedelta(microseconds=1), now - timedelta(days=400), datetime(2001, 1, 1, tzinfo=UTC)):
            for stamp in (past.isoformat(), past.astimezone(timezone(timedelta(hours=-14))).isoformat()):
                r = await client.post("/api/v1/keys", json={"name": "dead", "expires_at": stamp}, headers=headers)
                err = assert_error(r, 400, "INVALID_REQUEST", "expires_at")
                assert "future" in err["message"], r.text
        assert await list_all(client, key) == []

        later = now + timedelta(microseconds=1)
        made = (await create(client, key, name="live", expires_at=later.isoformat()))["data"]
        assert utc(made["expires_at"]) == later
        url = f"/api/v1/keys/{made['hash']}"
        r = await client.patch(url, json={"expires_at": now.isoformat(), "name": "renamed"}, headers=headers)
        assert_error(r, 400, "INVALID_REQUEST", "expires_at")
        assert (await client.get(url, headers=headers)).json()["data"] == made  # nothing changed
        # Changing other fields of a key that has since expired stays possible.
        clock.advance(1)
        r = await client.patch(url, json={"name": "renamed"}, headers=headers)
        assert r.status_code == 200, r.text

        # The rule lives in the single write path, so the CLI and the dashboard get it too.
        alice = await server.runtime.accounts.get_by_email(email="alice@example.com")
        assert alice is not None
        with pytest.raises(GatewayError) as caught:
            await server.runtime.key_service.create(
                account=alice, spec=KeyCreate(name="x", expires_at=now), actor=TEST_ACTOR
            )
        assert caught.value.field == "expires_at" and caught.value.status == 400


async def test_region_no_provider_serves_is_accepted_with_a_warning(client: httpx.AsyncClient, mgmt_key: str) -> None:
    served = await create(client, mgmt_key, name="eu", region="eu-west-1")
    assert served["warnings"] == []
    out = await create(client, mgmt_key, name="mars", region="mars-1", allowed_models=["gpt-9"])
    assert out["data"]["region"] == "mars-1"
    region_warnings = [w for w in out["warnings"] if w.startswith("region:")]
    assert len(region_warnings) == 1 and "'mars-1'" in region_warnings[0] and "eu-west-1" in region_warnings[0]
    assert any("gpt-9" in w for w in out["warnings"])  # both kinds are reported together

    url = f"/api/v1/keys/{served['data']['hash']}"
    r = await client.patch(url, json={"region": "ap-south-1"}, headers=auth(mgmt_key))
    assert r.status_code == 200, r.text
    assert [w.split(":")[0] for w in r.json()["warnings"]] == ["region"]
    for body in ({"name": "renamed"}, {"region": None}, {"region": "eu-west-1"}):
        r = await client.patch(url, json=body, headers=auth(mgmt_key))
        assert r.status_code == 200 and r.json()["warnings"] == [], r.text


# --- misc ------------------------------------------------------------------------------------------------


async def test_openapi_lists_the_paths(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    methods = {path: set(ops) for path, ops in doc["paths"].items()}
    assert methods["/api/v1/keys"] >= {"get", "post"}
    assert methods["/api/v1/keys/{key_hash}"] >= {"get", "patch", "delete"}
    assert methods["/api/v1/keys/{key_hash}/rotate"] >= {"post"}
    assert methods["/api/v1/accounts"] >= {"get", "post"}
    assert methods["/api/v1/accounts/{account_id}"] >= {"get", "patch"}
    assert methods["/api/v1/groups"] >= {"get", "post"}
    assert methods["/api/v1/groups/{group_id}"] >= {"get", "patch", "delete"}
    params = {p["name"] for p in doc["paths"]["/api/v1/keys"]["get"]["parameters"]}
    assert {"page_size", "page_token", "offset"} <= params
    schemas = doc["components"]["schemas"]
    create_fields = set(schemas["KeyCreate"]["properties"])
    assert {
        "name",
        "limit",
        "limit_reset",
        "expires_at",
        "expires_in_days",
        "rate_limits",
        "allowed_models",
        "allowed_providers",
        "ip_allowlist",
        "ip_denylist",
        "region",
        "disabled",
    } <= create_fields


async def test_every_response_has_a_fresh_request_id(client: httpx.AsyncClient, mgmt_key: str) -> None:
    responses = [
        await client.get("/api/v1/keys", headers=auth(mgmt_key)),
        await client.get("/api/v1/keys"),
        await client.get("/api/v1/keys/nope", headers=auth(mgmt_key)),
        await client.put("/api/v1/keys", headers=auth(mgmt_key)),
        await client.get("/api/v1/nothing-here", headers=auth(mgmt_key)),
        await client.get("/openapi.json"),
        await client.post("/api/v1/keys", content=b" " * (2 * 1024 * 1024), headers=auth(mgmt_key)),
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 405, 404, 200, 413]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    assert_error(responses[3], 405, "METHOD_NOT_ALLOWED")


async def test_empty_lists_mean_no_restriction_and_are_shown_as_null(client: httpx.AsyncClient, mgmt_key: str) -> None:
    body = {"name": "lists", "allowed_models": [], "allowed_providers": [], "ip_allowlist": [], "ip_denylist": []}
    r = await client.post("/api/v1/keys", json=body, headers=auth(mgmt_key))
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert [data[f] for f in ("allowed_models", "allowed_providers", "ip_allowlist", "ip_denylist")] == [None] * 4
    # An unknown provider is accepted with a warning, as unknown models and regions are.
    r = await client.patch(f"/api/v1/keys/{data['hash']}", json={"allowed_providers": ["nope"]}, headers=auth(mgmt_key))
    assert r.status_code == 200 and r.json()["warnings"] == ["allowed_providers: 'nope' is not a configured provider"]
