"""A usage flush cancelled mid-transaction (a shutdown) leaves the store unlocked: the final flush writes the rest.

An aiosqlite statement cancelled mid-way went on in its thread with its transaction left open, so SQLite stayed
locked and the shutdown's flush failed after its 30 s busy timeout (found by ``make bench``: 10,812 records left
to the journal). The writer now finishes a batch it started before the cancellation takes effect.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.runtime import open_runtime
from keyrelay.store.schema import usage_records
from keyrelay.testing.poll import poll_until
from keyrelay.usage.writer import UsageWriter
from tests.records import usage_record

RECORDS = 30_000  # one batch: its insert runs long enough in the driver's thread to be cancelled mid-way


async def test_a_flush_cancelled_mid_write_leaves_the_store_unlocked(tmp_path: Path) -> None:
    rt = await open_runtime(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"))
    try:
        writer = UsageWriter(rt.engine, max_batch=RECORDS)
        now = datetime(2026, 6, 1, tzinfo=UTC)
        for i in range(RECORDS):
            writer.enqueue(usage_record(f"req-{i}", now, key_hash="h", account_id=1))
        flushing = asyncio.create_task(writer.flush())

        async def writing() -> bool:
            return writer._lock.locked()  # a batch is being written

        await poll_until(writing, what="the flush writing", timeout=10, interval=0.001)
        await asyncio.sleep(0.3)  # into the insert, in the driver's thread
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
        await writer.close()  # the shutdown's flush
        async with rt.engine.connect() as conn:
            stored = await conn.scalar(select(func.count()).select_from(usage_records))
        assert stored == RECORDS
        assert writer.queued == 0
    finally:
        await rt.close()
