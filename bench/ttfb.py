"""Time to first byte of paced streams, one request at a time: prints one JSON line.

Usage: python bench/ttfb.py URL KEY MODEL -n 60 --warmup 5

The time runs from sending the request to the first body bytes of the SSE answer (the first event),
so comparing the mock called directly with the mock called through the gateway gives what the gateway
adds before a client sees anything, for the framing the model name selects.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import orjson


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    body = orjson.dumps({"model": args.model, "messages": [{"role": "user", "content": "Say hi."}], "stream": True})
    headers = {"authorization": f"Bearer {args.key}", "content-type": "application/json"}
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(args.warmup + args.n):
            t0 = time.perf_counter()
            async with session.post(args.url, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                await resp.content.readany()
                first = time.perf_counter() - t0
                await resp.read()
            if i >= args.warmup:
                times.append(first)
    times.sort()
    result = {
        "p50_ms": statistics.median(times) * 1000,
        "p90_ms": times[int(0.9 * (len(times) - 1))] * 1000,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    asyncio.run(main())
