"""Breaker and credential states shared between two gateway processes' worth of state over Redis."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import wait_until
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import chat, sqlite_settings
from tests.unit.limits.conftest import REDIS_URL

pytestmark = pytest.mark.redis


def _state(server: RunningServer, provider: str) -> str:
    assert server.app.gateway is not None
    return str(next(c for c in server.app.gateway.channel_report() if c["provider"] == provider)["state"])


async def test_a_breaker_opened_by_one_process_is_open_in_the_other_and_closes_in_both(
    tmp_path: Path, mock: MockUpstream, redis_prefix: str
) -> None:
    second = MockUpstream()
    await second.start()
    model = (ModelConfig(id="m", upstream_id="gpt-4o-mini"),)
    providers = (
        ProviderConfig(name="primary", base_url=mock.base_url, models=model, priority=1),
        ProviderConfig(name="backup", base_url=second.base_url, models=model),
    )
    clock_a, clock_b = FakeClock(), FakeClock()
    common = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix, "breaker_failures": 3}
    settings: Settings = sqlite_settings(tmp_path, *providers, **common)
    try:
        async with (
            running_server(settings, clock=clock_a) as a,
            running_server(settings, clock=clock_b) as b,
            httpx.AsyncClient(base_url=a.base_url) as client_a,
            httpx.AsyncClient(base_url=b.base_url) as client_b,
        ):
            key = await make_api_key(a, "shared@example.com")
            mock.options.fail_status = 503
            for _ in range(3):
                assert (await chat(client_a, key, model="m")).status_code == 200
            assert _state(a, "primary") == "open"
            await wait_until(lambda: _state(b, "primary") == "open", what="B hears that the breaker opened")
            mock.state.clear_requests()
            assert (await chat(client_b, key, model="m")).status_code == 200
            assert mock.requests == []  # B skipped the primary without a failure of its own
            # A's cooldown passes, its probe succeeds: closed in A, and in B too.
            mock.options.fail_status = None
            clock_a.advance(30)
            assert (await chat(client_a, key, model="m")).status_code == 200
            assert _state(a, "primary") == "closed"
            await wait_until(lambda: _state(b, "primary") == "closed", what="B hears that the breaker closed")
            assert (await chat(client_b, key, model="m")).status_code == 200
            assert len(mock.requests) == 2
            # A process started now learns the states still running from Redis.
            mock.options.fail_status = 503
            for _ in range(3):
                await chat(client_a, key, model="m")
            async with running_server(settings) as c:
                await wait_until(lambda: _state(c, "primary") == "open", what="a new process loads the open breaker")
    finally:
        await second.stop()
