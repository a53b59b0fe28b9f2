"""One behaviour, two backends: admission, reservation, settlement, windows, tpm and in-flight caps."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.limits.backend import RESERVATION_TTL_S, AdmissionRequest, LimitsBackend, RequestWindow, SpendLevel
from keyrelay.limits.redis import RedisLimits

T0 = 1_800_000_000.0  # a fixed epoch second: the tests control time by passing `now`
_ids = itertools.count()


def level(scope: str = "key", cap: int = 1000, base: int = 0, counter: str = "life") -> SpendLevel:
    return SpendLevel(
        scope=scope,
        ident="k1" if scope == "key" else "a1",
        counter=counter,
        cap_micros=cap,
        base_micros=base,
        resets_in_s=None,
    )  # type: ignore[arg-type]


def req(
    now: float = T0,
    cost: int = 100,
    spend: tuple[SpendLevel, ...] = (),
    windows: tuple[RequestWindow, ...] = (),
    tpm: int | None = None,
    max_tokens: int = 0,
    max_concurrent: int | None = None,
    key: str = "k1",
) -> AdmissionRequest:
    return AdmissionRequest(
        key_hash=key,
        request_id=f"r{next(_ids)}",
        now=now,
        cost_micros=cost,
        spend=spend,
        windows=windows,
        tpm=tpm,
        max_tokens=max_tokens,
        max_concurrent=max_concurrent,
    )


async def refused(backend: LimitsBackend, request: AdmissionRequest) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await backend.admit(request)
    return info.value


async def test_spend_reserve_then_settle(backend: LimitsBackend) -> None:
    lvl = level(cap=1000)
    a = await backend.admit(req(cost=600, spend=(lvl,)))
    # 600 is held: another 600 does not fit, 400 does.
    err = await refused(backend, req(cost=600, spend=(lvl,)))
    assert err.error_type is ErrorType.API_KEY_QUOTA_EXHAUSTED and err.limit_source == "key"
    b = await backend.admit(req(cost=400, spend=(lvl,)))
    await backend.settle(a.reservation, cost_micros=100, tokens=0, now=T0)
    await backend.settle(b.reservation, cost_micros=50, tokens=0, now=T0)
    assert await backend.spent(lvl) == 150
    # Settling released the unused 850: it can be reserved again.
    await backend.admit(req(cost=850, spend=(lvl,)))
    assert (await refused(backend, req(cost=1, spend=(lvl,)))).status == 429


async def test_amounts_beyond_32_bits_are_exact(backend: LimitsBackend) -> None:
    """Micro-dollar figures past 2^31 ($2,147) and tokens past it are reserved, released and charged exactly (the
    scripts print integers through a C long, 32 bits on some Redis builds, below that and as doubles above)."""
    big = 10**15  # a billion dollars
    lvl = level(cap=big, base=big - 9_000_000_123)  # 9 billion and 123 micro-dollars left
    first = await backend.admit(req(cost=5_000_000_000, spend=(lvl,), tpm=2**40, max_tokens=3_000_000_000))
    second = await backend.admit(req(cost=4_000_000_000, spend=(lvl,)))
    await refused(backend, req(cost=124, spend=(lvl,)))  # exactly 123 left
    await backend.settle(first.reservation, cost_micros=4_999_999_999, tokens=2_999_999_999, now=T0)
    await backend.settle(second.reservation, cost_micros=3_000_000_007, tokens=0, now=T0)
    assert await backend.spent(lvl) == big - 9_000_000_123 + 8_000_000_006
    await backend.admit(req(cost=1_000_000_117, spend=(lvl,)))  # what is left, to the micro-dollar
    await refused(backend, req(cost=1, spend=(lvl,)))
    usage = await backend.window_usage("k1", (), tpm=True, now=T0)
    assert usage.tokens_per_minute == 2_999_999_999


async def test_base_seeds_an_unseen_counter(backend: LimitsBackend) -> None:
    lvl = level(cap=1000, base=950)
    assert await backend.spent(lvl) == 950
    await refused(backend, req(cost=60, spend=(lvl,)))
    await backend.admit(req(cost=50, spend=(lvl,)))


async def test_refusal_leaves_no_trace(backend: LimitsBackend) -> None:
    key_level = level(cap=1000)
    account = level(scope="account", cap=100)
    rpm = RequestWindow("rpm", 60, 1)
    # The account cannot afford it: nothing may be reserved at the key level or counted in the window.
    err = await refused(backend, req(cost=500, spend=(account, key_level), windows=(rpm,)))
    assert err.error_type is ErrorType.INSUFFICIENT_BALANCE and err.status == 402
    await backend.admit(req(cost=1000, spend=(key_level,), windows=(rpm,)))


async def test_levels_are_checked_in_order(backend: LimitsBackend) -> None:
    account, group, key = level("account", cap=10), level("group", cap=10), level("key", cap=10)
    assert (await refused(backend, req(cost=20, spend=(account, group, key)))).limit_source == "account"
    assert (await refused(backend, req(cost=20, spend=(group, key)))).limit_source == "group"
    assert (await refused(backend, req(cost=20, spend=(key,)))).limit_source == "key"


async def test_request_window_slides(backend: LimitsBackend) -> None:
    rpm = RequestWindow("rpm", 60, 3)
    for i in range(3):
        a = await backend.admit(req(now=T0 + i, windows=(rpm,)))
        assert a.window is not None and a.window.remaining == 2 - i
    err = await refused(backend, req(now=T0 + 10, windows=(rpm,)))
    assert err.error_type is ErrorType.RATE_LIMIT_EXCEEDED
    assert err.retry_after is not None and 49 <= err.retry_after <= 51  # the first request leaves at T0+60
    await backend.admit(req(now=T0 + 61, windows=(rpm,)))


async def test_tightest_window_in_headers(backend: LimitsBackend) -> None:
    windows = (RequestWindow("rpm", 60, 100), RequestWindow("per_1d", 86_400, 2))
    a = await backend.admit(req(windows=windows))
    assert a.window is not None and (a.window.limit, a.window.remaining) == (2, 1)


async def test_seven_day_window(backend: LimitsBackend) -> None:
    week = RequestWindow("per_7d", 7 * 86_400, 2)
    await backend.admit(req(now=T0, windows=(week,)))
    await backend.admit(req(now=T0 + 3 * 86_400, windows=(week,)))
    await refused(backend, req(now=T0 + 6 * 86_400, windows=(week,)))
    await backend.admit(req(now=T0 + 7 * 86_400 + 3 * 3600, windows=(week,)))


async def test_tpm_reserves_max_and_settles_actual(backend: LimitsBackend) -> None:
    a = await backend.admit(req(tpm=1000, max_tokens=800))
    await refused(backend, req(tpm=1000, max_tokens=300))
    await backend.settle(a.reservation, cost_micros=0, tokens=100, now=T0)
    await backend.admit(req(tpm=1000, max_tokens=900))
    err = await refused(backend, req(tpm=1000, max_tokens=1))
    assert "tpm" in err.message


async def test_max_concurrent(backend: LimitsBackend) -> None:
    a = await backend.admit(req(max_concurrent=2))
    await backend.admit(req(max_concurrent=2))
    err = await refused(backend, req(max_concurrent=2))
    assert err.error_type is ErrorType.RATE_LIMIT_EXCEEDED and "max_concurrent" in err.message
    assert "already has 2 requests in flight; its max_concurrent limit is 2" in err.message
    await backend.settle(a.reservation, cost_micros=0, tokens=0, now=T0)
    await backend.admit(req(max_concurrent=2))
    # The limit lowered while requests are in flight: the message gives the count and the limit, each right.
    err = await refused(backend, req(max_concurrent=1))
    assert "already has 2 requests in flight; its max_concurrent limit is 1" in err.message


async def test_keys_do_not_share_windows(backend: LimitsBackend) -> None:
    rpm = RequestWindow("rpm", 60, 1)
    await backend.admit(req(windows=(rpm,), key="k1"))
    await backend.admit(req(windows=(rpm,), key="k2"))


async def test_new_period_counter_starts_from_its_base(backend: LimitsBackend) -> None:
    day1 = SpendLevel("key", "k1", "daily:2027-01-01", 100, 0, 3600.0)
    day2 = SpendLevel("key", "k1", "daily:2027-01-02", 100, 0, 3600.0)
    a = await backend.admit(req(cost=100, spend=(day1,)))
    await backend.settle(a.reservation, cost_micros=100, tokens=0, now=T0)
    err = await refused(backend, req(cost=1, spend=(day1,)))
    assert err.retry_after == 3600.0
    await backend.admit(req(cost=100, spend=(day2,)))


async def test_concurrent_admissions_never_overshoot(backend: LimitsBackend) -> None:
    lvl = level(cap=10_000)

    async def one() -> int:
        try:
            a = await backend.admit(req(cost=300, spend=(lvl,)))
        except GatewayError:
            return 0
        await asyncio.sleep(0)
        await backend.settle(a.reservation, cost_micros=300, tokens=0, now=T0)
        return 300

    charged = sum(await asyncio.gather(*(one() for _ in range(200))))
    assert charged == await backend.spent(lvl) <= 10_000
    assert charged >= 9_900 - 300  # and the limit was actually used, not refused early


@pytest.mark.redis
async def test_a_dead_process_reservation_is_released_when_the_cap_needs_it(redis_limits: RedisLimits) -> None:
    """Reservations never settled (their process died) hold spend until RESERVATION_TTL_S after admission.

    admit_v5.lua looks for them only when a request would otherwise be refused, then decides again.
    """
    lvl = level(cap=1000)
    await redis_limits.admit(req(cost=700, spend=(lvl,)))  # never settled: its process "died"
    await redis_limits.admit(req(cost=200, spend=(lvl,)))  # well under the cap: no look for dead ones
    expires = T0 + RESERVATION_TTL_S
    err = await refused(redis_limits, req(now=expires - 0.001, cost=200, spend=(lvl,)))
    assert err.error_type is ErrorType.API_KEY_QUOTA_EXHAUSTED
    # Both reservations have expired: the first is released, the 200 reserved after it too (both dead now).
    live = await redis_limits.admit(req(now=expires, cost=1000, spend=(lvl,)))
    await redis_limits.settle(live.reservation, cost_micros=300, tokens=0, now=expires)
    assert await redis_limits.spent(lvl) == 300
    await redis_limits.admit(req(now=expires, cost=700, spend=(lvl,)))
    await refused(redis_limits, req(now=expires, cost=1, spend=(lvl,)))


@pytest.mark.redis
async def test_a_reservation_expires_on_the_whole_second_after_its_ttl(redis_limits: RedisLimits) -> None:
    """admit_v5.lua rounds a reservation's expiry up to a whole second, in every level's set and the in-flight set.

    A sorted set keeps integer scores as integers; each fractional one it read back from its text on every
    insertion among the others (3.4 µs per ZADD among 32 reservations in v4, 0.9 µs in v5).
    """
    lvl = level(cap=1000)
    admitted = T0 + 0.25
    await redis_limits.admit(req(now=admitted, cost=700, spend=(lvl,), max_concurrent=1))  # never settled
    expires = T0 + RESERVATION_TTL_S + 1  # admitted + RESERVATION_TTL_S, rounded up
    _, reservations = redis_limits._spend_keys(lvl)
    for zset in (reservations, redis_limits._flight_key("k1")):
        assert [score for _, score in await redis_limits._redis.zrange(zset, 0, -1, withscores=True)] == [expires]
    spend = await refused(redis_limits, req(now=expires - 0.001, cost=700, spend=(lvl,)))
    assert spend.error_type is ErrorType.API_KEY_QUOTA_EXHAUSTED and spend.limit_source == "key"
    in_flight = await refused(redis_limits, req(now=expires - 0.001, cost=0, max_concurrent=1))
    assert in_flight.error_type is ErrorType.RATE_LIMIT_EXCEEDED and "1 request in flight" in in_flight.message
    await redis_limits.admit(req(now=expires, cost=1000, spend=(lvl,), max_concurrent=1))


@pytest.mark.redis
async def test_a_level_keeps_its_reservations_as_long_as_its_counter(redis_limits: RedisLimits) -> None:
    """Dead reservations are looked for only before a refusal, maybe after a long idle time: the zset listing a
    level's reservations must outlive neither more nor less than the counter (a lifetime counter never expires)."""
    lifetime = level(cap=1000)
    monthly = SpendLevel("key", "k2", "monthly:2027-01-01", 1000, 0, 30 * 86400.0)  # type: ignore[arg-type]
    await redis_limits.admit(req(cost=10, spend=(lifetime,)))
    await redis_limits.admit(req(cost=10, spend=(monthly,), key="k2"))
    client = redis_limits._redis
    counter, reservations = redis_limits._spend_keys(lifetime)
    assert await client.ttl(counter) == -1 and await client.ttl(reservations) == -1
    counter, reservations = redis_limits._spend_keys(monthly)
    assert await client.ttl(reservations) >= await client.ttl(counter) > RESERVATION_TTL_S + 60
