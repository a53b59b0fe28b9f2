"""Admission cost: time one `admit` + `settle` of a request with every limit set, per backend.

Prints p50/p99 microseconds per admission for the in-process backend and for Redis (when
KEYRELAY_REDIS_URL or --redis is given), and the number of Redis commands per admission read from
INFO commandstats, which shows the one-round-trip property.

Usage: python bench/admission.py [--redis redis://127.0.0.1:6379/0] [-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time

from redis.asyncio import Redis

from keyrelay.limits.backend import AdmissionRequest, LimitsBackend, RequestWindow, SpendLevel
from keyrelay.limits.memory import MemoryLimits
from keyrelay.limits.redis import RedisLimits

WINDOWS = (
    RequestWindow("rpm", 60, 10**9),
    RequestWindow("per_5h", 5 * 3600, 10**9),
    RequestWindow("per_1d", 86_400, 10**9),
    RequestWindow("per_7d", 7 * 86_400, 10**9),
)
LEVELS = (
    SpendLevel("account", "1", "life", 10**15, 0, None),
    SpendLevel("group", "1", "monthly:2026-11-01", 10**15, 0, 86_400.0),
    SpendLevel("key", "bench", "daily:2026-11-23", 10**15, 0, 3600.0),
)


def request(i: int) -> AdmissionRequest:
    return AdmissionRequest(
        key_hash="bench",
        request_id=f"r{i}",
        now=time.time(),
        cost_micros=300,
        spend=LEVELS,
        windows=WINDOWS,
        tpm=10**9,
        max_tokens=100,
        max_concurrent=10**6,
    )


async def measure(backend: LimitsBackend, n: int) -> dict[str, float]:
    admit_us: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        admission = await backend.admit(request(i))
        admit_us.append((time.perf_counter() - t0) * 1e6)
        await backend.settle(admission.reservation, cost_micros=200, tokens=50, now=time.time())
    admit_us.sort()
    return {
        "n": n,
        "admit_p50_us": admit_us[n // 2],
        "admit_p99_us": admit_us[int(n * 0.99)],
        "admit_mean_us": statistics.fmean(admit_us),
    }


async def redis_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_evalsha"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default=None)
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    results = {"memory": await measure(MemoryLimits(), args.n)}
    if args.redis:
        client = Redis.from_url(args.redis)
        prefix = f"kr-bench-{secrets.token_hex(4)}"
        backend = RedisLimits(client, prefix=prefix)
        n = max(1000, args.n // 4)
        await measure(backend, 200)  # load the scripts, warm the connection
        before = await redis_calls(client)
        results["redis"] = await measure(backend, n)
        # admit + settle are one EVALSHA each: two per request in all, one of them before the upstream call.
        results["redis"]["evalsha_per_admission_and_settle"] = (await redis_calls(client) - before) / n
        async for name in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(name)
        await backend.close()  # its lean connection and the client
    sys.stdout.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
