"""A serving process's young-generation threshold (keyrelay/app.py) holds a whole flush of distinct keys' records.

Between two flushes the usage writer keeps every queued record and, per key, its pending spend and last use;
records of many distinct keys add containers that only the next flush frees. A collection of the young
generation while they wait finds nothing to free and walks every one of them (and what each points to): under
load with 100,000 keys in rotation that was 7-9 collections in 5 s at the old threshold of 10,000.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from datetime import UTC, datetime

from keyrelay.app import _GC_YOUNG_THRESHOLD
from keyrelay.runtime import Runtime
from keyrelay.usage.writer import UsageWriter
from tests.records import daily_record

NOW = datetime(2026, 12, 7, 5, tzinfo=UTC)
MAX_BATCH = 5000  # UsageWriter's default: the most records one flush writes


def counting_collections(started: list[int]) -> Callable[[str, dict[str, int]], None]:
    """A ``gc.callbacks`` entry appending the generation of each collection that starts."""

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    return on_gc


async def test_a_full_flush_of_distinct_keys_triggers_no_collection(runtime: Runtime) -> None:
    writer = UsageWriter(runtime.engine, max_batch=MAX_BATCH)
    writer.enqueue(daily_record("warm-up", NOW, ("0" * 64, 1, 1), 10))
    await writer.flush()  # the connection, the compiled statements: built once, outside what is counted
    started: list[int] = []
    on_gc = counting_collections(started)
    threshold = gc.get_threshold()
    gc.collect()  # the young generation's count starts at zero
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *threshold[1:])
    gc.callbacks.append(on_gc)
    try:
        for n in range(MAX_BATCH):
            key_hash = f"{n + 1:064x}"
            writer.enqueue(daily_record(f"req_{n:05d}", NOW, (key_hash, 1, 1), 10))
            writer.touch(key_hash, NOW, "192.0.2.1")
        assert await writer.flush() == MAX_BATCH
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*threshold)
    assert started == []
