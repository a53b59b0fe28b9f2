"""Gateway + mock upstream with the limits backend parametrized: in-process memory, and Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from keyrelay.config import Settings
from keyrelay.testing.mock_upstream import MockUpstream
from tests.integration.gateway.conftest import provider_for
from tests.unit.limits.conftest import REDIS_URL, drop_prefix, redis_client_or_skip


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limits_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """Settings overrides selecting the limits backend (a fresh Redis key prefix per test)."""
    if request.param == "memory":
        yield {}
        return
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    try:
        yield {"redis_url": REDIS_URL, "redis_prefix": prefix}
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()


@pytest.fixture
def settings(database_url: str, mock: MockUpstream, limits_env: dict[str, str]) -> Settings:
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(provider_for(mock),),
        **limits_env,  # type: ignore[arg-type]
    )
