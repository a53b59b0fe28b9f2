"""Memory per key used: the growth of one gateway process after one request with each of N keys.

Creates N keys (each with request windows, tpm and a spend limit, so that every per-key structure exists) on a
fresh SQLite database, serves them from one in-process gateway with in-memory limits and the mock upstream,
sends one chat request per key, writes the usage records, and reports the resident set size (VmRSS) before and
after, per key. The first 200 requests use one key only, so that everything a first request builds is there
before the measurement starts.

Usage: python bench/key_memory.py [-n 5000]  → prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
from pathlib import Path

import httpx

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import running_server

ACTOR = Actor.system("bench")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def rss_kib() -> int:
    """This process's resident set size (KiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main(n: int) -> None:
    """Measure and print."""
    tmp = Path(tempfile.mkdtemp(prefix="keyrelay-keymem-"))
    async with MockUpstream() as mock:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp / 'k.db'}",
            log_level="warning",
            usage_flush_interval_s=3600,
            providers=(
                ProviderConfig(
                    name="mock",
                    kind="openai",
                    base_url=mock.base_url,
                    models=(ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60"),),
                ),
            ),
        )
        async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url) as client:
            runtime = server.runtime
            account = await runtime.account_service.create_account(AccountCreate(email="m@example.com"), actor=ACTOR)
            spec = KeyCreate.model_validate(
                {"name": "k", "limit": 1000, "limit_reset": "daily", "rate_limits": {"rpm": 1000, "tpm": 10**6}}
            )
            keys = [(await runtime.key_service.create(account=account, spec=spec, actor=ACTOR)).plaintext for _ in range(n)]
            writer = server.app.writer
            assert writer is not None

            async def chat(key: str) -> None:
                r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text

            for _ in range(200):
                await chat(keys[0])
            await writer.flush()
            gc.collect()
            before = rss_kib()
            queue = list(keys)

            async def worker() -> None:
                while queue:
                    await chat(queue.pop())

            await asyncio.gather(*(worker() for _ in range(16)))
            await writer.flush()
            gc.collect()
            after = rss_kib()
            result = {
                "keys": n,
                "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1),
                "bytes_per_key": round((after - before) * 1024 / n),
                "cached_keys": len(runtime.cache),
            }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5000)
    asyncio.run(main(parser.parse_args().n))
