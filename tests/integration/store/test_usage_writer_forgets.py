"""After a flush the usage writer holds nothing per key: its pending costs and last uses were written."""

from __future__ import annotations

from datetime import UTC, datetime

from keyrelay.config import Settings
from keyrelay.runtime import open_runtime
from keyrelay.usage.writer import UsageWriter
from tests.integration.store.conftest import keys_of_one_account
from tests.records import usage_record

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


async def test_a_flush_leaves_no_per_key_state(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account, hashes = await keys_of_one_account(runtime, "w@example.com", 3)
        writer = UsageWriter(runtime.engine)
        for n, key_hash in enumerate(hashes):
            writer.enqueue(usage_record(f"r{n}", NOW, key_hash=key_hash, account_id=account.id))
            writer.touch(key_hash, NOW, "127.0.0.1")
        grown = writer._pending
        assert writer.pending("key", hashes[0], "life") == 10
        assert await writer.flush() == 3
        # Emptied and replaced: a dict keeps the table it grew to, one entry per key used.
        assert writer._pending == {} and writer._pending is not grown
        assert not writer._last_used
        assert writer.pending("key", hashes[0], "life") == 0
        key = await runtime.keys.get(key_hash=hashes[0])
    finally:
        await runtime.close()
    assert key is not None and key.usage_micros == 10 and key.last_used_at == NOW
