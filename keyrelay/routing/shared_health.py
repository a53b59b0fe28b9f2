"""Breaker and credential states shared between processes over Redis (only when Redis is configured).

Each process keeps its own ``Health`` and counts its own failures; what is shared is each state change:
a breaker that opens (for how many seconds), closes, or a credential that starts to rest. A change is
written as a key ``<prefix>:health:<kind>:<name>`` that expires when the state does (so a process that
starts, or reconnects, reads the states still running), and published on ``<prefix>:health``, which every
process applies to its own ``Health`` at once.

It is eventually consistent, and says so in docs/routing.md: a change reaches the other processes one
pub/sub hop later (milliseconds); a process that was disconnected catches up from the keys when it
reconnects; failures are counted per process, so a breaker opens after N failures seen by one process (and
then everywhere), not N across all of them. The request path never waits on Redis: publishing is queued.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keyrelay.routing.health import Health

log = logging.getLogger("keyrelay.routing")
_KINDS = ("channel", "credential")


class SharedHealth:
    """Publishes ``health``'s state changes and applies the other processes' (``run`` until cancelled)."""

    def __init__(self, client: Redis, health: Health, *, prefix: str) -> None:
        self._redis = client
        self._health = health
        self._channel = f"{prefix}:health"
        self._keys = f"{prefix}:health:"
        self._origin = f"{os.getpid()}-{secrets.token_hex(4)}"  # this process: its own messages are skipped
        self._outbox: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue(maxsize=10_000)
        health.on_change = self.publish

    def publish(self, kind: str, name: str, seconds: float) -> None:
        """Queue a state change (``seconds``: how long it lasts; 0 closes a breaker); never blocks."""
        try:
            self._outbox.put_nowait((kind, name, seconds))
        except asyncio.QueueFull:
            log.warning("channel health fan-out queue full; other processes learn of this change later or not")

    def apply(self, message: str) -> None:
        """Apply a message ``origin|kind|seconds|name`` from another process (malformed ones are ignored)."""
        parts = message.split("|", 3)
        if len(parts) != 4 or parts[0] == self._origin or parts[1] not in _KINDS:
            return
        try:
            seconds = float(parts[2])
        except ValueError:
            return
        if 0 <= seconds <= 86_400:
            self._health.apply(parts[1], parts[3], seconds)

    async def load(self) -> None:
        """Apply every state still running (the keys that have not expired): at start and after a reconnect."""
        async for raw in self._redis.scan_iter(match=f"{self._keys}*", count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            kind, _, name = key.removeprefix(self._keys).partition(":")
            ttl_ms = await self._redis.pttl(key)
            if kind in _KINDS and ttl_ms > 0:
                self._health.apply(kind, name, ttl_ms / 1000)

    async def _send_loop(self) -> None:
        while True:
            kind, name, seconds = await self._outbox.get()
            key = f"{self._keys}{kind}:{name}"
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    if seconds > 0:
                        pipe.set(key, "1", px=max(1, round(seconds * 1000)))
                    else:
                        pipe.delete(key)
                    pipe.publish(self._channel, f"{self._origin}|{kind}|{seconds:.3f}|{name}")
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("could not share a channel health change (%s %s): %s", kind, name, exc)

    async def _receive_loop(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    await self.load()  # after subscribing: a change made in between arrives as a message too
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            data = item["data"]
                            self.apply(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                log.warning("channel health subscription lost, retrying in 1 s: %s", exc)
                await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Publish and subscribe until cancelled."""
        await asyncio.gather(self._send_loop(), self._receive_loop())
