"""Time to first byte of paced streams, direct and through the gateway in turn: prints one JSON line.

Usage: python bench/ttfb.py DIRECT_URL GATEWAY_URL KEY MODEL -n 150 --warmup 10

Requests go one at a time, alternating between the mock called directly and the mock called through
the gateway, so that both see the same machine (a shared VM drifts in speed). The time runs from
sending the request to the first body bytes of the SSE answer (the first event); the difference of the
medians is what the gateway adds before a client sees anything, for the framing the model selects.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import orjson


async def first_byte(session: aiohttp.ClientSession, url: str, body: bytes, key: str) -> float:
    """Seconds until the first body bytes of one streamed answer (the rest is read and dropped)."""
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        await resp.content.readany()
        first = time.perf_counter() - t0
        await resp.read()
    return first


def summary(times: list[float]) -> dict[str, float]:
    """p50 and p90 in milliseconds."""
    times = sorted(times)
    return {"p50_ms": statistics.median(times) * 1000, "p90_ms": times[int(0.9 * (len(times) - 1))] * 1000}


async def main() -> None:
    """Measure and print ``{"direct": {...}, "gateway": {...}}``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("direct_url")
    parser.add_argument("gateway_url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("-n", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    body = orjson.dumps({"model": args.model, "messages": [{"role": "user", "content": "Say hi."}], "stream": True})
    direct: list[float] = []
    gateway: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(args.warmup + args.n):
            d = await first_byte(session, args.direct_url, body, "x")
            g = await first_byte(session, args.gateway_url, body, args.key)
            if i >= args.warmup:
                direct.append(d)
                gateway.append(g)
    sys.stdout.write(orjson.dumps({"direct": summary(direct), "gateway": summary(gateway)}).decode() + "\n")


if __name__ == "__main__":
    asyncio.run(main())
