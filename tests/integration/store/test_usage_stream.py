"""The Redis usage stream: the settlement appends the record with its charge; any process drains it exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.gateway.call import Outcome
from keyrelay.gateway.settlement import Settlement
from keyrelay.keys.spec import KeyCreate
from keyrelay.limits.backend import AdmissionRequest, SpendLevel
from keyrelay.limits.periods import spend_period
from keyrelay.limits.redis import RedisLimits
from keyrelay.metrics import Metrics
from keyrelay.protocols.base import InboundRequest
from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.openai import Operation
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.engine import create_engine
from keyrelay.store.schema import usage_records
from keyrelay.testing.poll import poll_until
from keyrelay.usage.records import UsageRecord, record_from_json, record_to_json
from keyrelay.usage.stream import UsageStream, _after
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.records import usage_record
from tests.unit.gateway.test_authorize_and_bounds import principal
from tests.unit.gateway.test_pricing import channel
from tests.unit.limits.conftest import REDIS_URL, drop_prefix, redis_client_or_skip

pytestmark = pytest.mark.redis
AT = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


@dataclass
class Setup:
    runtime: Runtime
    redis: Redis
    prefix: str
    key_hash: str
    account_id: int

    @property
    def key(self) -> str:
        return f"{self.prefix}:usage"

    def record(self, n: int, cost: int = 100) -> UsageRecord:
        return usage_record(
            f"req_stream{n:04d}",
            AT,
            key_hash=self.key_hash,
            account_id=self.account_id,
            key_period=spend_period("daily", AT),
            cost_micros=cost,
        )

    async def add(self, *records: UsageRecord) -> None:
        for record in records:
            await self.redis.xadd(self.key, {b"r": record_to_json(record)})

    async def stored(self) -> tuple[int, int, int]:
        """(records in the store, the key's usage, the account's spent), micro-dollars."""
        async with self.runtime.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
        key = await self.runtime.keys.get(key_hash=self.key_hash)
        owner = await self.runtime.accounts.get(account_id=self.account_id)
        assert key is not None and owner is not None
        return count, key.usage_micros, owner.spent_micros


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[Setup]:
    redis = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account = await runtime.account_service.create_account(AccountCreate(email="s@example.com"), actor=TEST_ACTOR)
        issued = await runtime.key_service.create(account=account, spec=KeyCreate(name="s"), actor=TEST_ACTOR)
        yield Setup(runtime, redis, prefix, issued.record.hash, account.id)
    finally:
        await runtime.close()
        await drop_prefix(redis, prefix)
        await redis.aclose()


async def test_a_drain_writes_each_record_once_and_empties_the_stream(setup: Setup) -> None:
    writer = UsageWriter(setup.runtime.engine)
    records = [setup.record(n) for n in range(7)]
    await setup.add(*records)
    # Two were written and committed by a drainer that died before its XDEL: still in the stream, and in the store.
    assert await writer.replay(records[:2]) == 2
    stream = UsageStream(setup.redis, writer, key=setup.key, batch=3)
    assert await stream.drain() == 5
    assert await stream.pending() == 0
    assert await setup.stored() == (7, 700, 700)
    await setup.add(records[6])  # delivered twice (a replayed settlement): written once
    assert await stream.drain() == 0
    assert await setup.stored() == (7, 700, 700)


async def test_one_process_drains_at_a_time(setup: Setup) -> None:
    writer = UsageWriter(setup.runtime.engine)
    await setup.add(setup.record(1))
    other = setup.redis.lock(setup.key + ":drain", timeout=30, blocking=False)
    assert await other.acquire()
    stream = UsageStream(setup.redis, writer, key=setup.key)
    assert await stream.drain() == 0  # another process is draining
    assert await stream.pending() == 1
    await other.release()
    assert await stream.drain() == 1
    assert await setup.stored() == (1, 100, 100)


async def test_an_entry_that_is_no_record_is_set_aside_not_lost(setup: Setup) -> None:
    writer = UsageWriter(setup.runtime.engine)
    await setup.redis.xadd(setup.key, {b"r": b'{"not": "a record"}'})
    await setup.redis.xadd(setup.key, {b"x": b"1"})
    await setup.add(setup.record(1))
    assert await UsageStream(setup.redis, writer, key=setup.key).drain() == 1
    rejected = await setup.redis.xrange(setup.key + ":rejected")
    assert [fields for _, fields in rejected] == [{b"r": b'{"not": "a record"}'}, {b"x": b"1"}]
    assert await setup.redis.xlen(setup.key) == 0


async def test_a_newer_keyrelays_entries_are_left_for_a_newer_drainer(setup: Setup) -> None:
    """A rolling upgrade: a newer keyrelay's records (more than a batch of them, first in the stream) stay in the
    stream, untouched, and this drainer writes the records it can read behind them."""
    writer = UsageWriter(setup.runtime.engine)
    newer = [orjson.dumps({**orjson.loads(record_to_json(setup.record(n))), "tenant": "t1"}) for n in (90, 91, 92)]
    for line in newer[:2]:
        await setup.redis.xadd(setup.key, {b"r": line})
    await setup.add(setup.record(1))
    await setup.redis.xadd(setup.key, {b"r": newer[2]})
    await setup.redis.xadd(setup.key, {b"r": b'{"not": "a record"}'})  # still set aside
    await setup.add(setup.record(2), setup.record(3))
    stream = UsageStream(setup.redis, writer, key=setup.key, batch=2)
    assert await stream.drain() == 3
    assert await setup.stored() == (3, 300, 300)
    assert [fields[b"r"] for _, fields in await setup.redis.xrange(setup.key)] == newer
    assert [fields for _, fields in await setup.redis.xrange(setup.key + ":rejected")] == [
        {b"r": b'{"not": "a record"}'}
    ]
    assert await stream.drain() == 0  # drained again: they stay, nothing is written twice
    assert await setup.redis.xlen(setup.key) == 3 and await setup.stored() == (3, 300, 300)


async def test_a_batch_is_read_and_deleted_a_few_entries_a_command(setup: Setup) -> None:
    """A batch (one store transaction) spans several XRANGE and XDEL commands; ``max_batches`` counts batches."""
    writer = UsageWriter(setup.runtime.engine)
    newer = orjson.dumps({**orjson.loads(record_to_json(setup.record(90))), "v": 2})
    await setup.add(*(setup.record(n) for n in range(1, 4)))
    await setup.redis.xadd(setup.key, {b"r": newer})
    await setup.add(*(setup.record(n) for n in range(4, 8)))
    stream = UsageStream(setup.redis, writer, key=setup.key, batch=5, per_command=2)
    counts: list[tuple[str, int]] = []  # (command, entries read or deleted) in order
    xrange, pipeline = setup.redis.xrange, setup.redis.pipeline

    async def counted_xrange(name: str, min: str = "-", max: str = "+", count: int | None = None) -> Any:
        got = await xrange(name, min=min, max=max, count=count)
        counts.append(("xrange", len(got)))
        return got

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        xdel = pipe.xdel

        def counted_xdel(name: str, *ids: bytes) -> Any:
            counts.append(("xdel", len(ids)))
            return xdel(name, *ids)

        setattr(pipe, "xdel", counted_xdel)  # noqa: B010
        return pipe

    setattr(setup.redis, "xrange", counted_xrange)  # noqa: B010
    setattr(setup.redis, "pipeline", counted_pipeline)  # noqa: B010
    assert await stream.drain(max_batches=1) == 4  # five entries read (2 + 2 + 1), one of them left
    assert counts == [("xrange", 2), ("xrange", 2), ("xrange", 1), ("xdel", 2), ("xdel", 2)]
    counts.clear()
    assert await setup.stored() == (4, 400, 400)
    assert await stream.drain() == 3
    # From the oldest entry again (the newer one, read and left), to the end of the stream.
    assert counts == [("xrange", 2), ("xrange", 2), ("xrange", 0), ("xdel", 2), ("xdel", 1)]
    assert await setup.stored() == (7, 700, 700)
    assert [fields[b"r"] for _, fields in await xrange(setup.key)] == [newer]


def test_the_next_id_of_a_stream_entry() -> None:
    assert _after(b"1700000000000-0") == "1700000000000-1"
    assert _after(b"1700000000000-41") == "1700000000000-42"
    assert _after(b"5-18446744073709551615") == "6-0"


async def test_a_store_failure_leaves_the_records_in_the_stream(setup: Setup, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")  # a database with no tables
    await setup.add(setup.record(1))
    await setup.redis.xadd(setup.key, {b"r": b"[]"})  # no record: set aside once, however often the drain fails
    await setup.add(setup.record(2))
    try:
        for _ in range(3):
            assert await UsageStream(setup.redis, UsageWriter(engine), key=setup.key).drain() == 0
    finally:
        await engine.dispose()
    assert await setup.redis.xlen(setup.key) == 2
    assert await setup.redis.xlen(setup.key + ":rejected") == 1
    writer = UsageWriter(setup.runtime.engine)
    assert await UsageStream(setup.redis, writer, key=setup.key).drain() == 2  # the lock was released
    assert await setup.stored() == (2, 200, 200)


async def test_settle_appends_the_record_in_the_same_step_as_the_charge(setup: Setup) -> None:
    limits = RedisLimits.from_url(REDIS_URL, prefix=setup.prefix)
    level = SpendLevel("key", setup.key_hash, "life", 10_000, 0, None)
    request = AdmissionRequest(setup.key_hash, "req_a", 0.0, 500, (level,), (), None, 0, None)
    try:
        await check_settle(setup, limits, level, request)
    finally:
        await limits.close()


async def check_settle(setup: Setup, limits: RedisLimits, level: SpendLevel, request: AdmissionRequest) -> None:
    admission = await limits.admit(request)
    line = record_to_json(setup.record(1, cost=120))
    assert await limits.settle(admission.reservation, cost_micros=120, tokens=0, now=0.0, record=line)
    [(_, fields)] = await setup.redis.xrange(setup.key)
    assert record_from_json(fields[b"r"]) == setup.record(1, cost=120)
    assert await limits.spent(level) == 120
    # Without a record, nothing is appended (a settlement replayed after Redis was away).
    admission = await limits.admit(AdmissionRequest(setup.key_hash, "req_b", 0.0, 500, (level,), (), None, 0, None))
    assert not await limits.settle(admission.reservation, cost_micros=30, tokens=0, now=0.0)
    assert await setup.redis.xlen(setup.key) == 1 and await limits.spent(level) == 150


async def test_settle_gives_the_record_back_when_redis_is_away(setup: Setup) -> None:
    limits = RedisLimits.from_url(REDIS_URL, prefix=setup.prefix)
    level = SpendLevel("key", setup.key_hash, "life", 10_000, 0, None)
    try:
        admission = await limits.admit(AdmissionRequest(setup.key_hash, "req_a", 0.0, 500, (level,), (), None, 0, None))
    finally:
        await limits.close()
    away = RedisLimits(Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), prefix=setup.prefix)
    line = record_to_json(setup.record(1, cost=120))
    try:
        assert not await away.settle(admission.reservation, cost_micros=120, tokens=0, now=0.0, record=line)
        assert away.deferred == 1  # the charge is replayed later, without the record (the caller journals it)
    finally:
        await away.close()
    assert await setup.redis.xlen(setup.key) == 0


async def test_a_record_the_store_refuses_is_set_aside_and_holds_up_no_other(setup: Setup) -> None:
    writer = UsageWriter(setup.runtime.engine)
    refused = replace(setup.record(2), key_name=None)  # type: ignore[arg-type]  # NOT NULL in the store
    await setup.add(setup.record(1), refused, setup.record(3))
    assert await UsageStream(setup.redis, writer, key=setup.key).drain() == 2
    assert await setup.stored() == (2, 200, 200)
    [(_, fields)] = await setup.redis.xrange(setup.key + ":rejected")
    assert fields == {b"r": record_to_json(refused)}
    assert await setup.redis.xlen(setup.key) == 0


async def test_a_drain_can_be_bounded(setup: Setup) -> None:
    writer = UsageWriter(setup.runtime.engine)
    await setup.add(*(setup.record(n) for n in range(7)))
    stream = UsageStream(setup.redis, writer, key=setup.key, batch=2)
    assert await stream.drain(max_batches=2) == 4
    assert await stream.pending() == 3
    assert await stream.drain() == 3


async def test_a_charge_cancelled_midway_still_settles_and_keeps_its_record(setup: Setup) -> None:
    """A request cancelled (client gone, shutdown) while its settlement is on the way to Redis loses nothing.

    The backend is new, so its first settlement waits for the script to load: the cancel lands before anything
    reached Redis. The settlement still happens (the in-flight slot is free again) with its record in the stream.
    """
    limits = RedisLimits.from_url(REDIS_URL, prefix=setup.prefix)
    settlement = Settlement(limits, UsageWriter(setup.runtime.engine), Metrics())
    level = SpendLevel("key", setup.key_hash, "life", 10_000, 0, None)
    try:
        admission = await limits.admit(AdmissionRequest("h", "req_c1", 0.0, 500, (level,), (), None, 0, 1))
        limits._shas.clear()  # as after a restart of this process: the settle script is not loaded yet
        request = InboundRequest(Operation.CHAT, "m", False, False, None, b"{}", {})
        outcome = Outcome(status=200, usage=Usage(3, 4))
        charge = asyncio.ensure_future(
            settlement.charge(principal(None, None), request, admission.reservation, outcome, "req_c1", None, 0.0, AT)
        )
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        charge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await charge
        await poll_until(lambda: setup.redis.xlen(setup.key), lambda n: n == 1, what="the record in the stream")
        [(_, fields)] = await setup.redis.xrange(setup.key)
        assert record_from_json(fields[b"r"]).request_id == "req_c1"
        await limits.admit(AdmissionRequest("h", "req_c2", 0.0, 500, (level,), (), None, 0, 1))  # the slot is free
    finally:
        await limits.close()


async def test_a_charge_cancelled_while_redis_settles_it_settles_once_with_both_copies_written_once(
    setup: Setup,
) -> None:
    """Cancelled while its settlement is on the wire (script loaded, connection open: no task, no load on the way).

    The cancellation takes effect once Redis answered: the reservation is settled (the in-flight slot is free, the
    cost charged once), the record is in the stream, and the local writer holds a copy too (the request cannot know
    whether Redis took it). Both copies reach the store as one record, charged once.
    """
    limits = RedisLimits.from_url(REDIS_URL, prefix=setup.prefix)
    writer = UsageWriter(setup.runtime.engine)
    settlement = Settlement(limits, writer, Metrics())
    level = SpendLevel("key", setup.key_hash, "life", 10_000, 0, None)
    who = principal(None, None)
    who = replace(who, key=replace(who.key, hash=setup.key_hash), account=replace(who.account, id=setup.account_id))
    request = InboundRequest(Operation.CHAT, "m", False, False, None, b"{}", {})
    try:
        first = await limits.admit(AdmissionRequest(setup.key_hash, "req_f1", 0.0, 500, (level,), (), None, 0, 1))
        # Loads the settlement script and opens the connection: the next settlement takes the direct path.
        await settlement.charge(who, request, first.reservation, Outcome(status=200), "req_f1", None, 0.0, AT)
        assert len(writer.sent) == 1  # taken by Redis: this process's drain reads it back without a decode
        await writer.flush()
        assert await UsageStream(setup.redis, writer, key=setup.key).drain() == 1
        assert len(writer.sent) == 0
        admission = await limits.admit(AdmissionRequest(setup.key_hash, "req_f2", 0.0, 500, (level,), (), None, 0, 1))
        outcome = Outcome(status=200, usage=Usage(3, 4), channel=channel())
        charge = asyncio.ensure_future(
            settlement.charge(who, request, admission.reservation, outcome, "req_f2", None, 0.0, AT)
        )
        await asyncio.sleep(0)  # the charge runs up to its wait for Redis's reply: the command is sent
        assert not charge.done()
        charge.cancel()
        with pytest.raises(asyncio.CancelledError):
            await charge
        [(_, fields)] = await setup.redis.xrange(setup.key)  # Redis settled it before the cancellation took effect
        assert record_from_json(fields[b"r"]).request_id == "req_f2"
        cost = outcome.cost_micros
        assert cost > 0 and await limits.spent(level) == cost
        assert writer.queued == 1  # the local copy
        await limits.admit(AdmissionRequest(setup.key_hash, "req_f3", 0.0, 500, (level,), (), None, 0, 1))  # free slot
        await writer.flush()
        assert await UsageStream(setup.redis, writer, key=setup.key).drain() == 0  # the stream's copy: skipped
        async with setup.runtime.engine.connect() as conn:
            ids = (await conn.execute(select(usage_records.c.request_id))).scalars().all()
        assert sorted(ids) == ["req_f1", "req_f2"]
        key = await setup.runtime.keys.get(key_hash=setup.key_hash)
        assert key is not None and key.usage_micros == cost
    finally:
        await limits.close()
