"""Cache invalidation across processes: a no-op locally, Redis pub/sub when Redis is configured.

A write through one process's services invalidates that process's cache at once; the fan-out then
tells every other gateway process within milliseconds. The 1 s store poll (``cache/sync.py``) stays
as the safety net for writes that bypass the services (and for a lost pub/sub message).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keyrelay.cache.keycache import KeyCache

log = logging.getLogger("keyrelay.cache")


class Fanout(Protocol):
    """Broadcasts invalidations to the other processes."""

    def publish(self, kind: str, ident: str) -> None:
        """Queue a broadcast (never blocks the caller)."""
        ...

    async def run(self) -> None:
        """Deliver queued broadcasts and apply received ones until cancelled."""
        ...


class LocalFanout:
    """One process: nothing to tell anyone."""

    def publish(self, kind: str, ident: str) -> None:
        """Nothing to do."""

    async def run(self) -> None:
        """Nothing to do."""


class RedisFanout:
    """Redis pub/sub on ``<prefix>:invalidate``; messages are ``k:<hash>``, ``a:<id>`` or ``g:<id>``."""

    def __init__(self, client: Redis, cache: KeyCache, *, prefix: str) -> None:
        self._redis = client
        self._cache = cache
        self._channel = f"{prefix}:invalidate"
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=100_000)

    def publish(self, kind: str, ident: str) -> None:
        """Queue a broadcast; if the queue is full the store poll still covers it."""
        try:
            self._outbox.put_nowait(f"{kind}:{ident}")
        except asyncio.QueueFull:
            log.warning("invalidation fan-out queue full; other processes will catch up by polling")

    def apply(self, message: str) -> None:
        """Apply an invalidation received from another process."""
        kind, _, ident = message.partition(":")
        if kind == "k":
            self._cache.invalidate_key(ident, broadcast=False)
        elif kind == "a" and ident.isdigit():
            self._cache.invalidate_account(int(ident), broadcast=False)
        elif kind == "g" and ident.isdigit():
            self._cache.invalidate_group(int(ident), broadcast=False)

    async def _send_loop(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self._redis.publish(self._channel, message)
            except (RedisError, OSError) as exc:
                log.warning("could not publish cache invalidation (polling covers it): %s", exc)

    async def _receive_loop(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            data = item["data"]
                            self.apply(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                log.warning("cache invalidation subscription lost, retrying in 1 s: %s", exc)
                await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Publish and subscribe until cancelled."""
        await asyncio.gather(self._send_loop(), self._receive_loop())
