"""GET /api/v1/usage: totals and groupings over real traffic, scoped to the caller's account."""

from __future__ import annotations

import httpx

from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key, make_management_key


async def _chat(client: httpx.AsyncClient, key: str, model: str) -> None:
    r = await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hello there"}]},
    )
    assert r.status_code == 200, r.text


async def test_usage_totals_and_groups(server: RunningServer, client: httpx.AsyncClient) -> None:
    alice_mgmt = await make_management_key(server, "alice@example.com")
    bob_mgmt = await make_management_key(server, "bob@example.com")
    a1 = await make_api_key(server, "alice@example.com", name="a-one")
    a2 = await make_api_key(server, "alice@example.com", name="a-two")
    b1 = await make_api_key(server, "bob@example.com", name="b-one")
    for key, model in ((a1, "gpt-4o-mini"), (a1, "gpt-4o"), (a2, "gpt-4o-mini"), (b1, "gpt-4o-mini")):
        await _chat(client, key, model)
    assert server.app.writer is not None
    await server.app.flush_usage()

    h = {"Authorization": f"Bearer {alice_mgmt}"}
    r = await client.get("/api/v1/usage", headers=h)
    assert r.status_code == 200, r.text
    total = r.json()["data"]["total"]
    assert total["requests"] == 3  # bob's request is not visible to alice
    assert total["prompt_tokens"] > 0 and total["completion_tokens"] > 0 and total["cost"] > 0
    assert r.json()["data"]["groups"] is None

    by_model = (await client.get("/api/v1/usage", params={"group_by": "model"}, headers=h)).json()["data"]["groups"]
    assert {g["group"]: g["requests"] for g in by_model} == {"gpt-4o": 1, "gpt-4o-mini": 2}

    by_key = (await client.get("/api/v1/usage", params={"group_by": "key"}, headers=h)).json()["data"]["groups"]
    assert sorted((g["key_name"], g["requests"]) for g in by_key) == [("a-one", 2), ("a-two", 1)]

    by_day = (await client.get("/api/v1/usage", params={"group_by": "day"}, headers=h)).json()["data"]["groups"]
    assert len(by_day) == 1 and len(by_day[0]["group"]) == 10 and by_day[0]["requests"] == 3

    only = await client.get("/api/v1/usage", params={"model": "gpt-4o"}, headers=h)
    assert only.json()["data"]["total"]["requests"] == 1
    future = await client.get("/api/v1/usage", params={"start": "2999-01-01T00:00:00Z"}, headers=h)
    assert future.json()["data"]["total"] == {
        "group": None,
        "key_name": None,
        "requests": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost": 0.0,
    }

    b = {"Authorization": f"Bearer {bob_mgmt}"}
    assert (await client.get("/api/v1/usage", headers=b)).json()["data"]["total"]["requests"] == 1


async def test_usage_bad_input(server: RunningServer, client: httpx.AsyncClient) -> None:
    h = {"Authorization": f"Bearer {await make_management_key(server, 'carol@example.com')}"}
    r = await client.get("/api/v1/usage", params={"group_by": "week"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"
    r = await client.get("/api/v1/usage", params={"start": "yesterday"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "start"
    r = await client.get(
        "/api/v1/usage", params={"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, headers=h
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "end"
    r = await client.get("/api/v1/usage", params={"key": "0" * 64}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NOT_FOUND"
