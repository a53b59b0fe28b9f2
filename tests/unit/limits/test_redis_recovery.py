"""Redis going away mid-request: settlements and fail-open spend reach Redis once it is back."""

from __future__ import annotations

import secrets
import time

import pytest
from redis.asyncio import Redis

from keyrelay.errors import GatewayError
from keyrelay.limits.backend import AdmissionRequest, SpendLevel
from keyrelay.limits.redis import RedisLimits
from keyrelay.limits.resp import LeanRedis
from tests.unit.limits.conftest import drop_prefix, redis_client_or_skip

DEAD = "redis://127.0.0.1:1/0"
LEVEL = SpendLevel("key", "rk", "life", 10_000, 0, None)


def point_at(limits: RedisLimits, client: Redis) -> None:
    """Make ``limits`` talk to ``client``'s Redis (both its redis-py client and its lean connection)."""
    limits._redis = client
    limits._lean = LeanRedis.like(client)


def req(i: int, cost: int = 1000) -> AdmissionRequest:
    return AdmissionRequest("rk", f"r{i}", 1_800_000_000.0 + i, cost, (LEVEL,), (), None, 0, None)


async def test_missed_settlement_is_replayed() -> None:
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    limits = RedisLimits(client, prefix=prefix)
    dead = Redis.from_url(DEAD, socket_connect_timeout=0.5)
    try:
        admission = await limits.admit(req(1))
        lean = limits._lean
        point_at(limits, dead)  # Redis becomes unreachable while the request runs
        await limits.settle(admission.reservation, cost_micros=400, tokens=0, now=0)
        assert limits.deferred == 1
        await limits.maintain()
        assert limits.deferred == 1  # still away: kept
        point_at(limits, client)  # back
        await limits.maintain()
        assert limits.deferred == 0
        assert await limits.spent(LEVEL) == 400
        # The reservation was released too: 9600 left, not 8600.
        await limits.admit(req(2, cost=9600))
    finally:
        await dead.aclose()
        await drop_prefix(client, prefix)
        if lean is not None:
            await lean.aclose()
        await limits.close()


async def test_fail_open_spend_reaches_redis_later() -> None:
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    limits = RedisLimits(client, prefix=prefix, fail_open=True)
    dead = Redis.from_url(DEAD, socket_connect_timeout=0.5)
    try:
        first = await limits.admit(req(1))  # seeds the shared counter
        await limits.settle(first.reservation, cost_micros=1000, tokens=0, now=0)
        lean = limits._lean
        point_at(limits, dead)
        local = await limits.admit(req(2))  # admitted on local limits
        assert local.reservation.ident.startswith("local:")
        await limits.settle(local.reservation, cost_micros=700, tokens=0, now=0)
        point_at(limits, client)
        limits._down_until = 0.0
        await limits.maintain()
        assert await limits.spent(LEVEL) == 1700
    finally:
        await dead.aclose()
        await drop_prefix(client, prefix)
        if lean is not None:
            await lean.aclose()
        await limits.close()


async def test_counters_survive_a_gateway_restart() -> None:
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    opened: list[RedisLimits] = []
    try:
        before = RedisLimits(client, prefix=prefix)
        opened.append(before)
        admission = await before.admit(req(1, cost=6000))
        await before.settle(admission.reservation, cost_micros=6000, tokens=0, now=0)
        # A new process: a new backend object on the same Redis sees the same counters.
        after = RedisLimits(client, prefix=prefix)
        opened.append(after)
        assert await after.spent(LEVEL) == 6000
        await after.admit(req(2, cost=4000))
        with pytest.raises(GatewayError):
            await after.admit(req(3, cost=1))
    finally:
        await drop_prefix(client, prefix)
        for limits in opened:
            if limits._lean is not None:
                await limits._lean.aclose()
        await client.aclose()


