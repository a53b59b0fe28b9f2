"""Memory per key used, and the time of a key's first request: one gateway process, one request with each of N keys.

Creates W + N keys (each with request windows, tpm and a spend limit, so that every per-key structure exists) on
a fresh SQLite database, in another process (bench/many_keys.py), so that the garbage of creating them is not
memory this process reuses. Serves them from one in-process gateway with in-memory limits and the mock upstream,
whose clock stands still (so that no window ends and is dropped while the keys are used); sends one chat
request per key, 16 at a time, the usage records written as usual; and reports:

- ``bytes_per_key``: the growth of the resident set size (VmRSS) per key while the N measured keys are used.
  Before the measurement: 200 requests with one key, the store's connections opened at once, each reading every
  key row (SQLite's page caches, bounded by the pool, not by the keys), and the W warm-up keys used (the page
  caches of the tables a request writes). Dict tables grow by doubling, so the figure moves by a few hundred
  bytes with N.
- ``cache_bytes_per_key``: the Python objects the key cache holds (entries, indexes, the records and policies
  behind them; a shared object counted once), per cached key.
- ``window_state_bytes_per_key`` and ``spend_state_bytes_per_key``: the in-memory limits' objects per key
  (request windows and in-flight count; spend counters), not counting what the key cache holds too.
- the same limits figures after the clock has moved two minutes on (``--no-idle`` skips it): the windows
  whose period is over are gone; the spend counters stay until a day after their period.
- ``first_request_ms``: the median round trip of a key's first request (its key loaded from the store) and of
  its second (cached), one request at a time, over ``--sample`` of the measured keys; ``overhead_ms`` the same
  medians of the gateway's own time (the ``x-keyrelay-overhead-ms`` header).

``--cache-size S`` (KEYRELAY_KEY_CACHE_SIZE; default W + N) below W shows the cache bound: the cache is full
before the measurement, and the process grows by the limits' state only.

Usage: python bench/key_memory.py [-n 10000] [--warm 2000] [--cache-size S] [--sample 500]  → prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.limits.memory import SWEEP_BATCH, MemoryLimits
from keyrelay.store.schema import keys as keys_table
from keyrelay.testing.mock_upstream import MockOptions, MockUpstream
from keyrelay.testing.server import running_server

HERE = Path(__file__).resolve().parent
# Request windows, tpm and a daily spend limit: every per-key structure of the limits exists.
SPEC = json.dumps({"name": "k", "limit": 1000, "limit_reset": "daily", "rate_limits": {"rpm": 1000, "tpm": 10**6}})
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
_NOT_STATE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class StillClock:
    """The gateway's time of day stands still until the bench moves it (``shift``); the monotonic clock runs.

    The measurement takes longer than a minute, and the rpm and tpm windows of the keys used first would end,
    and be dropped, while the last keys are used: their memory, reused, would hide what a key costs.
    """

    def __init__(self) -> None:
        self._start = datetime.now(UTC)
        self.shift = 0.0

    def now_utc(self) -> datetime:
        """The start, plus the shift."""
        return self._start + timedelta(seconds=self.shift)

    def monotonic(self) -> float:
        """The monotonic clock."""
        return time.monotonic()


def rss_kib() -> int:
    """This process's resident set size (KiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def retained(roots: Iterable[object], seen: set[int]) -> int:
    """Bytes of the objects reachable from ``roots`` whose ids are not in ``seen`` (which gains them).

    Each object is counted once however many refer to it (``sys.getsizeof``, GC header included); types,
    modules and functions are not state and are not followed.
    """
    size = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_STATE):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return size


def limits_state(limits: MemoryLimits, seen: set[int]) -> dict[str, float]:
    """The in-memory limits' state per key: windows (and in-flight count) and spend counters."""
    window_keys = max(1, len(limits._keys))
    windows = retained([limits._keys], set(seen))
    spend = retained([limits._spend], set(seen))
    return {
        "keys_with_windows": len(limits._keys),
        "window_state_bytes_per_key": round(windows / window_keys),
        "spend_counters": len(limits._spend),
        "spend_state_bytes_per_key": round(spend / max(1, len(limits._spend))),
    }


async def warm_store(engine: AsyncEngine) -> None:
    """Open the pool's connections at once, each reading every key row: their SQLite page caches fill up now.

    SQLite caches up to 2 MB of pages per connection, and the pool opens up to 15 connections under concurrent
    loads (5 kept, 10 more for a while): memory bounded by the pool, not by the number of keys, and so taken before
    the measurement starts.
    """
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    connections = pool.size() + pool._max_overflow
    gate = asyncio.Event()
    opened = 0

    async def scan() -> None:
        nonlocal opened
        async with engine.connect() as conn:
            opened += 1
            if opened == connections:
                gate.set()
            await gate.wait()
            await conn.execute(select(func.sum(func.length(keys_table.c.display))))  # every row
            await conn.execute(select(func.count()).where(keys_table.c.secret_hash > ""))  # its index

    await asyncio.gather(*(scan() for _ in range(connections)))


