"""/api/v1/accounts and /api/v1/groups (admin only), and inheritance of group defaults by keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from keyrelay.errors import ErrorType
from keyrelay.keys.policy import effective_policy
from keyrelay.store.records import KeyRecord
from keyrelay.testing.server import RunningServer

_ABSENT = object()
NO_RATES = {"rpm": None, "per_5h": None, "per_1d": None, "per_7d": None, "tpm": None, "max_concurrent": None}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def utc(value: Any) -> datetime:
    assert isinstance(value, str) and value.endswith(("Z", "+00:00")), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def assert_error(r: httpx.Response, status: int, error_type: str, param: object = _ABSENT) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == error_type, r.text
    assert err["code"] == ErrorType[error_type].code
    assert err["request_id"] == r.headers["x-request-id"]
    if param is not _ABSENT:
        assert err.get("param") == param, r.text


async def post(client: httpx.AsyncClient, key: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(url, json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def patch(client: httpx.AsyncClient, key: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.patch(url, json=body, headers=auth(key))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def test_non_admin_management_key_is_forbidden(client: httpx.AsyncClient, admin_key: str, mgmt_key: str) -> None:
    group = await post(client, admin_key, "/api/v1/groups", {"name": "g"})
    account = await post(client, admin_key, "/api/v1/accounts", {"email": "x@example.com"})
    calls = [
        ("GET", "/api/v1/accounts", None),
        ("POST", "/api/v1/accounts", {"email": "new@example.com"}),
        ("GET", f"/api/v1/accounts/{account['id']}", None),
        ("PATCH", f"/api/v1/accounts/{account['id']}", {"status": "inactive"}),
        ("GET", "/api/v1/groups", None),
        ("POST", "/api/v1/groups", {"name": "new"}),
        ("GET", f"/api/v1/groups/{group['id']}", None),
        ("PATCH", f"/api/v1/groups/{group['id']}", {"name": "renamed"}),
        ("DELETE", f"/api/v1/groups/{group['id']}", None),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, json=body, headers=auth(mgmt_key))
        assert_error(r, 403, "FORBIDDEN")
        assert_error(await client.request(method, url, json=body), 401, "INVALID_API_KEY")
    # Nothing changed.
    accounts = (await client.get("/api/v1/accounts", headers=auth(admin_key))).json()["data"]
    assert sorted(a["email"] for a in accounts) == ["admin@example.com", "alice@example.com", "x@example.com"]
    assert [a["status"] for a in accounts if a["email"] == "x@example.com"] == ["active"]
    groups = (await client.get("/api/v1/groups", headers=auth(admin_key))).json()["data"]
    assert [g["name"] for g in groups] == ["g"]


async def test_accounts(client: httpx.AsyncClient, admin_key: str) -> None:
    start = datetime.now(UTC)
    await post(client, admin_key, "/api/v1/groups", {"name": "team"})
    acct = await post(
        client, admin_key, "/api/v1/accounts", {"email": "bob@example.com", "group": "team", "balance": 25.5}
    )
    assert set(acct) >= {"id", "email", "status", "balance", "spent", "group", "created_at", "updated_at"}
    assert isinstance(acct["id"], int)
    assert (acct["email"], acct["status"], acct["balance"], acct["spent"], acct["group"]) == (
        "bob@example.com",
        "active",
        25.5,
        0,
        "team",
    )
    assert utc(acct["created_at"]) >= start - timedelta(seconds=1)
    unlimited = await post(client, admin_key, "/api/v1/accounts", {"email": "carol@example.com", "balance": None})
    assert unlimited["balance"] is None and unlimited["spent"] == 0 and unlimited["group"] is None
    inactive = await post(client, admin_key, "/api/v1/accounts", {"email": "dan@example.com", "status": "inactive"})
    assert inactive["status"] == "inactive" and inactive["balance"] is None
    zero = await post(client, admin_key, "/api/v1/accounts", {"email": "eve@example.com", "balance": 0})
    assert zero["balance"] == 0
    for email, balance in [("micro@example.com", 0.000001), ("rich@example.com", 1_000_000_000)]:
        assert (await post(client, admin_key, "/api/v1/accounts", {"email": email, "balance": balance}))[
            "balance"
        ] == balance

    for body, status, error_type, param in [
        ({"email": "bob@example.com"}, 409, "CONFLICT", "email"),
        ({"email": "BOB@Example.com"}, 409, "CONFLICT", "email"),
        ({"email": "not-an-email"}, 400, "INVALID_REQUEST", "email"),
        ({"email": "two@@example.com"}, 400, "INVALID_REQUEST", "email"),
        ({"email": "sp ace@example.com"}, 400, "INVALID_REQUEST", "email"),
        ({}, 400, "INVALID_REQUEST", "email"),
        ({"email": "f@example.com", "group": "ghost"}, 400, "INVALID_REQUEST", "group"),
        ({"email": "f@example.com", "balance": -1}, 400, "INVALID_REQUEST", "balance"),
        ({"email": "f@example.com", "balance": 0.0000001}, 400, "INVALID_REQUEST", "balance"),
        ({"email": "f@example.com", "status": "banned"}, 400, "INVALID_REQUEST", "status"),
        ({"email": "f@example.com", "role": "admin"}, 400, "INVALID_REQUEST", "role"),
    ]:
        r = await client.post("/api/v1/accounts", json=body, headers=auth(admin_key))
        assert_error(r, status, error_type, param)
        if param == "email" and status == 400 and body:
            # Says what an email must look like, not which regular expression it failed.
            message = r.json()["error"]["message"]
            assert "name@example.com" in message and "pattern" not in message and "\\s" not in message, message

    r = await client.get("/api/v1/accounts", headers=auth(admin_key))
    emails = [a["email"] for a in r.json()["data"]]
    assert emails == [
        "admin@example.com",
        "bob@example.com",
        "carol@example.com",
        "dan@example.com",
        "eve@example.com",
        "micro@example.com",
        "rich@example.com",
    ]
    r = await client.get("/api/v1/accounts", params={"page_size": 2, "offset": 1}, headers=auth(admin_key))
    assert [a["email"] for a in r.json()["data"]] == ["bob@example.com", "carol@example.com"]
    assert_error(await client.get("/api/v1/accounts?page_size=0", headers=auth(admin_key)), 400, "INVALID_REQUEST")

    url = f"/api/v1/accounts/{acct['id']}"
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == acct
    changed = await patch(client, admin_key, url, {"balance": 3.25, "status": "inactive"})
    assert (changed["balance"], changed["spent"], changed["status"], changed["group"]) == (3.25, 0, "inactive", "team")
    assert utc(changed["updated_at"]) >= utc(acct["updated_at"])
    changed = await patch(client, admin_key, url, {"balance": None, "group": None, "status": "active"})
    assert (changed["balance"], changed["spent"], changed["status"], changed["group"]) == (None, 0, "active", None)
    assert (await patch(client, admin_key, url, {"group": "team"}))["group"] == "team"
    for body, param in [
        ({"status": None}, "status"),
        ({"group": "ghost"}, "group"),
        ({"balance": -3}, "balance"),
        ({"email": "new@example.com"}, "email"),
    ]:
        assert_error(await client.patch(url, json=body, headers=auth(admin_key)), 400, "INVALID_REQUEST", param)
    assert (await client.get(url, headers=auth(admin_key))).json()["data"]["group"] == "team"
    for missing in ("/api/v1/accounts/9999",):
        assert_error(await client.get(missing, headers=auth(admin_key)), 404, "NOT_FOUND")
        r = await client.patch(missing, json={"status": "inactive"}, headers=auth(admin_key))
        assert_error(r, 404, "NOT_FOUND")
    assert_error(
        await client.get("/api/v1/accounts/abc", headers=auth(admin_key)), 400, "INVALID_REQUEST", "account_id"
    )


async def test_groups(client: httpx.AsyncClient, admin_key: str) -> None:
    body = {
        "name": "pro",
        "description": "paying customers",
        "price_multiplier": 1.25,
        "default_limit": 50,
        "default_limit_reset": "monthly",
        "default_rate_limits": {"rpm": 60, "per_5h": 500, "per_1d": 2000, "per_7d": 9000},
        "allowed_models": ["gpt-4o", "gpt-4o"],
        "allowed_providers": ["openai"],
    }
    pro = await post(client, admin_key, "/api/v1/groups", body)
    assert isinstance(pro["id"], int)
    assert pro["name"] == "pro" and pro["description"] == "paying customers"
    assert pro["price_multiplier"] == 1.25
    assert pro["default_limit"] == 50 and pro["default_limit_reset"] == "monthly"
    assert pro["default_rate_limits"] == {
        "rpm": 60,
        "per_5h": 500,
        "per_1d": 2000,
        "per_7d": 9000,
        "tpm": None,
        "max_concurrent": None,
    }
    assert pro["allowed_models"] == ["gpt-4o"] and pro["allowed_providers"] == ["openai"]
    assert (pro["quota"], pro["quota_reset"], pro["quota_used"]) == (None, None, 0)
    utc(pro["created_at"])
    basic = await post(client, admin_key, "/api/v1/groups", {"name": "basic"})
    assert basic["price_multiplier"] == 1 and basic["default_limit"] is None
    assert basic["default_rate_limits"] == NO_RATES
    assert (basic["quota"], basic["quota_reset"], basic["quota_used"]) == (None, None, 0)

    for bad, status, error_type, param in [
        ({"name": "pro"}, 409, "CONFLICT", "name"),
        ({"name": ""}, 400, "INVALID_REQUEST", "name"),
        ({"name": "g" * 65}, 400, "INVALID_REQUEST", "name"),
        ({"name": "x", "price_multiplier": 0}, 400, "INVALID_REQUEST", "price_multiplier"),
        ({"name": "x", "price_multiplier": -1}, 400, "INVALID_REQUEST", "price_multiplier"),
        ({"name": "x", "price_multiplier": 1000.5}, 400, "INVALID_REQUEST", "price_multiplier"),
        ({"name": "x", "price_multiplier": 1.0000001}, 400, "INVALID_REQUEST", "price_multiplier"),
        ({"name": "x", "price_multiplier": "cheap"}, 400, "INVALID_REQUEST", "price_multiplier"),
        ({"name": "x", "default_limit": -1}, 400, "INVALID_REQUEST", "default_limit"),
        ({"name": "x", "default_limit": 0.0000001}, 400, "INVALID_REQUEST", "default_limit"),
        ({"name": "x", "default_limit_reset": "hourly"}, 400, "INVALID_REQUEST", "default_limit_reset"),
        ({"name": "x", "default_rate_limits": {"rpm": -1}}, 400, "INVALID_REQUEST", "default_rate_limits.rpm"),
        ({"name": "x", "default_rate_limits": {"qps": 1}}, 400, "INVALID_REQUEST", "default_rate_limits.qps"),
        ({"name": "x", "description": "d" * 501}, 400, "INVALID_REQUEST", "description"),
    ]:
        r = await client.post("/api/v1/groups", json=bad, headers=auth(admin_key))
        assert_error(r, status, error_type, param)
    assert (await post(client, admin_key, "/api/v1/groups", {"name": "max", "price_multiplier": 1000}))[
        "price_multiplier"
    ] == 1000
    assert (await post(client, admin_key, "/api/v1/groups", {"name": "min", "price_multiplier": 0.000001}))[
        "price_multiplier"
    ] == 0.000001

    r = await client.get("/api/v1/groups", headers=auth(admin_key))
    assert [g["name"] for g in r.json()["data"]] == ["basic", "max", "min", "pro"]
    url = f"/api/v1/groups/{pro['id']}"
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == pro

    changed = await patch(client, admin_key, url, {"default_rate_limits": {"rpm": 120}, "price_multiplier": 2})
    assert changed["default_rate_limits"] == {
        "rpm": 120,
        "per_5h": 500,
        "per_1d": 2000,
        "per_7d": 9000,
        "tpm": None,
        "max_concurrent": None,
    }
    assert changed["price_multiplier"] == 2 and changed["default_limit"] == 50
    changed = await patch(client, admin_key, url, {"default_rate_limits": None, "allowed_models": None})
    assert changed["default_rate_limits"] == NO_RATES
    assert changed["allowed_models"] is None and changed["allowed_providers"] == ["openai"]
    assert (await patch(client, admin_key, url, {"name": "premium"}))["name"] == "premium"
    for bad, status, error_type, param in [
        ({"name": "basic"}, 409, "CONFLICT", "name"),
        ({"name": None}, 400, "INVALID_REQUEST", "name"),
        ({"price_multiplier": 0}, 400, "INVALID_REQUEST", "price_multiplier"),
    ]:
        assert_error(await client.patch(url, json=bad, headers=auth(admin_key)), status, error_type, param)
    assert (await client.get(url, headers=auth(admin_key))).json()["data"]["name"] == "premium"

    # A group with members cannot be deleted; an empty one can, once.
    await post(client, admin_key, "/api/v1/accounts", {"email": "m@example.com", "group": "premium"})
    assert_error(await client.delete(url, headers=auth(admin_key)), 409, "CONFLICT")
    assert (await client.get(url, headers=auth(admin_key))).status_code == 200
    basic_url = f"/api/v1/groups/{basic['id']}"
    r = await client.delete(basic_url, headers=auth(admin_key))
    assert r.status_code == 200 and r.json() == {"data": {"id": basic["id"], "deleted": True}}
    assert_error(await client.get(basic_url, headers=auth(admin_key)), 404, "NOT_FOUND")
    assert_error(await client.delete(basic_url, headers=auth(admin_key)), 404, "NOT_FOUND")
    assert_error(await client.patch(basic_url, json={"name": "z"}, headers=auth(admin_key)), 404, "NOT_FOUND")
    r = await client.post(
        "/api/v1/accounts", json={"email": "n@example.com", "group": "basic"}, headers=auth(admin_key)
    )
    assert_error(r, 400, "INVALID_REQUEST", "group")


async def _key_record(server: RunningServer, key_hash: str) -> KeyRecord:
    record = await server.runtime.keys.get(key_hash=key_hash)
    assert record is not None
    return record


async def test_keys_inherit_group_defaults(client: httpx.AsyncClient, server: RunningServer, admin_key: str) -> None:
    rt = server.runtime
    group = await post(
        client,
        admin_key,
        "/api/v1/groups",
        {
            "name": "team",
            "price_multiplier": 1.5,
            "default_limit": 25,
            "default_limit_reset": "weekly",
            "default_rate_limits": {"rpm": 60, "per_1d": 1000},
            "allowed_models": ["gpt-4o"],
            "allowed_providers": ["openai"],
        },
    )
    account = await post(client, admin_key, "/api/v1/accounts", {"email": "t@example.com", "group": "team"})

    async def make(**body: Any) -> tuple[str, str]:
        r = await client.post("/api/v1/keys", json={"account": "t@example.com", **body}, headers=auth(admin_key))
        assert r.status_code == 201, r.text
        assert r.json()["data"]["account_id"] == account["id"]
        return r.json()["data"]["hash"], r.json()["key"]

    plain_hash, plain_key = await make(name="inherits")
    own_hash, _ = await make(
        name="own",
        limit=3,
        limit_reset="daily",
        rate_limits={"rpm": 5, "per_1d": 0},
        allowed_models=["gpt-4o-mini"],
        allowed_providers=["azure"],
    )
    group_record = await rt.groups.get(group_id=group["id"])
    assert group_record is not None
    acct_record = await rt.accounts.get(account_id=account["id"])
    assert acct_record is not None and acct_record.group_id == group_record.id

    inherited = effective_policy(await _key_record(server, plain_hash), group_record)
    assert inherited.rpm == 60 and inherited.per_1d == 1000
    assert inherited.per_5h is None and inherited.per_7d is None
    assert inherited.tpm is None and inherited.max_concurrent is None
    assert (inherited.limit_micros, inherited.limit_reset) == (25_000_000, "weekly")
    assert inherited.allowed_models == frozenset({"gpt-4o"})
    assert inherited.allowed_providers == frozenset({"openai"})
    assert inherited.price_multiplier_ppm == 1_500_000

    own = effective_policy(await _key_record(server, own_hash), group_record)
    assert own.rpm == 5
    assert own.per_1d is None  # 0 on the key: no limit, even though the group has one
    assert (own.limit_micros, own.limit_reset) == (3_000_000, "daily")
    # The group's whitelists are ceilings: a key may narrow them, never widen them.
    assert own.allowed_models == frozenset({"gpt-4o-mini"}) and own.model_ceiling == frozenset({"gpt-4o"})
    assert own.allowed_providers == frozenset()  # provider lists are intersected
    narrow_hash, _ = await make(name="narrow", allowed_models=["gpt-4o", "gpt-4o-mini"], allowed_providers=[])
    narrow = effective_policy(await _key_record(server, narrow_hash), group_record)
    assert narrow.allowed_models == frozenset({"gpt-4o", "gpt-4o-mini"})
    assert narrow.model_ceiling == frozenset({"gpt-4o"})
    assert narrow.allowed_providers == frozenset({"openai"})  # [] inherits the group's list
    assert own.price_multiplier_ppm == 1_500_000

    # The key's own view shows its own (empty) fields, not the inherited values.
    r = await client.get(f"/api/v1/keys/{plain_hash}", headers=auth(admin_key))
    assert r.json()["data"]["rate_limits"] == NO_RATES
    assert r.json()["data"]["limit"] is None

    # The live principal follows changes to the group and the account at once.
    secret = hashlib.sha256(plain_key.encode()).hexdigest()
    principal = await rt.cache.get(secret)
    assert principal is not None and principal.policy.rpm == 60
    await patch(client, admin_key, f"/api/v1/groups/{group['id']}", {"default_rate_limits": {"rpm": 120}})
    principal = await rt.cache.get(secret)
    assert principal is not None and principal.policy.rpm == 120 and principal.policy.per_1d == 1000
    await patch(client, admin_key, f"/api/v1/accounts/{account['id']}", {"group": None})
    principal = await rt.cache.get(secret)
    assert principal is not None and principal.group is None
    assert principal.policy.rpm is None and principal.policy.limit_micros is None
    assert principal.policy.price_multiplier_ppm == 1_000_000


async def test_account_status_change_applies_to_its_keys_at_once(
    client: httpx.AsyncClient, server: RunningServer, admin_key: str, mgmt_key: str
) -> None:
    assert (await client.get("/api/v1/keys", headers=auth(mgmt_key))).status_code == 200
    alice = await server.runtime.accounts.get_by_email(email="alice@example.com")
    assert alice is not None
    url = f"/api/v1/accounts/{alice.id}"
    assert (await patch(client, admin_key, url, {"status": "inactive"}))["status"] == "inactive"
    assert_error(await client.get("/api/v1/keys", headers=auth(mgmt_key)), 403, "USER_INACTIVE")
    await patch(client, admin_key, url, {"status": "active"})
    assert (await client.get("/api/v1/keys", headers=auth(mgmt_key))).status_code == 200


async def test_group_quota_fields(client: httpx.AsyncClient, admin_key: str) -> None:
    made = await post(client, admin_key, "/api/v1/groups", {"name": "capped", "quota": 12.5, "quota_reset": "monthly"})
    assert (made["quota"], made["quota_reset"], made["quota_used"]) == (12.5, "monthly", 0)
    url = f"/api/v1/groups/{made['id']}"
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == made
    assert (await client.get("/api/v1/groups", headers=auth(admin_key))).json()["data"] == [made]
    for quota, reset in [(7.25, "daily"), (0.000001, "weekly"), (1_000_000_000, None), (0, None)]:
        name = f"q-{reset}-{quota}"
        out = await post(client, admin_key, "/api/v1/groups", {"name": name, "quota": quota, "quota_reset": reset})
        assert (out["quota"], out["quota_reset"], out["quota_used"]) == (float(quota), reset, 0), name

    # PATCH changes only the quota fields it names.
    changed = await patch(client, admin_key, url, {"quota": 30})
    assert (changed["quota"], changed["quota_reset"], changed["quota_used"]) == (30, "monthly", 0)
    changed = await patch(client, admin_key, url, {"quota_reset": "weekly"})
    assert (changed["quota"], changed["quota_reset"]) == (30, "weekly")
    changed = await patch(client, admin_key, url, {"quota_reset": None})
    assert (changed["quota"], changed["quota_reset"]) == (30, None)
    changed = await patch(client, admin_key, url, {"quota": 0.123456, "quota_reset": "daily"})
    assert (changed["quota"], changed["quota_reset"]) == (0.123456, "daily")
    changed = await patch(client, admin_key, url, {"name": "still-capped", "description": "d"})
    assert (changed["quota"], changed["quota_reset"], changed["quota_used"]) == (0.123456, "daily", 0)
    changed = await patch(client, admin_key, url, {"quota": None})
    assert (changed["quota"], changed["quota_reset"], changed["quota_used"]) == (None, "daily", 0)
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == changed

    bad_values: list[tuple[dict[str, Any], str]] = [
        ({"quota": -1}, "quota"),
        ({"quota": -0.000001}, "quota"),
        ({"quota": 1.0000001}, "quota"),
        ({"quota": 0.1234567}, "quota"),
        ({"quota": 1_000_000_000.000001}, "quota"),
        ({"quota": "lots"}, "quota"),
        ({"quota": "7.25"}, "quota"),  # JSON types are strict: a numeric string is not a number
        ({"quota": True}, "quota"),
        ({"quota_reset": "hourly"}, "quota_reset"),
        ({"quota_reset": "Daily"}, "quota_reset"),
        ({"quota_reset": ""}, "quota_reset"),
        ({"quota_reset": 1}, "quota_reset"),
        ({"quota_used": 5}, "quota_used"),  # read-only
    ]
    for bad, param in bad_values:
        r = await client.post("/api/v1/groups", json={"name": "bad", **bad}, headers=auth(admin_key))
        assert_error(r, 400, "INVALID_REQUEST", param)
        assert param in r.json()["error"]["message"], r.text
        r = await client.patch(url, json={"description": "changed", **bad}, headers=auth(admin_key))
        assert_error(r, 400, "INVALID_REQUEST", param)
    # Nothing was created, and the refused patches changed nothing (not even the valid field beside the bad one).
    names = [g["name"] for g in (await client.get("/api/v1/groups", headers=auth(admin_key))).json()["data"]]
    assert "bad" not in names
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == changed


async def test_group_tpm_and_max_concurrent_defaults(
    client: httpx.AsyncClient, server: RunningServer, admin_key: str
) -> None:
    rates = {"rpm": 60, "per_5h": 500, "per_1d": 2000, "per_7d": 9000, "tpm": 40_000, "max_concurrent": 4}
    group = await post(client, admin_key, "/api/v1/groups", {"name": "t", "default_rate_limits": rates})
    assert group["default_rate_limits"] == rates
    url = f"/api/v1/groups/{group['id']}"
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == group

    # Patching one window keeps the others.
    changed = await patch(client, admin_key, url, {"default_rate_limits": {"tpm": 1000}})
    assert changed["default_rate_limits"] == {**rates, "tpm": 1000}
    changed = await patch(client, admin_key, url, {"default_rate_limits": {"max_concurrent": 0, "rpm": None}})
    assert changed["default_rate_limits"] == {**rates, "tpm": 1000, "max_concurrent": 0, "rpm": None}
    changed = await patch(client, admin_key, url, {"default_rate_limits": {}})
    assert changed["default_rate_limits"] == {**rates, "tpm": 1000, "max_concurrent": 0, "rpm": None}
    changed = await patch(
        client, admin_key, url, {"default_rate_limits": {"tpm": 1_000_000_000, "max_concurrent": 100_000}}
    )
    assert changed["default_rate_limits"] == {**rates, "tpm": 1_000_000_000, "max_concurrent": 100_000, "rpm": None}

    for bad, param in [
        ({"tpm": -1}, "default_rate_limits.tpm"),
        ({"tpm": 1_000_000_001}, "default_rate_limits.tpm"),
        ({"tpm": 1.5}, "default_rate_limits.tpm"),
        ({"tpm": "fast"}, "default_rate_limits.tpm"),
        ({"max_concurrent": -1}, "default_rate_limits.max_concurrent"),
        ({"max_concurrent": 100_001}, "default_rate_limits.max_concurrent"),
        ({"max_concurrent": 2.5}, "default_rate_limits.max_concurrent"),
        ({"tpm": 5, "max_concurrent": -3}, "default_rate_limits.max_concurrent"),
    ]:
        r = await client.post(
            "/api/v1/groups", json={"name": "bad", "default_rate_limits": bad}, headers=auth(admin_key)
        )
        assert_error(r, 400, "INVALID_REQUEST", param)
        r = await client.patch(url, json={"default_rate_limits": bad}, headers=auth(admin_key))
        assert_error(r, 400, "INVALID_REQUEST", param)
    assert (await client.get(url, headers=auth(admin_key))).json()["data"] == changed

    # Keys inherit both from the group; a key's own value (0 = none) wins.
    await patch(client, admin_key, url, {"default_rate_limits": {"tpm": 40_000, "max_concurrent": 4}})
    await post(client, admin_key, "/api/v1/accounts", {"email": "t@example.com", "group": "t"})

    async def key_policy(**body: Any) -> Any:
        data = await post(client, admin_key, "/api/v1/keys", {"account": "t@example.com", **body})
        record = await _key_record(server, data["hash"])
        group_record = await server.runtime.groups.get(group_id=group["id"])
        return data["rate_limits"], effective_policy(record, group_record)

    shown, inherited = await key_policy(name="inherits")
    assert shown == NO_RATES  # the key's own view: nothing set on the key itself
    assert (inherited.tpm, inherited.max_concurrent, inherited.per_5h) == (40_000, 4, 500)
    shown, own = await key_policy(name="own", rate_limits={"tpm": 0, "max_concurrent": 2})
    assert shown == {**NO_RATES, "tpm": 0, "max_concurrent": 2}
    assert (own.tpm, own.max_concurrent, own.per_5h) == (None, 2, 500)
