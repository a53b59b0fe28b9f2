"""State marks: admission and ``check_current`` refuse to decide on a principal older than a recorded change."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio import Redis

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.limits.backend import StaleState
from keyrelay.limits.memory import MemoryLimits
from keyrelay.limits.redis import MARK_TTL_S, RedisLimits
from keyrelay.limits.resp import LeanRedis
from tests.unit.limits.test_backends import T0, level, req

pytestmark = pytest.mark.redis

MARKS = (("k:abc", 3), ("a:7", 2), ("g:1", 5))


async def test_admission_with_current_marks_is_admitted(redis_limits: RedisLimits) -> None:
    await redis_limits.mark((("k:abc", 3), ("a:7", 2)))  # equal to the cached versions: current
    admission = await redis_limits.admit(dataclasses.replace(req(cost=100, spend=(level(cap=1000),)), marks=MARKS))
    assert admission.reservation.cost_micros == 100


@pytest.mark.parametrize("stale", range(3))
async def test_a_newer_mark_refuses_and_holds_nothing(redis_limits: RedisLimits, stale: int) -> None:
    name, version = MARKS[stale]
    await redis_limits.mark(((name, version + 1),))
    request = dataclasses.replace(req(cost=1000, spend=(level(cap=1000),), max_concurrent=1), marks=MARKS)
    with pytest.raises(StaleState) as info:
        await redis_limits.admit(request)
    assert str(info.value) == name
    # Nothing was reserved: the whole budget and the one in-flight slot are still there.
    await redis_limits.admit(req(cost=1000, spend=(level(cap=1000),), max_concurrent=1))
    with pytest.raises(StaleState):
        await redis_limits.check_current(MARKS)


async def test_without_marks_nothing_is_compared(redis_limits: RedisLimits) -> None:
    await redis_limits.mark((("k:k1", 99),))
    await redis_limits.admit(req())  # marks=(): the caller reloaded after the mark (or built it by hand)
    await redis_limits.check_current(())


async def test_a_mark_only_grows_and_is_kept_for_its_ttl(redis_limits: RedisLimits) -> None:
    await redis_limits.mark((("k:abc", 6),))
    await redis_limits.mark((("k:abc", 4),))  # a writer finishing late with an older version
    with pytest.raises(StaleState):
        await redis_limits.check_current((("k:abc", 5),))
    await redis_limits.check_current((("k:abc", 6),))
    client: Redis = redis_limits._redis
    ttl = await client.ttl(f"{redis_limits._prefix}:mark:k:abc")
    assert MARK_TTL_S - 60 < ttl <= MARK_TTL_S


async def test_unknown_marks_are_current(redis_limits: RedisLimits) -> None:
    await redis_limits.check_current(MARKS)
    await redis_limits.admit(dataclasses.replace(req(now=T0), marks=MARKS))


async def test_unreachable_redis_fails_closed_or_open() -> None:
    closed = RedisLimits(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5), prefix="kr-dead")
    opened = RedisLimits(
        Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5), prefix="kr-dead", fail_open=True
    )
    try:
        with pytest.raises(GatewayError) as info:
            await closed.check_current(MARKS)
        assert info.value.error_type is ErrorType.LIMITS_UNAVAILABLE
        await closed.mark(MARKS)  # logged, not raised: the store change stands
        await opened.check_current(MARKS)
    finally:
        await closed.close()
        await opened.close()


async def test_memory_backend_has_no_shared_state() -> None:
    memory = MemoryLimits()
    await memory.mark((("k:abc", 9),))
    await memory.check_current(MARKS)
    await memory.admit(dataclasses.replace(req(), marks=MARKS))


async def test_a_mark_redis_missed_is_written_by_maintenance(redis_limits: RedisLimits) -> None:
    live, lean = redis_limits._redis, redis_limits._lean
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    redis_limits._redis, redis_limits._lean = dead, LeanRedis.like(dead)
    try:
        await redis_limits.mark((("k:late", 4),))  # logged and kept, not raised
        await redis_limits.maintain()  # still away
    finally:
        assert redis_limits._lean is not None
        await redis_limits._lean.aclose()
        await dead.aclose()
        redis_limits._redis, redis_limits._lean = live, lean
    await redis_limits.check_current((("k:late", 4),))
    await redis_limits.maintain()
    with pytest.raises(StaleState) as info:
        await redis_limits.check_current((("k:late", 3),))
    assert info.value.version == 4


async def test_a_refusal_by_the_cached_policy_is_checked_against_the_marks(redis_limits: RedisLimits) -> None:
    # The cached policy says tpm=10 and the request may use 50 tokens: refused before any script runs, unless
    # the key changed meanwhile (its tpm raised through another process).
    request = dataclasses.replace(req(tpm=10, max_tokens=50), marks=MARKS)
    with pytest.raises(GatewayError):
        await redis_limits.admit(request)
    await redis_limits.mark((("k:abc", 4),))
    with pytest.raises(StaleState):
        await redis_limits.admit(request)
