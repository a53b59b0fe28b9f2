"""The edges of the management API, through real HTTP on SQLite and PostgreSQL.

No input produces a 5xx: every bound (row ids, offsets, dates, text) is checked before the store with a
400 naming the field, JSON types are strict, a store failure is 503 on every path, unknown paths are 404
and wrong methods 405 with ``Allow``, each with the JSON error body, and no error closes the client's
keep-alive connection.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from keyrelay.config import Settings
from keyrelay.errors import ErrorType
from keyrelay.testing.server import RunningServer
from tests.conftest import PG_ADMIN_DSN, make_management_key
from tests.integration.gateway.helpers import break_store

BIG = "9223372036854775808"  # 2**63: beyond every integer column
INT_OVER = "2147483648"  # 2**31: beyond PostgreSQL's INTEGER (ids)
FAR = "9999-12-31T23:59:59-14:00"  # 10000-01-01T13:59:59Z in UTC
EARLY = "0001-01-01T00:00:00+14:00"  # year 0 in UTC


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response``."""
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


def error_of(r: httpx.Response, status: int, error_type: str, param: object = None) -> dict[str, Any]:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.headers["content-type"] == "application/json", r.headers
    err: dict[str, Any] = r.json()["error"]
    assert err["type"] == error_type, r.text
    assert err["code"] == ErrorType[error_type].code
    assert err["request_id"] == r.headers["x-request-id"]
    if param is not None:
        assert err.get("param") == param, r.text
        assert str(param).split(".")[0] in err["message"], r.text
    return err


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The cache poller is idle (hourly): the management key must stay cached while the store is down, so
    that each request reaches its handler's store call; nothing here writes from another process."""
    return Settings(database_url=database_url, cache_poll_interval_s=3600, log_level="warning")


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """One keep-alive connection at most, so that a dropped connection shows as a new local port."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, limits=limits) as c:
        yield c


async def _state(client: httpx.AsyncClient, key: str) -> list[object]:
    """Everything the API can show; must not change when requests are refused."""
    return [
        (await client.get(url, headers=auth(key))).json()["data"]
        for url in ("/api/v1/keys?page_size=100", "/api/v1/accounts?page_size=500", "/api/v1/groups")
    ]


def _page_token(created: object, key_hash: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"c": created, "h": key_hash})).decode().rstrip("=")


async def test_every_bound_is_a_400_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, server: RunningServer, admin_key: str
) -> None:
    headers = auth(admin_key)
    key = (await client.post("/api/v1/keys", json={"name": "k"}, headers=headers)).json()["data"]["hash"]
    group = (await client.post("/api/v1/groups", json={"name": "g"}, headers=headers)).json()["data"]["id"]
    account = (await client.post("/api/v1/accounts", json={"email": "a@example.com"}, headers=headers)).json()
    acct = account["data"]["id"]
    before = await _state(client, admin_key)
    first = await client.get("/api/v1/keys", headers=headers)
    port = local_port(first)

    cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
        # Integers within the store's column ranges.
        ("GET", f"/api/v1/accounts/{BIG}", None, "account_id"),
        ("GET", f"/api/v1/accounts/{INT_OVER}", None, "account_id"),
        ("PATCH", f"/api/v1/accounts/{BIG}", {"status": "inactive"}, "account_id"),
        ("GET", "/api/v1/accounts/0", None, "account_id"),
        ("GET", f"/api/v1/groups/{BIG}", None, "group_id"),
        ("PATCH", f"/api/v1/groups/{INT_OVER}", {"name": "x"}, "group_id"),
        ("DELETE", f"/api/v1/groups/{BIG}", None, "group_id"),
        ("GET", f"/api/v1/keys?account_id={BIG}", None, "account_id"),
        ("GET", f"/api/v1/keys?account_id={INT_OVER}", None, "account_id"),
        ("GET", "/api/v1/keys?offset=2.4e30", None, "offset"),
        ("GET", "/api/v1/keys?offset=2400000000000000000000000000000", None, "offset"),
        ("GET", "/api/v1/accounts?offset=2.4e30", None, "offset"),
        ("GET", f"/api/v1/accounts?offset={BIG}", None, "offset"),
        ("GET", "/api/v1/accounts?page_size=99999999999999999999", None, "page_size"),
        # Integers in paths and query strings are plain digits: no "1.0", " 1" or "+1".
        ("GET", "/api/v1/accounts/%201", None, "account_id"),
        ("GET", "/api/v1/accounts/1.0", None, "account_id"),
        ("GET", "/api/v1/keys?account_id=1.0", None, "account_id"),
        ("GET", "/api/v1/keys?offset=+1", None, "offset"),
        ("GET", "/api/v1/keys?page_size=%2010", None, "page_size"),
        # Dates every store and every UTC offset can hold.
        ("POST", "/api/v1/keys", {"name": "x", "expires_at": FAR}, "expires_at"),
        ("PATCH", f"/api/v1/keys/{key}", {"expires_at": FAR}, "expires_at"),
        ("POST", "/api/v1/keys", {"name": "x", "expires_at": EARLY}, "expires_at"),
        ("GET", f"/api/v1/usage?start={FAR}", None, "start"),
        ("GET", f"/api/v1/usage?end={FAR}", None, "end"),
        ("GET", f"/api/v1/usage?start={EARLY}", None, "start"),
        ("GET", "/api/v1/usage?start=99999-01-01T00:00:00Z", None, "start"),
        ("GET", f"/api/v1/keys?page_token={_page_token(FAR, key)}", None, "page_token"),
        # Text without NUL (PostgreSQL refuses it) in every field and filter.
        ("POST", "/api/v1/keys", {"name": "a\x00b"}, "name"),
        ("PATCH", f"/api/v1/keys/{key}", {"name": "\x00"}, "name"),
        ("POST", "/api/v1/accounts", {"email": "a\x00b@example.com"}, "email"),
        ("POST", "/api/v1/accounts", {"email": "n@example.com", "group": "g\x00"}, "group"),
        ("PATCH", f"/api/v1/accounts/{acct}", {"group": "g\x00"}, "group"),
        ("POST", "/api/v1/groups", {"name": "g\x00"}, "name"),
        ("PATCH", f"/api/v1/groups/{group}", {"name": "g\x00"}, "name"),
        ("PATCH", f"/api/v1/groups/{group}", {"description": "d\x00"}, "description"),
        ("POST", "/api/v1/groups", {"name": "h", "allowed_models": ["m\x00"]}, "allowed_models.0"),
        ("GET", "/api/v1/usage?model=a%00b", None, "model"),
        ("GET", "/api/v1/usage?key=%00", None, "key"),
        (
            "GET",
            f"/api/v1/keys?page_token={_page_token('2030-01-01T00:00:00Z', 'a' * 63 + chr(0))}",
            None,
            "page_token",
        ),
        ("GET", "/api/v1/keys?page_token=%00", None, "page_token"),
        # Strict JSON types.
        ("POST", "/api/v1/keys", {"name": "x", "disabled": "yes"}, "disabled"),
        ("PATCH", f"/api/v1/keys/{key}", {"disabled": "yes"}, "disabled"),
        ("POST", "/api/v1/keys", {"name": "x", "limit": "5"}, "limit"),
        ("PATCH", f"/api/v1/keys/{key}", {"limit": "5"}, "limit"),
        ("POST", "/api/v1/keys", {"name": "x", "rate_limits": {"max_concurrent": False}}, "rate_limits.max_concurrent"),
        ("POST", f"/api/v1/keys/{key}/rotate", {"grace_seconds": "60"}, "grace_seconds"),
        ("POST", f"/api/v1/keys/{key}/rotate", {"grace_seconds": True}, "grace_seconds"),
        ("POST", "/api/v1/accounts", {"email": "s@example.com", "balance": "5"}, "balance"),
        ("PATCH", f"/api/v1/accounts/{acct}", {"balance": "5"}, "balance"),
        ("POST", "/api/v1/groups", {"name": "s", "price_multiplier": "1.5"}, "price_multiplier"),
        ("PATCH", f"/api/v1/groups/{group}", {"default_rate_limits": {"rpm": True}}, "default_rate_limits.rpm"),
        ("GET", "/api/v1/usage?start=0.5", None, "start"),
        ("GET", "/api/v1/usage?end=1700000000", None, "end"),
    ]
    for method, url, body, param in cases:
        r = await client.request(method, url, json=body, headers=headers)
        error_of(r, 400, "INVALID_REQUEST", param)
        assert local_port(r) == port, f"{method} {url}: the connection was dropped"
    # Bodies the JSON parser gives up on: nested too deep, not UTF-8.
    for raw in (b"[" * 100_000, b'{"name": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b'{"name": "\xff"}'):
        r = await client.post("/api/v1/keys", content=raw, headers={**headers, "content-type": "application/json"})
        error_of(r, 400, "INVALID_REQUEST", "body")
        assert local_port(r) == port
    # A path segment that cannot be a key hash names no key.
    error_of(await client.get("/api/v1/keys/%00", headers=headers), 404, "NOT_FOUND")
    error_of(await client.get("/api/v1/usage?key=not-a-hash", headers=headers), 404, "NOT_FOUND", "key")
    assert await _state(client, admin_key) == before


async def test_store_errors_are_503_on_every_path(
    client: httpx.AsyncClient, server: RunningServer, admin_key: str, database_url: str
) -> None:
    headers = auth(admin_key)
    key = (await client.post("/api/v1/keys", json={"name": "k"}, headers=headers)).json()["data"]["hash"]
    not_cached = await make_management_key(server, "other@example.com", admin=True)
    first = await client.get("/api/v1/keys", headers=headers)  # the admin key is cached from here on
    assert first.status_code == 200
    await break_store(database_url, PG_ADMIN_DSN, server.runtime.engine)

    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/v1/keys", None),
        ("GET", "/api/v1/keys?account_id=1", None),
        ("POST", "/api/v1/keys", {"name": "x"}),
        ("POST", "/api/v1/keys", {"name": "x", "account": "a@example.com"}),
        ("GET", f"/api/v1/keys/{key}", None),
        ("PATCH", f"/api/v1/keys/{key}", {"name": "y"}),
        ("POST", f"/api/v1/keys/{key}/rotate", {}),
        ("DELETE", f"/api/v1/keys/{key}", None),
        ("GET", "/api/v1/accounts", None),
        ("POST", "/api/v1/accounts", {"email": "new@example.com"}),
        ("GET", "/api/v1/accounts/1", None),
        ("PATCH", "/api/v1/accounts/1", {"status": "inactive"}),
        ("GET", "/api/v1/groups", None),
        ("POST", "/api/v1/groups", {"name": "g"}),
        ("GET", "/api/v1/groups/1", None),
        ("PATCH", "/api/v1/groups/1", {"name": "h"}),
        ("DELETE", "/api/v1/groups/1", None),
        ("GET", "/api/v1/usage", None),
        ("GET", f"/api/v1/usage?key={key}&group_by=day", None),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, json=body, headers=headers)
        err = error_of(r, 503, "SERVICE_UNAVAILABLE")
        assert "store" in err["message"], r.text
        assert local_port(r) == local_port(first), f"{method} {url}: the connection was dropped"
    # A management key the cache has not seen cannot be checked: 503, never 401.
    r = await client.get("/api/v1/keys", headers=auth(not_cached))
    error_of(r, 503, "SERVICE_UNAVAILABLE")
    assert local_port(r) == local_port(first)


async def test_unknown_paths_are_404_naming_the_path_for_every_method(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    paths = ["/api/v1/responses", "/api/v1/keys/abc/nope", "/api/v1/", "/api/v2/keys", "/api/nothing", "/api/"]
    for path in paths:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            for headers in ({}, auth(admin_key)):
                r = await client.request(method, path, headers=headers)
                err = error_of(r, 404, "NOT_FOUND")
                assert path in err["message"], r.text
        r = await client.head(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"


async def test_known_path_with_another_method_is_405_with_allow(client: httpx.AsyncClient, admin_key: str) -> None:
    key = (await client.post("/api/v1/keys", json={"name": "k"}, headers=auth(admin_key))).json()["data"]["hash"]
    served = {
        "/api/v1/keys": {"GET", "POST"},
        f"/api/v1/keys/{key}": {"GET", "PATCH", "DELETE"},
        f"/api/v1/keys/{key}/rotate": {"POST"},
        "/api/v1/accounts": {"GET", "POST"},
        "/api/v1/accounts/1": {"GET", "PATCH"},
        "/api/v1/groups": {"GET", "POST"},
        "/api/v1/groups/1": {"GET", "PATCH", "DELETE"},
        "/api/v1/usage": {"GET"},
        "/openapi.json": {"GET", "HEAD"},
    }
    for path, allowed in served.items():
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - allowed:
            r = await client.request(method, path, headers=auth(admin_key))
            err = error_of(r, 405, "METHOD_NOT_ALLOWED")
            assert set(r.headers["allow"].split(", ")) == allowed, (method, path, r.headers)
            assert method in err["message"] and path in err["message"], r.text
        for method in allowed - {"HEAD"}:  # and every method it names is served there
            r = await client.request(method, path, headers=auth(admin_key), json={} if method != "GET" else None)
            assert r.status_code != 405, (method, path, r.text)


async def test_an_unexpected_error_is_a_json_500_and_keeps_the_connection(
    client: httpx.AsyncClient, server: RunningServer, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: no input reaches this path any more, so a bug is simulated in a repository.
    async def broken(**_: object) -> list[object]:
        raise RuntimeError("simulated bug")

    first = await client.get("/api/v1/groups", headers=auth(admin_key))
    assert first.status_code == 200
    monkeypatch.setattr(server.runtime.groups, "list_all", broken)
    r = await client.get("/api/v1/groups", headers=auth(admin_key))
    err = error_of(r, 500, "INTERNAL_ERROR")
    assert "simulated" not in err["message"]
    monkeypatch.undo()
    again = await client.get("/api/v1/groups", headers=auth(admin_key))
    assert again.status_code == 200
    assert local_port(first) == local_port(r) == local_port(again)


async def test_openapi_declares_what_the_api_answers(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["ErrorDetail"]["properties"]["type"]["enum"]) == {t.name for t in ErrorType}
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    expected_extra = {
        ("post", "/api/v1/keys"): {"400"},
        ("get", "/api/v1/keys"): {"400"},
        ("get", "/api/v1/keys/{key_hash}"): {"404"},
        ("patch", "/api/v1/keys/{key_hash}"): {"400", "404"},
        ("delete", "/api/v1/keys/{key_hash}"): {"404"},
        ("post", "/api/v1/keys/{key_hash}/rotate"): {"400", "404"},
        ("post", "/api/v1/accounts"): {"400", "409"},
        ("get", "/api/v1/accounts"): {"400"},
        ("get", "/api/v1/accounts/{account_id}"): {"400", "404"},
        ("patch", "/api/v1/accounts/{account_id}"): {"400", "404"},
        ("post", "/api/v1/groups"): {"400", "409"},
        ("get", "/api/v1/groups"): set(),
        ("get", "/api/v1/groups/{group_id}"): {"400", "404"},
        ("patch", "/api/v1/groups/{group_id}"): {"400", "404", "409"},
        ("delete", "/api/v1/groups/{group_id}"): {"400", "404", "409"},
        ("get", "/api/v1/usage"): {"400", "404"},
        ("get", "/api/v1/usage/records"): {"400", "404"},
        ("get", "/api/v1/audit"): {"400"},
        ("get", "/api/v1/providers"): set(),
    }
    seen = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert seen == set(expected_extra)
    for (method, path), extra in expected_extra.items():
        responses = doc["paths"][path][method]["responses"]
        success = (
            "201" if method == "post" and path in ("/api/v1/keys", "/api/v1/accounts", "/api/v1/groups") else "200"
        )
        assert set(responses) == {success, "401", "403", "413", "503"} | extra, (method, path, sorted(responses))
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    assert doc["security"] == [{"managementKey": []}]
    assert doc["components"]["securitySchemes"]["managementKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A management key: 'Authorization: Bearer kr_mgmt_...'.",
    }
    # Amounts are JSON numbers, not numeric strings.
    for model, field in (("KeyCreate", "limit"), ("AccountCreate", "balance"), ("GroupCreate", "price_multiplier")):
        branches = schemas[model]["properties"][field]["anyOf"]
        assert {b.get("type") for b in branches} == {"number", "null"}, (model, field, branches)
