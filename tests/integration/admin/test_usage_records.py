"""GET /api/v1/usage/records through real HTTP, on SQLite and PostgreSQL: the request log, keyset-paginated.

Records come from real requests through the gateway; records that share one admission time (ties the
cursor must break by id) go through the same usage writer.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

import httpx
import orjson
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from keyrelay.usage.records import UsageRecord
from tests.conftest import TEST_ACTOR, make_management_key
from tests.records import usage_record

RECORDS = "/api/v1/usage/records"


@pytest.fixture
def settings(database_url: str, mock: MockUpstream) -> Settings:
    """The mock upstream with two priced models and ``broken``, whose upstream answers 500."""
    models = (
        ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60"),  # type: ignore[arg-type]
        ModelConfig(id="gpt-4o", input_per_mtok="2.5", output_per_mtok="10"),  # type: ignore[arg-type]
        ModelConfig(id="broken", upstream_id="fail-500"),
    )
    provider = ProviderConfig(name="mock", kind="openai", base_url=mock.base_url, models=models, timeout_s=5)
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(provider,),
    )


async def api_key(server: RunningServer, email: str, name: str) -> tuple[str, str]:
    """(plaintext, hash) of a new API key of ``email``'s account (made if needed)."""
    rt = server.runtime
    account = await rt.accounts.get_by_email(email=email)
    if account is None:
        account = await rt.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
    issued = await rt.key_service.create(account=account, spec=KeyCreate(name=name), actor=TEST_ACTOR)
    return issued.plaintext, issued.record.hash


async def chat(client: httpx.AsyncClient, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
        headers={"authorization": f"Bearer {key}"},
    )


async def flush(server: RunningServer) -> None:
    assert server.app.writer is not None
    await server.app.flush_usage()


async def read_all(client: httpx.AsyncClient, mgmt: str, limit: int, **params: str) -> list[dict[str, object]]:
    """Every record, following next_page_token; checks each page's size."""
    out: list[dict[str, object]] = []
    token: str | None = None
    while True:
        query = {**params, "limit": str(limit), **({"page_token": token} if token else {})}
        page = await client.get(RECORDS, params=query, headers={"authorization": f"Bearer {mgmt}"})
        assert page.status_code == 200, page.text
        body = page.json()
        token = body["next_page_token"]
        assert len(body["data"]) == limit or token is None
        out.extend(body["data"])
        if token is None:
            return out


def _tie(server: RunningServer, *, at: datetime, account: int, key_hash: str, n: int) -> UsageRecord:
    return usage_record(
        f"req_tie{n:02d}",
        at,
        key_hash=key_hash,
        account_id=account,
        key_name="alice-key",
        model="gpt-4o",
        streamed=True,
        prompt_tokens=10,
        completion_tokens=20,
        cost_micros=1234,
        latency_ms=5,
        ttft_ms=2,
        client_ip="198.51.100.4",
    )


async def test_pages_hold_every_record_once_newest_first(server: RunningServer, client: httpx.AsyncClient) -> None:
    mgmt = await make_management_key(server, "alice@example.com")
    key, key_hash = await api_key(server, "alice@example.com", "alice-key")
    answers = [await chat(client, key) for _ in range(12)]
    assert {a.status_code for a in answers} == {200}
    account = await server.runtime.accounts.get_by_email(email="alice@example.com")
    assert account is not None and server.app.writer is not None
    at = server.runtime.clock.now_utc() - timedelta(hours=1)
    for n in range(9):  # nine records with one admission time: the cursor must break the tie by id
        server.app.writer.enqueue(_tie(server, at=at, account=account.id, key_hash=key_hash, n=n))
    await flush(server)

    for limit in (1, 4, 21, 500):
        records = await read_all(client, mgmt, limit)
        assert len(records) == 21 and len({r["id"] for r in records}) == 21, limit  # no gap, no repeat
        order = [(datetime.fromisoformat(str(r["created_at"])), r["id"]) for r in records]
        assert order == sorted(order, reverse=True), limit
    newest = records[0]
    assert newest["request_id"] == answers[-1].headers["x-request-id"]
    assert newest["key_hash"] == key_hash and newest["key_name"] == "alice-key"
    assert newest["account_id"] == account.id and newest["model"] == "gpt-4o-mini" and newest["provider"] == "mock"
    assert newest["status"] == 200 and newest["error_type"] is None and newest["client_ip"] == "127.0.0.1"
    assert newest["protocol"] == "openai" and newest["streamed"] is False
    assert isinstance(newest["cost_micros"], int) and newest["cost_micros"] > 0
    assert newest["cost"] == newest["cost_micros"] / 1_000_000
    assert isinstance(newest["prompt_tokens"], int) and newest["prompt_tokens"] > 0
    assert [r["request_id"] for r in records[12:]] == [f"req_tie{n:02d}" for n in reversed(range(9))]


