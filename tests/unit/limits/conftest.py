"""Both limits backends behind one fixture: every test here runs on memory and on Redis."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from keyrelay.limits.backend import LimitsBackend
from keyrelay.limits.memory import MemoryLimits
from keyrelay.limits.redis import RedisLimits, client_from_url

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("KEYRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def redis_client_or_skip() -> Redis:
    client = client_from_url(REDIS_URL)  # the gateway's own pool
    try:
        await client.ping()
    except Exception as exc:  # any failure means "no Redis here"
        await client.aclose()
        message = f"Redis not reachable at {REDIS_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return client


async def drop_prefix(client: Redis, prefix: str) -> None:
    async for name in client.scan_iter(match=f"{prefix}:*", count=500):
        await client.delete(name)


@pytest.fixture(
    params=["memory", pytest.param("redis", marks=pytest.mark.redis), pytest.param("redis-py", marks=pytest.mark.redis)]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[LimitsBackend]:
    """Memory; Redis (scripts through the lean client, commands packed from cached parts); Redis through redis-py."""
    if request.param == "memory":
        yield MemoryLimits()
        return
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    limits = RedisLimits(client, prefix=prefix, lean=request.param == "redis")
    try:
        yield limits
    finally:
        await drop_prefix(client, prefix)
        await limits.close()  # its lean connection and the client


@pytest.fixture
async def redis_limits() -> AsyncIterator[RedisLimits]:
    """A Redis backend alone, on a fresh key prefix (for tests that need Redis itself; mark them ``redis``)."""
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    limits = RedisLimits(client, prefix=prefix)
    try:
        yield limits
    finally:
        await drop_prefix(client, prefix)
        await limits.close()  # its lean connection and the client
