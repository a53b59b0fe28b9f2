"""Closed-loop HTTP load generator (aiohttp): C connections for D seconds, prints one JSON line.

Usage: python bench/loadgen.py URL KEY MODEL --stream 0|1 -c 32 -d 5 --warmup 1 --wire openai|anthropic
                               [--keys FILE [--once]]

``--wire anthropic`` sends Anthropic Messages bodies (to a /v1/messages URL) with ``x-api-key``; ``--wire gemini``
sends Gemini generateContent bodies with ``x-goog-api-key`` (the URL names the model and the method; MODEL is unused).

``--keys FILE`` (one key a line; KEY is then unused): the keys in rotation, each request of any connection taking
the next one. ``--once`` with it: each key once, in order, then stop (no warm-up, no duration): the first use of
every key.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson

# The header that carries the key on each wire, and what precedes the key in it.
CREDENTIAL = {"openai": ("authorization", "Bearer "), "anthropic": ("x-api-key", ""), "gemini": ("x-goog-api-key", "")}


def rotation(base: dict[str, str], wire: str, keys: list[str], once: bool) -> Callable[[], dict[str, str] | None]:
    """Each call: the headers of the next request, with the next key in turn; None when ``once`` used them all."""
    name, prefix = CREDENTIAL[wire]
    turn = itertools.count()
    count = len(keys)

    def headers() -> dict[str, str] | None:
        n = next(turn)
        if once and n >= count:
            return None
        return {**base, name: prefix + keys[n % count]}

    return headers


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    next_headers: Callable[[], dict[str, str] | None],
    stop: float,
    warm_until: float,
    lat: list[float],
    counts: dict[str, int],
) -> None:
    while True:
        t0 = time.perf_counter()
        if t0 >= stop:
            return
        headers = next_headers()
        if headers is None:
            return
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        t1 = time.perf_counter()
        counts["all"] += 1  # warm-up included: what the server's CPU time is divided by
        if t0 >= warm_until:
            if ok:
                lat.append(t1 - t0)
                counts["ok"] += 1
            else:
                counts["err"] += 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("--stream", type=int, default=0)
    parser.add_argument("-c", type=int, default=32)
    parser.add_argument("-d", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--wire", choices=("openai", "anthropic", "gemini"), default="openai")
    parser.add_argument("--keys", type=Path, default=None, help="keys in rotation, one a line (KEY unused)")
    parser.add_argument("--once", action="store_true", help="with --keys: each key once, then stop")
    args = parser.parse_args()
    payload: dict[str, object] = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 64,
    }
    if args.stream:
        payload["stream"] = True
        if args.wire == "openai":
            payload["stream_options"] = {"include_usage": True}
    if args.wire == "gemini":
        payload = {
            "contents": [{"role": "user", "parts": [{"text": "Say hi."}]}],
            "generationConfig": {"maxOutputTokens": 64},
        }
    body = orjson.dumps(payload)
    if args.wire == "gemini":
        headers = {"x-goog-api-key": args.key, "content-type": "application/json"}
    elif args.wire == "anthropic":
        headers = {"x-api-key": args.key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    else:
        headers = {"authorization": f"Bearer {args.key}", "content-type": "application/json"}
    next_headers: Callable[[], dict[str, str] | None] = lambda: headers  # noqa: E731 (one key: the same headers)
    if args.keys is not None:
        next_headers = rotation(headers, args.wire, args.keys.read_text().split(), args.once)
    lat: list[float] = []
    counts = {"ok": 0, "err": 0, "all": 0}
    start = time.perf_counter()
    warm_until = start if args.once else start + args.warmup
    stop = float("inf") if args.once else warm_until + args.d
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.c)) as session:
        await asyncio.gather(
            *(worker(session, args.url, body, next_headers, stop, warm_until, lat, counts) for _ in range(args.c))
        )
    elapsed = time.perf_counter() - warm_until
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    result = {
        "req_s": counts["ok"] / (elapsed if args.once else args.d),
        "errors": counts["err"],
        "requests": counts["all"],
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(lat) * 1000 if lat else 0.0,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