def median_ms(values: list[float]) -> float:
    """Median of seconds, in milliseconds."""
    return round(statistics.median(values) * 1000, 3) if values else 0.0


async def main(n: int, warm: int, cache_size: int | None, sample: int, idle: bool) -> None:
    """Measure and print."""
    tmp = Path(tempfile.mkdtemp(prefix="keyrelay-keymem-"))
    database_url = f"sqlite+aiosqlite:///{tmp / 'k.db'}"
    # Created by another process: the garbage of creating them must not be memory this one reuses later.
    make = [sys.executable, str(HERE / "many_keys.py"), database_url, str(warm + n), str(tmp / "keys"), "--spec", SPEC]
    subprocess.run(make, check=True)
    keys = (tmp / "keys").read_text().split()
    clock = StillClock()
    async with MockUpstream(MockOptions(max_recorded=0)) as mock:
        settings = Settings(
            database_url=database_url,
            log_level="warning",
            keepalive_timeout_s=600,  # the client's idle pooled connections must not close under it mid-run
            key_cache_size=cache_size or warm + n,
            providers=(
                ProviderConfig(
                    name="mock",
                    kind="openai",
                    base_url=mock.base_url,
                    models=(
                        ModelConfig(id="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.6")),
                    ),
                ),
            ),
        )
        async with (
            running_server(settings, clock=clock) as server,
            httpx.AsyncClient(base_url=server.base_url) as client,
        ):
            runtime = server.runtime
            writer = server.app.writer
            limits = server.app.limits
            assert writer is not None and isinstance(limits, MemoryLimits)

            async def chat(key: str) -> httpx.Response:
                r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                return r

            async def use(queue: list[str]) -> None:
                """One request per key of ``queue``, 16 at a time; then the records written."""

                async def worker() -> None:
                    while queue:
                        await chat(queue.pop())

                await asyncio.gather(*(worker() for _ in range(16)))
                await writer.flush()
                gc.collect()

            for _ in range(200):
                await chat(keys[0])
            await warm_store(runtime.engine)
            await use(keys[1:warm])
            before = rss_kib()
            measured = keys[warm:]
            # One request at a time for the sampled keys: a key's first request (loaded), then its second (cached).
            trips: dict[str, list[float]] = {"uncached": [], "cached": []}
            overheads: dict[str, list[float]] = {"uncached": [], "cached": []}
            for key in measured[:sample]:
                for kind in ("uncached", "cached"):
                    t0 = time.perf_counter()
                    r = await chat(key)
                    trips[kind].append(time.perf_counter() - t0)
                    overheads[kind].append(float(r.headers["x-keyrelay-overhead-ms"]) / 1000)
            await use(measured[sample:])
            after = rss_kib()
            seen: set[int] = set()
            cache = runtime.cache
            indexes = [cache._by_key, cache._by_account, cache._by_group]
            shared = [cache._accounts, cache._groups, cache._policies]
            cache_bytes = retained([cache._entries, *indexes, *shared], seen)
            result: dict[str, object] = {
                "keys": n,
                "warm_up_keys": warm,
                "key_cache_size": settings.key_cache_size,
                "cached_keys": len(cache),
                "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1),
                "bytes_per_key": round((after - before) * 1024 / n),
                "cache_bytes_per_key": round(cache_bytes / max(1, len(cache))),
                **limits_state(limits, seen),
                "first_request_ms": {kind: median_ms(values) for kind, values in trips.items()},
                "overhead_ms": {kind: median_ms(values) for kind, values in overheads.items()},
                "sampled_keys": len(trips["cached"]),
            }
            if idle:
                clock.shift += 120  # two minutes on: the rpm and tpm windows are over
                await chat(keys[0])  # admissions move the limits' housekeeping clock
                for _ in range(2 + n // SWEEP_BATCH):  # a whole walk of housekeeping, however far the last one got
                    await limits.maintain()
                gc.collect()
                result["after_two_idle_minutes"] = limits_state(limits, seen)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=10_000, help="keys, each used once (default 10000)")
    parser.add_argument("--warm", type=int, default=2000, help="keys used before the measurement (default 2000)")
    parser.add_argument("--cache-size", type=int, default=None, help="KEYRELAY_KEY_CACHE_SIZE (default: n)")
    parser.add_argument("--sample", type=int, default=500, help="keys whose first request is timed (default 500)")
    parser.add_argument("--no-idle", dest="idle", action="store_false", help="skip the two idle minutes")
    args = parser.parse_args()
    asyncio.run(main(args.n, max(1, args.warm), args.cache_size, min(args.sample, args.n), args.idle))
