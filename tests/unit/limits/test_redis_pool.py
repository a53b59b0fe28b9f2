"""The gateway's redis-py client waits for a free pooled connection in a burst instead of failing the command.

redis-py's default pool raises "Too many connections" at once beyond its 100: a burst of concurrent admissions
through redis-py (a Unix-socket URL) was "Redis unreachable" for every request over it (a clean-clone run failed
``test_concurrent_admissions_never_overshoot[redis-py]`` on it).
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from keyrelay.limits.redis import POOL_CONNECTIONS
from tests.unit.limits.conftest import redis_client_or_skip

pytestmark = pytest.mark.redis


async def test_a_burst_of_commands_beyond_the_pool_waits_for_connections() -> None:
    client = await redis_client_or_skip()
    key = f"kr-test-{secrets.token_hex(6)}:empty"
    try:
        # Each BLPOP holds its connection for 0.3 s (the list stays empty): half again as many as the pool holds.
        replies = await asyncio.gather(
            *(client.blpop([key], timeout=0.3) for _ in range(POOL_CONNECTIONS * 3 // 2)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert replies == [None] * (POOL_CONNECTIONS * 3 // 2)