@pytest.mark.redis
async def test_a_settlement_redis_ran_but_replayed_is_charged_once(redis_limits: RedisLimits) -> None:
    """A settlement whose reply was lost (a timeout, a cut connection) is deferred although Redis may have run it:
    its replay charges only a level still holding its reservation, and adjusts the tpm window only then."""
    limits = redis_limits
    admission = await limits.admit(AdmissionRequest("rk", "r1", 1_800_000_000.0, 1000, (LEVEL,), (), 10_000, 100, None))
    limits._down_until = float("inf")  # as if the call failed: the settlement is deferred, not sent
    assert not await limits.settle(admission.reservation, cost_micros=400, tokens=40, now=0)
    [(keys, args, _)] = list(limits._deferred)
    limits._down_until = 0.0
    await limits.maintain()  # the replay that ran, whose reply the gateway did not see ...
    limits._deferred.append((keys, args, time.monotonic()))  # ... so it is deferred and replayed once more
    await limits.maintain()
    assert limits.deferred == 0
    assert await limits.spent(LEVEL) == 400  # not 800
    usage = await limits.window_usage("rk", (), tpm=True, now=1_800_000_000.0)
    assert usage.tokens_per_minute == 40  # the reservation's 100 replaced by 40 once, not twice (-20)


@pytest.mark.redis
async def test_a_settlement_never_sent_is_replayed_as_a_first_one(redis_limits: RedisLimits) -> None:
    """Deferred while Redis was known down, it never ran: its replay charges the counter even if Redis lost the
    reservation meanwhile (a restart from an older snapshot), as a first settlement does."""
    limits = redis_limits
    admission = await limits.admit(req(1))
    limits._down_until = float("inf")
    await limits.settle(admission.reservation, cost_micros=400, tokens=0, now=0)
    assert [failed_at for _, _, failed_at in limits._deferred] == [None]
    await limits._redis.hdel(f"{limits._prefix}:spend:{LEVEL.name}", "r:r1")  # the reservation lost with Redis's data
    limits._down_until = 0.0
    await limits.maintain()
    assert await limits.spent(LEVEL) == 400


@pytest.mark.redis
async def test_a_replay_that_failed_is_held_only_from_then_on(redis_limits: RedisLimits) -> None:
    """A replay whose own call failed may have run too: its next replays charge only what still holds it."""
    limits = redis_limits
    client, lean = limits._redis, limits._lean
    dead = Redis.from_url(DEAD, socket_connect_timeout=0.5)
    try:
        admission = await limits.admit(req(1))
        limits._down_until = float("inf")
        await limits.settle(admission.reservation, cost_micros=400, tokens=0, now=0)
        limits._down_until = 0.0
        point_at(limits, dead)
        await limits.maintain()  # fails
        [(_, _, failed_at)] = list(limits._deferred)
        assert failed_at is not None
        point_at(limits, client)  # back
        await limits.maintain()
        assert limits.deferred == 0 and await limits.spent(LEVEL) == 400  # the reservation was held: charged
    finally:
        await dead.aclose()
        if lean is not None:
            await lean.aclose()


@pytest.mark.redis
async def test_without_spend_levels_the_in_flight_slot_tells_a_replay_it_ran(redis_limits: RedisLimits) -> None:
    """A key with tpm and an in-flight cap but no spend level: a replayed settlement that had run leaves tpm alone."""
    limits = redis_limits
    admission = await limits.admit(AdmissionRequest("rk", "r1", 1_800_000_000.0, 0, (), (), 10_000, 100, 5))
    limits._down_until = float("inf")  # the settlement is deferred, not sent: its arguments as settle() makes them
    assert not await limits.settle(admission.reservation, cost_micros=0, tokens=40, now=0)
    [(keys, args, _)] = list(limits._deferred)
    limits._down_until = 0.0
    await limits.maintain()  # the replay that ran (tpm 100 → 40, the slot freed), whose reply the gateway did not see
    limits._deferred.append((keys, args, time.monotonic()))  # ... so it is replayed once more, "held only"
    await limits.maintain()
    assert limits.deferred == 0
    usage = await limits.window_usage("rk", (), tpm=True, now=1_800_000_000.0)
    assert usage.tokens_per_minute == 40 and usage.in_flight == 0
