"""Create the benchmark's API key with every limit and rule set, so every check runs on each request.

Account balance, group quota, key spend limit, all four request windows, tpm, max_concurrent, model
and provider whitelists, IP allow and deny lists, region pin and expiry: all set, all generous.

Usage: python bench/make_key.py DATABASE_URL  → prints the key.
       python bench/make_key.py DATABASE_URL --copies N --out FILE  → also N more keys of the same account and
       rules (bench/many_keys.py: copies of the first, in one transaction), one a line in FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from many_keys import copy_key

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate, GroupCreate

ACTOR = Actor.system("bench")  # who the audit log names for the benchmark's account, group and key


async def main(url: str, copies: int, out: Path | None) -> None:
    """Create the key (and its copies) and print it."""
    runtime = await open_runtime(Settings(database_url=url))
    try:
        group = await runtime.groups.get_by_name(name="bench")
        if group is None:
            await runtime.account_service.create_group(
                GroupCreate(name="bench", price_multiplier=1, quota=1_000_000, quota_reset="monthly"), actor=ACTOR
            )
        account = await runtime.accounts.get_by_email(email="bench@example.com")
        if account is None:
            account = await runtime.account_service.create_account(
                AccountCreate(email="bench@example.com", group="bench", balance=1_000_000), actor=ACTOR
            )
        spec = KeyCreate.model_validate(
            {
                "name": "bench",
                "limit": 1_000_000,
                "limit_reset": "monthly",
                "expires_in_days": 30,
                "rate_limits": {
                    "rpm": 10_000_000,
                    "per_5h": 100_000_000,
                    "per_1d": 100_000_000,
                    "per_7d": 100_000_000,
                    "tpm": 1_000_000_000,
                    "max_concurrent": 100_000,
                },
                "allowed_models": [
                    "gpt-4o-mini",
                    "gpt-4o-mini-paced",
                    "gpt-4o-mini-paced-framing-crlf",
                    "gpt-4o-mini-paced-framing-cr",
                    "claude-bench",
                    "gemini-bench",
                ],
                "allowed_providers": ["mock", "mock-anthropic", "mock-gemini"],
                "ip_allowlist": ["127.0.0.1", "::1"],
                "ip_denylist": ["10.0.0.0/8"],
                "region": "us",
            }
        )
        issued = await runtime.key_service.create(account=account, spec=spec, actor=ACTOR)
        if out is not None:
            out.write_text("".join(f"{k}\n" for k in await copy_key(runtime.engine, issued.record, copies)))
        sys.stdout.write(issued.plaintext + "\n")
    finally:
        await runtime.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--copies", type=int, default=0, help="more keys like it (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="where the copies go, one a line")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.copies, args.out))
