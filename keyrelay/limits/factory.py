"""Choose the limits backend from the settings: Redis when ``KEYRELAY_REDIS_URL`` is set, else in-process.

redis-py (and what it pulls in) is imported only when Redis is configured: an embedded gateway
should not carry its memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keyrelay.config import Settings
from keyrelay.limits.backend import LimitsBackend
from keyrelay.limits.memory import MemoryLimits

if TYPE_CHECKING:
    from redis.asyncio import Redis


def redis_client(settings: Settings) -> Redis | None:
    """The process's Redis client, or None without ``KEYRELAY_REDIS_URL``."""
    if not settings.redis_url:
        return None
    from keyrelay.limits.redis import client_from_url

    return client_from_url(settings.redis_url)


def build_limits(settings: Settings, client: Redis | None) -> LimitsBackend:
    """The configured backend."""
    if client is not None:
        from keyrelay.limits.redis import RedisLimits

        return RedisLimits(client, prefix=settings.redis_prefix, fail_open=settings.limits_fail_open)
    return MemoryLimits()
