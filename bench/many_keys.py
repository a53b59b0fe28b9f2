"""Many keys quickly, for the benchmarks: copies of one key the service issued, inserted in one transaction.

The template key is created by ``KeyService.create`` (validation, field values, audit entry). Its copies take
every column of its row, with a fresh secret, hash and display form each, and go into the keys table with one
``executemany`` per 10,000 in one transaction: 100,000 keys in seconds rather than the minutes that one service
call per key (each its own transaction and audit entry) takes. The copies have no audit entries; nothing else
differs.

Usage: python bench/many_keys.py DATABASE_URL COUNT OUT_FILE [--spec JSON] [--email E]
  → COUNT keys of the spec (a KeyCreate body) on the account E (created if missing), one plaintext per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType, display_form, generate
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.records import AccountRecord, KeyRecord
from keyrelay.store.schema import keys

ACTOR = Actor.system("bench")


async def copy_key(engine: AsyncEngine, template: KeyRecord, count: int, *, batch: int = 10_000) -> list[str]:
    """Insert ``count`` copies of ``template`` (new secrets), all in one transaction; returns their plaintexts."""
    columns = [c.name for c in keys.columns if c.name != "id"]  # each copy numbered by the store (keys.id)
    base = {name: getattr(template, name) for name in columns}
    plaintexts: list[str] = []
    rows: list[dict[str, object]] = []
    for _ in range(count):
        plaintext = generate(KeyType(template.key_type))
        digest = key_hash(plaintext)
        plaintexts.append(plaintext)
        rows.append({**base, "hash": digest, "secret_hash": digest, "display": display_form(plaintext)})
    async with engine.begin() as conn:
        for start in range(0, len(rows), batch):
            await conn.execute(keys.insert(), rows[start : start + batch])
    return plaintexts


async def issue_keys(runtime: Runtime, account: AccountRecord, spec: KeyCreate, count: int) -> list[str]:
    """``count`` keys of ``spec`` on ``account``: the first through the service, the others its copies."""
    first = await runtime.key_service.create(account=account, spec=spec, actor=ACTOR)
    return [first.plaintext, *await copy_key(runtime.engine, first.record, count - 1)]


async def main(url: str, count: int, out: Path, spec: KeyCreate, email: str) -> None:
    """Create the keys and write their plaintexts."""
    runtime = await open_runtime(Settings(database_url=url))
    try:
        account = await runtime.accounts.get_by_email(email=email)
        if account is None:
            account = await runtime.account_service.create_account(AccountCreate(email=email), actor=ACTOR)
        plaintexts = await issue_keys(runtime, account, spec, count)
    finally:
        await runtime.close()
    out.write_text("".join(f"{p}\n" for p in plaintexts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--spec", default='{"name": "bench"}', help="the keys' KeyCreate body (JSON)")
    parser.add_argument("--email", default="many@example.com", help="their account (created if missing)")
    args = parser.parse_args()
    spec = KeyCreate.model_validate(json.loads(args.spec))
    asyncio.run(main(args.url, args.count, args.out, spec, args.email))
