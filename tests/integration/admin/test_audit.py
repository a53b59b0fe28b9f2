"""The audit log through GET /api/v1/audit, on SQLite and PostgreSQL.

Every change to keys, management keys, accounts and groups is recorded with who made it (the management key's
name and display form, or the CLI), from which address, and the old and new values of what changed; never a
secret. Admins read every entry, other management keys only their own account's.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from keyrelay.config import Settings
from keyrelay.keys.format import display_form
from keyrelay.services.audit import SECRET_FIELDS
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import TEST_ACTOR, make_management_key
from tests.integration.test_cli import cli, ok

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PROXIED = "203.0.113.7"  # the client address the trusted proxy (the test client on loopback) forwards


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Loopback is a trusted proxy, so X-Forwarded-For names the client."""
    return Settings(
        database_url=database_url, cache_poll_interval_s=0.2, log_level="warning", trusted_proxies="127.0.0.1/32"
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def server(settings: Settings, clock: FakeClock) -> AsyncIterator[RunningServer]:
    async with running_server(settings, clock=clock) as srv:
        yield srv


@pytest.fixture
async def bob_key(server: RunningServer) -> str:
    """A non-admin management key of bob@example.com."""
    return await make_management_key(server, "bob@example.com")


def auth(key: str, *, forwarded_for: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return headers


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def label(name: str, plaintext: str) -> str:
    """The actor label of a management key: its name and display form."""
    return f"{name} ({display_form(plaintext)})"


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def call(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], **kw: Any) -> Any:
    r = await client.request(method, url, headers=headers, **kw)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def audit(client: httpx.AsyncClient, key: str, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/v1/audit", params=params, headers=auth(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"data", "next_page_token"}
    return body


async def entries(client: httpx.AsyncClient, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry visible to ``key`` under the filters, oldest first (one page of up to 500)."""
    body = await audit(client, key, limit=500, **params)
    assert body["next_page_token"] is None
    return list(reversed(body["data"]))


def assert_bad(r: httpx.Response, field: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "INVALID_REQUEST" and err["param"] == field, r.text


async def test_each_change_through_the_api_is_recorded_with_actor_ip_and_old_and_new_values(
    server: RunningServer, client: httpx.AsyncClient, clock: FakeClock, admin_key: str
) -> None:
    admin = auth(admin_key, forwarded_for=PROXIED)
    steps: list[datetime] = []

    async def act(method: str, url: str, **kw: Any) -> Any:
        clock.advance(60)
        steps.append(clock.now_utc())
        return await call(client, method, url, admin, **kw)

    group = (await act("POST", "/api/v1/groups", json={"name": "team"}))["data"]
    account = (await act("POST", "/api/v1/accounts", json={"email": "carol@example.com", "group": "team"}))["data"]
    await act(
        "PATCH", f"/api/v1/groups/{group['id']}", json={"description": "the team", "default_rate_limits": {"rpm": 60}}
    )
    created = await act("POST", "/api/v1/keys", json={"name": "carol-key", "account": "carol@example.com"})
    key_hash = created["data"]["hash"]
    await act("PATCH", f"/api/v1/keys/{key_hash}", json={"disabled": True, "limit": 5})
    rotated = await act("POST", f"/api/v1/keys/{key_hash}/rotate", json={"grace_seconds": 60})
    await act("DELETE", f"/api/v1/keys/{key_hash}")
    await act("PATCH", f"/api/v1/accounts/{account['id']}", json={"balance": 10, "status": "inactive"})
    old = (await act("POST", "/api/v1/groups", json={"name": "old", "quota": 2}))["data"]
    await act("DELETE", f"/api/v1/groups/{old['id']}")

    admin_account = await server.runtime.accounts.get_by_email(email="admin@example.com")
    assert admin_account is not None
    who = label("mgmt-admin@example.com", admin_key)
    log = await entries(client, admin_key, actor=who)
    assert [e["action"] for e in log] == [
        "group.create",
        "account.create",
        "group.update",
        "key.create",
        "key.update",
        "key.rotate",
        "key.revoke",
        "account.update",
        "group.create",
        "group.delete",
    ]
    for entry, at in zip(log, steps, strict=True):
        assert entry["actor_type"] == "management_key" and entry["actor"] == who
        assert entry["actor_account_id"] == admin_account.id
        assert entry["ip"] == PROXIED
        assert datetime.fromisoformat(entry["created_at"]) == at
    by_action = {(e["action"], e["target_id"]): e for e in log}
    team, carol = str(group["id"]), str(account["id"])

    made_group = by_action["group.create", team]
    assert (made_group["target_type"], made_group["target_account_id"]) == ("group", None)
    assert made_group["changes"]["name"] == "team" and made_group["changes"]["price_multiplier_ppm"] == 1_000_000
    made_account = by_action["account.create", carol]
    assert (made_account["target_type"], made_account["target_account_id"]) == ("account", account["id"])
    assert made_account["changes"] == {
        "email": "carol@example.com",
        "status": "active",
        "balance_micros": None,
        "group_id": group["id"],
    }
    assert by_action["group.update", team]["changes"] == {"description": [None, "the team"], "default_rpm": [None, 60]}

    made_key = by_action["key.create", key_hash]
    assert (made_key["target_type"], made_key["target_account_id"]) == ("key", account["id"])
    assert made_key["changes"]["name"] == "carol-key"
    assert made_key["changes"]["display"] == created["data"]["label"]
    assert made_key["changes"]["key_type"] == "regular" and made_key["changes"]["disabled"] is False
    assert by_action["key.update", key_hash]["changes"] == {
        "disabled": [False, True],
        "limit_micros": [None, 5_000_000],
    }
    assert by_action["key.rotate", key_hash]["changes"] == {
        "display": [created["data"]["label"], rotated["data"]["label"]],
        "prev_secret_expires_at": [None, iso(steps[5] + timedelta(seconds=60))],
    }
    assert by_action["key.revoke", key_hash]["changes"] == {
        "deleted_at": [None, iso(steps[6])],
        "prev_secret_expires_at": [iso(steps[5] + timedelta(seconds=60)), None],
    }
    assert by_action["account.update", carol]["changes"] == {
        "status": ["active", "inactive"],
        "balance_micros": [None, 10_000_000],
    }
    deleted = by_action["group.delete", str(old["id"])]
    assert deleted["changes"]["name"] == "old" and deleted["changes"]["quota_micros"] == 2_000_000


async def test_a_key_that_stops_working_is_explained_by_its_history(
    client: httpx.AsyncClient, clock: FakeClock, admin_key: str, mgmt_key: str
) -> None:
    made = await call(client, "POST", "/api/v1/keys", auth(mgmt_key), json={"name": "ci"})
    plaintext, key_hash = made["key"], made["data"]["hash"]
    assert (await client.get("/v1/models", headers=auth(plaintext))).status_code == 200
    clock.advance(5)
    await call(client, "PATCH", f"/api/v1/keys/{key_hash}", auth(admin_key), json={"disabled": True})
    assert (await client.get("/v1/models", headers=auth(plaintext))).status_code == 401
    (latest,) = (await audit(client, mgmt_key, target_id=key_hash, limit=1))["data"]
    assert latest["action"] == "key.update" and latest["changes"] == {"disabled": [False, True]}
    assert latest["actor"] == label("mgmt-admin@example.com", admin_key) and latest["ip"] == "127.0.0.1"
    assert latest["created_at"] == (START + timedelta(seconds=5)).isoformat().replace("+00:00", "Z")


async def test_no_secret_appears_in_any_entry(
    server: RunningServer, client: httpx.AsyncClient, admin_key: str, mgmt_key: str
) -> None:
    made = await call(client, "POST", "/api/v1/keys", auth(mgmt_key), json={"name": "k"})
    first, key_hash = made["key"], made["data"]["hash"]
    second = (
        await call(client, "POST", f"/api/v1/keys/{key_hash}/rotate", auth(mgmt_key), json={"grace_seconds": 300})
    )["key"]
    third = (
        await call(client, "POST", f"/api/v1/keys/{key_hash}/rotate", auth(mgmt_key), json={"grace_seconds": 300})
    )["key"]
    record = await server.runtime.keys.get(key_hash=key_hash)
    assert record is not None and record.secret_hash == sha256(third) and record.prev_secret_hash == sha256(second)
    alice = await server.runtime.accounts.get_by_email(email="alice@example.com")
    assert alice is not None
    password = "correct horse battery staple"
    await server.runtime.signin.set_password(account_id=alice.id, password=password, verified=True, actor=TEST_ACTOR)
    await server.runtime.signin.set_admin(account_id=alice.id, admin=True, actor=TEST_ACTOR)

    r = await client.get("/api/v1/audit", params={"limit": 500}, headers=auth(admin_key))
    assert r.status_code == 200
    text = r.text
    # The key's id (``hash``, the SHA-256 of its first secret) is public: the API shows it. Every later
    # secret, its hash and the password (or its hash) are not.
    for secret in (first, second, third, admin_key, mgmt_key, sha256(second), sha256(third), password, "$argon2"):
        assert secret not in text
    assert "kr_live_" not in text.replace(display_form(first), "").replace(display_form(second), "").replace(
        display_form(third), ""
    )
    log = r.json()["data"]
    assert all(not SECRET_FIELDS & set(e["changes"]) for e in log)
    rotations = [e for e in log if e["action"] == "key.rotate"]
    # The second rotation at the same (fake) time leaves the grace end as it was: only the display changes.
    assert [set(e["changes"]) for e in rotations] == [{"display"}, {"display", "prev_secret_expires_at"}]
    by_action = {e["action"]: e for e in log if e["target_type"] == "account" and e["target_id"] == str(alice.id)}
    assert set(by_action["account.set_password"]["changes"]) <= {"email_verified_at"}
    assert by_action["account.update"]["changes"] == {"is_admin": [False, True]}
    assert by_action["account.update"]["actor"] == "tests" and by_action["account.update"]["actor_type"] == "system"


async def test_members_see_only_their_own_accounts_entries_and_admins_see_all(
    server: RunningServer, client: httpx.AsyncClient, admin_key: str, mgmt_key: str, bob_key: str
) -> None:
    alice_key_hash = (await call(client, "POST", "/api/v1/keys", auth(mgmt_key), json={"name": "a"}))["data"]["hash"]
    bob_key_hash = (await call(client, "POST", "/api/v1/keys", auth(bob_key), json={"name": "b"}))["data"]["hash"]
    await call(client, "POST", "/api/v1/groups", auth(admin_key), json={"name": "team"})
    alice = await server.runtime.accounts.get_by_email(email="alice@example.com")
    bob = await server.runtime.accounts.get_by_email(email="bob@example.com")
    assert alice is not None and bob is not None
    await call(client, "PATCH", f"/api/v1/accounts/{alice.id}", auth(admin_key), json={"balance": 3})

    seen_by_alice = await entries(client, mgmt_key)
    assert seen_by_alice and all(e["target_account_id"] == alice.id for e in seen_by_alice)
    assert {(e["action"], e["target_id"]) for e in seen_by_alice} == {
        ("account.create", str(alice.id)),
        ("management_key.create", sha256(mgmt_key)),
        ("key.create", alice_key_hash),
        ("account.update", str(alice.id)),
    }
    # The admin's change to her account names the admin's key.
    (topped_up,) = [e for e in seen_by_alice if e["action"] == "account.update"]
    assert topped_up["actor"] == label("mgmt-admin@example.com", admin_key)
    assert (await audit(client, mgmt_key, target_id=bob_key_hash))["data"] == []
    assert (await audit(client, mgmt_key, target_type="group"))["data"] == []

    seen_by_bob = await entries(client, bob_key)
    assert {e["target_id"] for e in seen_by_bob} == {str(bob.id), sha256(bob_key), bob_key_hash}

    seen_by_admin = await entries(client, admin_key)
    assert {e["target_id"] for e in seen_by_bob + seen_by_alice} < {e["target_id"] for e in seen_by_admin}
    assert any(e["action"] == "group.create" for e in seen_by_admin)


async def test_keyset_pages_cover_every_entry_once(client: httpx.AsyncClient, admin_key: str) -> None:
    for n in range(8):
        await call(client, "POST", "/api/v1/keys", auth(admin_key), json={"name": f"k{n}"})
    everything = (await audit(client, admin_key, limit=500))["data"]
    ids = [e["id"] for e in everything]
    assert len(ids) >= 10 and ids == sorted(ids, reverse=True)

    for params in ({}, {"target_type": "key"}):
        wanted = [e["id"] for e in everything if all(e[k] == v for k, v in params.items())]
        pages: list[list[int]] = []
        token: str | None = None
        while True:
            body = await audit(client, admin_key, limit=3, **params, **({"page_token": token} if token else {}))
            pages.append([e["id"] for e in body["data"]])
            token = body["next_page_token"]
            if token is None:
                break
        assert [i for page in pages for i in page] == wanted
        assert all(len(page) == 3 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 3


async def test_filters_by_actor_target_and_time(
    server: RunningServer, client: httpx.AsyncClient, clock: FakeClock, admin_key: str, mgmt_key: str
) -> None:
    times = []
    hashes = []
    for n in range(4):
        clock.advance(3600)
        times.append(clock.now_utc())
        made = await call(client, "POST", "/api/v1/keys", auth(mgmt_key), json={"name": f"k{n}"})
        hashes.append(made["data"]["hash"])
    clock.advance(60)
    await call(client, "PATCH", f"/api/v1/keys/{hashes[0]}", auth(admin_key), json={"name": "renamed"})

    alice_label = label("mgmt-alice@example.com", mgmt_key)
    by_alice = await entries(client, admin_key, actor=alice_label)
    assert [e["target_id"] for e in by_alice] == hashes
    by_tests = await entries(client, admin_key, actor="tests")
    assert by_tests and all(e["actor_type"] == "system" for e in by_tests)
    assert await entries(client, admin_key, actor="nobody") == []

    of_key = await entries(client, admin_key, target_type="key", target_id=hashes[0])
    assert [e["action"] for e in of_key] == ["key.create", "key.update"]
    assert of_key[1]["changes"] == {"name": ["k0", "renamed"]}
    accounts = await entries(client, admin_key, target_type="account")
    assert accounts and all(e["target_type"] == "account" for e in accounts)

    # since is inclusive, until exclusive; a time without an offset is UTC.
    window = await entries(
        client, admin_key, since=times[1].isoformat(), until=times[3].replace(tzinfo=None).isoformat()
    )
    assert [e["target_id"] for e in window] == hashes[1:3]
    since_z = await entries(client, admin_key, since=times[3].isoformat().replace("+00:00", "Z"), actor=alice_label)
    assert [e["target_id"] for e in since_z] == hashes[3:]


async def test_bad_query_parameters_are_a_400_naming_the_field(
    client: httpx.AsyncClient, admin_key: str, mgmt_key: str
) -> None:
    def token(data: object) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")

    cases: list[tuple[dict[str, str], str]] = [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.0"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2030-13-01T00:00:00Z"}, "until"),
        ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "until"),
        ({"since": "2030-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "until"),
        ({"page_token": "not a token"}, "page_token"),
        ({"page_token": token({"i": -1})}, "page_token"),
        ({"page_token": token({"i": True})}, "page_token"),
        ({"page_token": token({"i": 2**63})}, "page_token"),
        ({"page_token": token({"c": "2030-01-01T00:00:00Z", "h": "0" * 64})}, "page_token"),
        ({"target_type": "user"}, "target_type"),
        ({"actor": ""}, "actor"),
        ({"actor": "a\x00b"}, "actor"),
        ({"target_id": "x" * 65}, "target_id"),
    ]
    for params, field in cases:
        for key in (admin_key, mgmt_key):
            assert_bad(await client.get("/api/v1/audit", params=params, headers=auth(key)), field)
    r = await client.get("/api/v1/audit")
    assert r.status_code == 401 and r.json()["error"]["type"] == "INVALID_API_KEY"


async def test_cli_changes_are_recorded_as_the_cli(
    database_url: str, client: httpx.AsyncClient, admin_key: str, tmp_path: Path
) -> None:
    ok(await cli(database_url, "admin", "create-account", "cli@example.com", cwd=tmp_path))
    plaintext = ok(
        await cli(database_url, "keys", "create", "--account", "cli@example.com", "--name", "c", cwd=tmp_path)
    )
    ok(await cli(database_url, "keys", "disable", sha256(plaintext), cwd=tmp_path))

    log = await entries(client, admin_key, actor="cli")
    assert [(e["action"], e["target_type"]) for e in log] == [
        ("account.create", "account"),
        ("key.create", "key"),
        ("key.update", "key"),
    ]
    assert all(e["actor_type"] == "cli" and e["ip"] is None and e["actor_account_id"] is None for e in log)
    assert log[2]["target_id"] == sha256(plaintext) and log[2]["changes"] == {"disabled": [False, True]}