async def test_filters(server: RunningServer, client: httpx.AsyncClient) -> None:
    mgmt = await make_management_key(server, "alice@example.com")
    first, first_hash = await api_key(server, "alice@example.com", "first")
    second, second_hash = await api_key(server, "alice@example.com", "second")
    for key, model in ((first, "gpt-4o-mini"), (first, "gpt-4o"), (second, "gpt-4o-mini"), (second, "broken")):
        await chat(client, key, model)
    await flush(server)
    h = {"authorization": f"Bearer {mgmt}"}

    async def names(**params: str) -> list[tuple[str, str, int]]:
        page = await client.get(RECORDS, params=params, headers=h)
        assert page.status_code == 200, page.text
        return [(r["key_name"], r["model"], r["status"]) for r in page.json()["data"]]

    assert len(await names()) == 4
    assert await names(key=first_hash) == [("first", "gpt-4o", 200), ("first", "gpt-4o-mini", 200)]
    assert await names(model="gpt-4o-mini", status="ok") == [
        ("second", "gpt-4o-mini", 200),
        ("first", "gpt-4o-mini", 200),
    ]
    [failed] = await names(status="error")
    assert failed[:2] == ("second", "broken") and failed[2] >= 500
    assert await names(status=str(failed[2])) == [failed]
    assert await names(status="200", key=second_hash) == [("second", "gpt-4o-mini", 200)]
    assert await names(status="404") == []
    everything = (await client.get(RECORDS, headers=h)).json()["data"]
    oldest = datetime.fromisoformat(everything[-1]["created_at"])
    newest = datetime.fromisoformat(everything[0]["created_at"])
    assert len(await names(start=oldest.isoformat())) == 4  # inclusive
    assert len(await names(end=oldest.isoformat())) == 0  # exclusive
    assert len(await names(start=newest.isoformat(), end=(newest + timedelta(seconds=1)).isoformat())) == 1
    assert await names(start="2999-01-01T00:00:00Z") == []


async def test_each_account_sees_its_own_records_and_admins_every_one(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    alice = await make_management_key(server, "alice@example.com")
    bob = await make_management_key(server, "bob@example.com")
    admin = await make_management_key(server, "root@example.com", admin=True)
    alice_key, _ = await api_key(server, "alice@example.com", "alice-key")
    bob_key, bob_hash = await api_key(server, "bob@example.com", "bob-key")
    for key in (alice_key, alice_key, bob_key):
        assert (await chat(client, key)).status_code == 200
    await flush(server)
    bob_account = await server.runtime.accounts.get_by_email(email="bob@example.com")
    assert bob_account is not None

    assert {r["key_name"] for r in await read_all(client, alice, 10)} == {"alice-key"}
    assert [r["key_name"] for r in await read_all(client, bob, 10)] == ["bob-key"]
    assert len(await read_all(client, admin, 2)) == 3
    assert [r["key_name"] for r in await read_all(client, admin, 10, account_id=str(bob_account.id))] == ["bob-key"]

    h = {"authorization": f"Bearer {alice}"}
    other = await client.get(RECORDS, params={"account_id": str(bob_account.id)}, headers=h)
    assert other.status_code == 403 and other.json()["error"]["type"] == "FORBIDDEN"
    foreign = await client.get(RECORDS, params={"key": bob_hash}, headers=h)
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "key"
    # A page token made for bob's records gives alice nothing of bob's: the scope is the caller's, always.
    bob_page = await client.get(RECORDS, params={"limit": "1"}, headers={"authorization": f"Bearer {bob}"})
    assert bob_page.json()["next_page_token"] is None
    token = base64.urlsafe_b64encode(orjson.dumps({"c": "2999-01-01T00:00:00+00:00", "i": 10**9})).decode()
    forged = await client.get(RECORDS, params={"page_token": token}, headers=h)
    assert forged.status_code == 200 and {r["key_name"] for r in forged.json()["data"]} == {"alice-key"}
    biggest = _token({"c": "2999-01-01T00:00:00+00:00", "i": 2**63 - 1})  # the largest BIGINT an id can be
    assert len((await client.get(RECORDS, params={"page_token": biggest}, headers=h)).json()["data"]) == 2
    assert (await client.get(RECORDS)).status_code == 401


def _token(data: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


BAD = [
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"status": "teapot"}, "status"),
    ({"status": "600"}, "status"),
    ({"status": "20"}, "status"),
    ({"start": "yesterday"}, "start"),
    ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end"),
    ({"account_id": "0"}, "account_id"),
    ({"key": "0" * 64}, "key"),
    ({"model": "a\x00b"}, "model"),
    ({"page_token": "not a token"}, "page_token"),
    ({"page_token": _token({"c": "2026-01-01T00:00:00Z", "h": "0" * 64})}, "page_token"),
    ({"page_token": _token({"c": "2026-01-01T00:00:00Z", "i": 0})}, "page_token"),
    ({"page_token": _token({"c": "2026-01-01T00:00:00Z", "i": 2**63})}, "page_token"),
    ({"page_token": _token({"c": "2026-01-01T00:00:00Z", "i": True})}, "page_token"),
    ({"page_token": _token({"c": "0", "i": 5})}, "page_token"),
    ({"page_token": _token([1, 2])}, "page_token"),
]


async def test_bad_parameters_are_a_400_naming_the_field(server: RunningServer, client: httpx.AsyncClient) -> None:
    mgmt = await make_management_key(server, "carol@example.com")
    for params, field in BAD:
        answer = await client.get(RECORDS, params=params, headers={"authorization": f"Bearer {mgmt}"})
        assert answer.status_code == (404 if field == "key" else 400), (params, answer.text)  # key: no such key
        assert answer.json()["error"]["param"] == field, params
