"""Budgets cannot be overshot under concurrency: 200 requests at once against a small limit."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select

from keyrelay.services.inputs import AccountCreate, AccountUpdate, GroupCreate
from keyrelay.store.schema import usage_records
from keyrelay.testing.server import RunningServer
from tests.conftest import TEST_ACTOR, make_api_key

# The mock's prompt of one short message costs a few tokens; max_tokens bounds the completion.
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}


async def _fire(client: httpx.AsyncClient, key: str, n: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    return await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT, headers=headers) for _ in range(n)))


async def _recorded_spend(server: RunningServer, **where: object) -> int:
    assert server.app.writer is not None
    await server.app.flush_usage()
    stmt = select(func.coalesce(func.sum(usage_records.c.cost_micros), 0))
    for column, value in where.items():
        stmt = stmt.where(usage_records.c[column] == value)
    async with server.runtime.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def test_key_limit_holds_for_200_concurrent_requests(server: RunningServer, client: httpx.AsyncClient) -> None:
    # gpt-4o: $2.50 in / $10 out per Mtok. A request's maximum is ~(body bytes × 2.5 + 9 × 10) µ$ ≈ 340 µ$,
    # its actual cost ~ 100 µ$, so a 0.005 USD limit admits a few dozen requests and refuses the rest.
    key = await make_api_key(server, "conc@example.com", name="small", limit=0.005)
    responses = await _fire(client, key, 200)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 10 and statuses.count(429) >= 1
    assert all(r.json()["error"]["type"] == "API_KEY_QUOTA_EXHAUSTED" for r in responses if r.status_code == 429)
    spent = await _recorded_spend(server, key_name="small")
    assert 0 < spent <= 5_000


async def test_account_balance_holds_for_200_concurrent_requests(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    rt = server.runtime
    await rt.account_service.create_account(AccountCreate(email="bal@example.com", balance=0.004), actor=TEST_ACTOR)
    key_a = await make_api_key(server, "bal@example.com", name="a")
    key_b = await make_api_key(server, "bal@example.com", name="b")
    responses = [*await _fire(client, key_a, 100), *await _fire(client, key_b, 100)]
    refused = [r for r in responses if r.status_code != 200]
    assert refused and all(r.status_code == 402 for r in refused)
    assert all(r.json()["error"]["metadata"]["limit_source"] == "account" for r in refused)
    account = await rt.accounts.get_by_email(email="bal@example.com")
    assert account is not None
    assert 0 < await _recorded_spend(server, account_id=account.id) <= 4_000


async def test_group_quota_is_shared_by_accounts(server: RunningServer, client: httpx.AsyncClient) -> None:
    rt = server.runtime
    await rt.account_service.create_group(GroupCreate(name="team", quota=0.003, quota_reset="daily"), actor=TEST_ACTOR)
    for email in ("g1@example.com", "g2@example.com"):
        account = await rt.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
        await rt.account_service.update_account(account, AccountUpdate(group="team"), actor=TEST_ACTOR)
    key_1 = await make_api_key(server, "g1@example.com")
    key_2 = await make_api_key(server, "g2@example.com")
    responses = [*await _fire(client, key_1, 60), *await _fire(client, key_2, 60)]
    refused = [r for r in responses if r.status_code != 200]
    assert refused and {r.json()["error"]["metadata"]["limit_source"] for r in refused} == {"group"}
    assert all(r.status_code == 429 and r.json()["error"]["type"] == "API_KEY_QUOTA_EXHAUSTED" for r in refused)
    group = await rt.groups.get_by_name(name="team")
    assert group is not None
    total = sum(
        [
            await _recorded_spend(server, account_id=(await rt.accounts.get_by_email(email=e)).id)  # type: ignore[union-attr]
            for e in ("g1@example.com", "g2@example.com")
        ]
    )
    assert 0 < total <= 3_000


async def test_max_concurrent_and_tpm(server: RunningServer, client: httpx.AsyncClient) -> None:
    slow = await make_api_key(server, "flight@example.com", rate_limits={"max_concurrent": 3})
    headers = {"Authorization": f"Bearer {slow}"}
    body = {**CHAT, "model": "gpt-4o-mini-slow-ttfb"}
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body, headers=headers) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [429] * 5
    assert all("max_concurrent" in r.json()["error"]["message"] for r in responses if r.status_code == 429)
    # Once they have finished, the slots are free again.
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code == 200

    # tpm reserves prompt bound + max_tokens, and settles to the actual tokens.
    tpm_key = await make_api_key(server, "tpm@example.com", rate_limits={"tpm": 400})
    headers = {"Authorization": f"Bearer {tpm_key}"}
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 500}, headers=headers)
    assert r.status_code == 429 and "tpm" in r.json()["error"]["message"] and "retry-after" in r.headers
    ok = [await client.post("/v1/chat/completions", json=CHAT, headers=headers) for _ in range(3)]
    assert [x.status_code for x in ok] == [200, 200, 200]
