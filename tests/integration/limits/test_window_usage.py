"""A key's window usage after real requests through the gateway, read with the windows the gateway admits with.

What the portal's key panel shows must be what the gateway's own admissions wrote: the same key hash, window
names and clock. Requests go over HTTP on a FakeClock; the counts are read from the running app's backend.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from keyrelay.config import ModelConfig, Settings
from keyrelay.gateway.admit import Pending, admission_request
from keyrelay.keys.hashing import key_hash
from keyrelay.limits.backend import WindowUsage
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import wait_until
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import make_api_key
from tests.integration.gateway.conftest import provider_for
from tests.integration.gateway.helpers import chat, usage_rows

START = datetime(2027, 1, 15, 12, 0, 0, tzinfo=UTC)  # on a whole 5-minute boundary: per_5h buckets are 300 s
RATE_LIMITS = {"rpm": 10, "per_5h": 50, "tpm": 5000, "max_concurrent": 3}


def settings_for(database_url: str, mock: MockUpstream, limits_env: dict[str, str]) -> Settings:
    base = provider_for(mock)
    held = ModelConfig(id="gpt-4o-mini-held", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))
    provider = base.model_copy(update={"models": (*base.models, held), "timeout_s": 60.0})
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(provider,),
        **limits_env,  # type: ignore[arg-type]
    )


async def read_usage(server: RunningServer, key: str, clock: FakeClock) -> WindowUsage:
    """The key's usage now, for the windows the gateway builds from its policy (as the portal will)."""
    principal = await server.runtime.cache.get(key_hash(key))
    assert principal is not None
    now = clock.now_utc()
    built = admission_request(
        principal, request_id="-", now=now, cost_micros=0, max_tokens=0, pending=Pending(lambda *_: 0)
    )
    limits = server.app.limits
    return await limits.window_usage(built.key_hash, built.windows, tpm=built.tpm is not None, now=now.timestamp())


async def test_usage_follows_requests_through_the_gateway(
    database_url: str, mock: MockUpstream, limits_env: dict[str, str]
) -> None:
    clock = FakeClock(START)
    settings = settings_for(database_url, mock, limits_env)
    async with running_server(settings, clock=clock) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        key = await make_api_key(server, "usage@example.com", rate_limits=RATE_LIMITS)
        assert await read_usage(server, key, clock) == WindowUsage({"rpm": 0, "per_5h": 0}, 0, 0)

        done = [await chat(client, key, max_tokens=9) for _ in range(3)]
        assert [r.status_code for r in done] == [200] * 3, [r.text for r in done]
        rows = await usage_rows(server, *(r.headers["x-request-id"] for r in done))
        tokens = sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows)
        assert tokens > 0
        # Settled: each request counts once, its actual tokens count, and no slot is held.
        assert await read_usage(server, key, clock) == WindowUsage({"rpm": 3, "per_5h": 3}, tokens, 0)

        clock.advance(1)
        held = asyncio.ensure_future(chat(client, key, model="gpt-4o-mini-held", max_tokens=200))
        await wait_until(lambda: len(mock.state.held) == 1, what="the held request arrived")
        during = await read_usage(server, key, clock)
        # In flight: it holds a slot and reserves at least its max_tokens until it settles.
        assert during.counts == {"rpm": 4, "per_5h": 4} and during.in_flight == 1
        assert during.tokens_per_minute is not None and during.tokens_per_minute >= tokens + 200
        mock.state.release(0)
        answer = await held
        assert answer.status_code == 200, answer.text
        [row] = await usage_rows(server, answer.headers["x-request-id"])
        tokens += row["prompt_tokens"] + row["completion_tokens"]
        assert await read_usage(server, key, clock) == WindowUsage({"rpm": 4, "per_5h": 4}, tokens, 0)

        # A minute after the first three, they have left rpm and tpm; the held one (a second later) has not.
        clock.advance(59)
        later = row["prompt_tokens"] + row["completion_tokens"]
        assert await read_usage(server, key, clock) == WindowUsage({"rpm": 1, "per_5h": 4}, later, 0)
        clock.advance(1)
        assert await read_usage(server, key, clock) == WindowUsage({"rpm": 0, "per_5h": 4}, 0, 0)
