"""A usage flush cancelled while its batch is being written (a shutdown) finishes that batch first.

Shutdown cancels the periodic flush; a statement cancelled while it runs in the database driver's thread goes on
there regardless, so the writer must not give up on the batch half-way: the batch is written and taken off the
queue, then the cancellation is raised, and the shutdown's own flush writes the rest.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from keyrelay.runtime import Runtime
from keyrelay.store.schema import usage_records
from keyrelay.usage.records import UsageRecord
from keyrelay.usage.writer import UsageWriter
from tests.records import usage_record

NOW = datetime(2026, 6, 1, tzinfo=UTC)


async def test_a_flush_cancelled_mid_batch_finishes_the_batch(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = UsageWriter(runtime.engine, max_batch=10)
    for i in range(25):
        writer.enqueue(usage_record(f"req-{i}", NOW, key_hash="h", account_id=1))
    writing, release = asyncio.Event(), asyncio.Event()
    write = writer._write

    async def slow_write(batch: list[UsageRecord], *args: object, **kwargs: object) -> int:
        writing.set()
        await release.wait()  # the statement still running when the cancellation arrives
        return await write(batch, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "_write", slow_write)
    flushing = asyncio.create_task(writer.flush())
    await writing.wait()
    flushing.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert writer.queued == 15  # the first batch of 10 was written and taken off the queue; no other began
    monkeypatch.setattr(writer, "_write", write)
    await writer.close()  # the shutdown's flush
    async with runtime.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(usage_records)) == 25
    assert writer.queued == 0
