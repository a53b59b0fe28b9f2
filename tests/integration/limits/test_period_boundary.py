"""Spend at a period boundary (issue 7 item 5): a charge belongs to the period its request was admitted in.

A daily-limited key has a request admitted at 23:59:59 UTC that is still in flight at midnight. Its usage
record reaches the store after the first records of the new day. That late charge must go to the old day
only: the new day's stored spend, what the management API and ``GET /v1/key`` show, and what a restarted
gateway reloads must all stay the new day's own spend, so the key never spends more than its limit in a day.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from sqlalchemy import func, select

from keyrelay.config import ModelConfig, Settings
from keyrelay.keys.hashing import key_hash
from keyrelay.store.schema import usage_records
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import wait_until
from keyrelay.testing.server import RunningServer, running_server
from keyrelay.usage.writer import UsageWriter
from tests.conftest import make_api_key, make_management_key
from tests.integration.gateway.conftest import provider_for
from tests.integration.gateway.helpers import assert_error, auth, chat, usage_rows

ADMITTED = datetime(2026, 3, 11, 23, 59, 59, tzinfo=UTC)  # one second before midnight UTC
MIDNIGHT = datetime(2026, 3, 12, tzinfo=UTC)
LIMIT_MICROS = 40  # $0.00004 a day: a handful of small requests
QUOTA_MICROS = 1_000


def settings_for(database_url: str, mock: MockUpstream, limits_env: dict[str, str]) -> Settings:
    base = provider_for(mock)
    held = ModelConfig(id="gpt-4o-mini-held", input_per_mtok="0.15", output_per_mtok="0.60")
    # The held request waits for the test, not for a clock: a generous read timeout keeps it from failing.
    provider = base.model_copy(update={"models": (*base.models, held), "timeout_s": 60.0})
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=3600,  # the test decides when records reach the store
        log_level="warning",
        providers=(provider,),
        **limits_env,  # type: ignore[arg-type]
    )


async def views(client: httpx.AsyncClient, key: str, admin: str, group_id: int) -> tuple[float, float, float]:
    """(management API limit_remaining, /v1/key limit_remaining, group quota_used)."""
    managed = await client.get(f"/api/v1/keys/{key_hash(key)}", headers=auth(admin))
    own = await client.get("/v1/key", headers=auth(key))
    group = await client.get(f"/api/v1/groups/{group_id}", headers=auth(admin))
    for r in (managed, own, group):
        assert r.status_code == 200, r.text
    return (
        managed.json()["data"]["limit_remaining"],
        own.json()["data"]["limit_remaining"],
        group.json()["data"]["quota_used"],
    )


async def new_day_spend(server: RunningServer) -> int:
    """What the key was charged for requests admitted on the new day, from the usage records."""
    stmt = select(func.coalesce(func.sum(usage_records.c.cost_micros), 0)).where(usage_records.c.created_at >= MIDNIGHT)
    async with server.runtime.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


def writer(server: RunningServer) -> UsageWriter:
    assert server.app.writer is not None
    return server.app.writer


async def test_late_record_never_resets_the_new_day(
    database_url: str, mock: MockUpstream, limits_env: dict[str, str]
) -> None:
    settings = settings_for(database_url, mock, limits_env)
    clock = FakeClock(ADMITTED)
    async with running_server(settings, clock=clock) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        admin = await make_management_key(server, "root@example.com", admin=True)
        made = await client.post(
            "/api/v1/groups",
            json={"name": "team", "quota": QUOTA_MICROS / 1e6, "quota_reset": "daily"},
            headers=auth(admin),
        )
        assert made.status_code == 201, made.text
        group_id = made.json()["data"]["id"]
        r = await client.post("/api/v1/accounts", json={"email": "a@example.com", "group": "team"}, headers=auth(admin))
        assert r.status_code == 201, r.text
        key = await make_api_key(server, "a@example.com", limit=Decimal(LIMIT_MICROS) / 1_000_000, limit_reset="daily")

        # 23:59:59: admitted, reserved against the old day, and still in flight at midnight.
        late = asyncio.ensure_future(chat(client, key, model="gpt-4o-mini-held", max_tokens=9))
        await wait_until(lambda: len(mock.state.held) == 1, what="the held request arrived")
        clock.advance(2)

        # 00:00:01: the new day's first requests finish and are written first.
        first = [await chat(client, key) for _ in range(3)]
        assert [r.status_code for r in first] == [200, 200, 200], [r.text for r in first]
        rows = await usage_rows(server, *(r.headers["x-request-id"] for r in first))
        spent = sum(row["cost_micros"] for row in rows)
        assert spent > 0
        before = await views(client, key, admin, group_id)
        assert before == ((LIMIT_MICROS - spent) / 1e6, (LIMIT_MICROS - spent) / 1e6, spent / 1e6)

        # The late request finishes; its record (dated 23:59:59) is written after the new day's.
        mock.state.release(0)
        answer = await late
        assert answer.status_code == 200, answer.text
        [row] = await usage_rows(server, answer.headers["x-request-id"])
        assert row["created_at"].replace(tzinfo=UTC) == ADMITTED and row["cost_micros"] > 0
        # It belongs to the old day: nothing the new day shows moves back.
        assert await views(client, key, admin, group_id) == before

        # Spend the rest of the day: refused once the next request might pass the limit.
        while True:
            r = await chat(client, key)
            if r.status_code != 200:
                assert_error(r, 429, "API_KEY_QUOTA_EXHAUSTED", source="key")
                break
            [row] = await usage_rows(server, r.headers["x-request-id"])
            spent += row["cost_micros"]
        assert spent == await new_day_spend(server) <= LIMIT_MICROS
        assert await views(client, key, admin, group_id) == ((LIMIT_MICROS - spent) / 1e6,) * 2 + (spent / 1e6,)

    # A restarted gateway reloads the new day's spend from the store: the key stays refused.
    async with running_server(settings, clock=clock) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        admin = await make_management_key(server, "root2@example.com", admin=True)
        assert await views(client, key, admin, group_id) == ((LIMIT_MICROS - spent) / 1e6,) * 2 + (spent / 1e6,)
        for _ in range(3):
            assert_error(await chat(client, key), 429, "API_KEY_QUOTA_EXHAUSTED", source="key")
        await writer(server).flush()
        assert await new_day_spend(server) == spent <= LIMIT_MICROS
