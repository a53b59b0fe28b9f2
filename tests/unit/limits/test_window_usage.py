"""window_usage: what a key's windows hold, counted as admission counts them, on both backends, changing nothing."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.limits import windows as w
from keyrelay.limits.backend import (
    RESERVATION_TTL_S,
    Admission,
    AdmissionRequest,
    LimitsBackend,
    RequestWindow,
    WindowUsage,
)
from keyrelay.limits.memory import MemoryLimits
from keyrelay.limits.redis import WINDOW_USAGE, RedisLimits

T0 = 1_800_000_000.0  # epoch seconds; a multiple of every bucket width used here (1 s, 300 s)
RPM = RequestWindow("rpm", 60, 10)
PER_5H = RequestWindow("per_5h", 5 * 3600, 100)
WINDOWS = (RPM, PER_5H)
DEAD = "redis://127.0.0.1:1/0"
_ids = itertools.count()


def req(
    now: float,
    *,
    key: str = "k1",
    windows: tuple[RequestWindow, ...] = WINDOWS,
    tpm: int | None = 1000,
    max_tokens: int = 100,
    max_concurrent: int | None = 5,
) -> AdmissionRequest:
    return AdmissionRequest(
        key_hash=key,
        request_id=f"u{next(_ids)}",
        now=now,
        cost_micros=0,
        spend=(),
        windows=windows,
        tpm=tpm,
        max_tokens=max_tokens,
        max_concurrent=max_concurrent,
    )


async def usage(backend: LimitsBackend, now: float, *, key: str = "k1", tpm: bool = True) -> WindowUsage:
    return await backend.window_usage(key, WINDOWS, tpm=tpm, now=now)


def usage_of(rpm: int, per_5h: int, tokens: int | None, in_flight: int) -> WindowUsage:
    return WindowUsage(counts={"rpm": rpm, "per_5h": per_5h}, tokens_per_minute=tokens, in_flight=in_flight)


async def outcome(backend: LimitsBackend, request: AdmissionRequest) -> tuple[object, ...]:
    """What an admission decided, comparable across keys and backends."""
    try:
        admission = await backend.admit(request)
    except GatewayError as err:
        return ("refused", err.message, err.retry_after)
    status = admission.window
    return ("admitted", None if status is None else (status.limit, status.remaining, status.reset_s))


async def settle(backend: LimitsBackend, admission: Admission, tokens: int, now: float) -> None:
    await backend.settle(admission.reservation, cost_micros=0, tokens=tokens, now=now)


# --- counts -------------------------------------------------------------------------------------------------


async def test_counts_requests_tokens_and_in_flight(backend: LimitsBackend) -> None:
    admitted = [await backend.admit(req(T0 + i)) for i in range(3)]
    # Each request counts once per window, reserves its max_tokens and holds an in-flight slot.
    assert await usage(backend, T0 + 2) == usage_of(3, 3, 300, 3)
    await settle(backend, admitted[0], 40, T0 + 3)
    # Settling replaces the reserved 100 tokens by the actual 40 and frees the slot; the request still counts.
    assert await usage(backend, T0 + 3) == usage_of(3, 3, 240, 2)
    await settle(backend, admitted[1], 7, T0 + 3)
    await settle(backend, admitted[2], 0, T0 + 3)
    assert await usage(backend, T0 + 3) == usage_of(3, 3, 47, 0)
    assert await usage(backend, T0 + 3, tpm=False) == usage_of(3, 3, None, 0)


async def test_in_flight_counts_without_windows_or_tpm(backend: LimitsBackend) -> None:
    first = await backend.admit(req(T0, windows=(), tpm=None, max_concurrent=2))
    await backend.admit(req(T0, windows=(), tpm=None, max_concurrent=2))
    assert await usage(backend, T0) == usage_of(0, 0, 0, 2)
    await settle(backend, first, 0, T0)
    assert await usage(backend, T0) == usage_of(0, 0, 0, 1)


async def test_a_request_leaves_with_its_bucket(backend: LimitsBackend) -> None:
    for i in range(3):
        await settle(backend, await backend.admit(req(T0 + i, max_tokens=100)), 10 * (i + 1), T0 + i)
    assert await usage(backend, T0 + 59.999) == usage_of(3, 3, 60, 0)
    # rpm and tpm buckets are 1 s wide: at T0+60 the bucket of T0 has left both 60 s windows.
    assert await usage(backend, T0 + 60) == usage_of(2, 3, 50, 0)
    assert await usage(backend, T0 + 61.5) == usage_of(1, 3, 30, 0)
    assert await usage(backend, T0 + 62) == usage_of(0, 3, 0, 0)
    # per_5h buckets are 300 s wide: all three requests share the bucket of T0, which leaves at T0+5h.
    assert await usage(backend, T0 + 5 * 3600 - 0.001) == usage_of(0, 3, 0, 0)
    assert await usage(backend, T0 + 5 * 3600) == usage_of(0, 0, 0, 0)


async def test_count_is_what_admission_sees(backend: LimitsBackend) -> None:
    rpm = RequestWindow("rpm", 60, 3)
    for i in range(3):
        await backend.admit(req(T0 + i, windows=(rpm,), tpm=None, max_concurrent=None))
    for now, count in ((T0 + 59, 3), (T0 + 60, 2), (T0 + 62, 0)):
        seen = (await backend.window_usage("k1", (rpm,), tpm=False, now=now)).counts["rpm"]
        assert seen == count
    # At T0+60 the window holds 2 of 3: exactly one more request is admitted, and then it holds 3.
    assert (await outcome(backend, req(T0 + 60, windows=(rpm,), tpm=None)))[0] == "admitted"
    assert (await outcome(backend, req(T0 + 60, windows=(rpm,), tpm=None)))[0] == "refused"
    assert (await backend.window_usage("k1", (rpm,), tpm=False, now=T0 + 60)).counts == {"rpm": 3}


async def test_a_key_never_seen_gives_zeros(backend: LimitsBackend) -> None:
    await backend.admit(req(T0, key="other"))
    assert await usage(backend, T0, key="never") == usage_of(0, 0, 0, 0)
    assert await usage(backend, T0, key="never", tpm=False) == usage_of(0, 0, None, 0)
    empty = await backend.window_usage("never", (), tpm=False, now=T0)
    assert empty == WindowUsage(counts={}, tokens_per_minute=None, in_flight=0)


async def test_windows_the_key_was_never_admitted_under_count_zero(backend: LimitsBackend) -> None:
    await backend.admit(req(T0, windows=(RPM,), tpm=None, max_concurrent=None))
    day = RequestWindow("per_1d", 86_400, 5)
    result = await backend.window_usage("k1", (RPM, day), tpm=True, now=T0)
    assert result == WindowUsage(counts={"rpm": 1, "per_1d": 0}, tokens_per_minute=0, in_flight=0)


# --- reading changes nothing ----------------------------------------------------------------------------------


async def test_reading_never_changes_an_admission(backend: LimitsBackend) -> None:
    """Keys "read" and "plain" see the same steps; "read" is also read before each one, "plain" never.

    The reads include moments far ahead: a read that dropped the buckets expired at that moment (as an
    admission does) would let the rpm-full step below in on "read". Gateway replicas' clocks differ, so a
    read "from the future" is not far-fetched.
    """
    rpm = RequestWindow("rpm", 60, 3)
    # (action, now, max_tokens or settled tokens, expected outcome); tpm=300, max_concurrent=2.
    steps = [
        ("admit", T0, 100, "admitted"),
        ("admit", T0 + 1, 100, "admitted"),
        ("admit", T0 + 2, 50, "max_concurrent"),
        ("settle", T0 + 2, 100, None),
        ("admit", T0 + 3, 150, "tpm"),
        ("admit", T0 + 3, 100, "admitted"),
        ("settle", T0 + 3, 20, None),
        ("admit", T0 + 30, 10, "rpm"),  # three in the last minute
        ("admit", T0 + 60, 10, "admitted"),  # the first has left rpm (and its 100 tokens tpm)
        ("admit", T0 + 61, 10, "max_concurrent"),
    ]
    held: dict[str, list[Admission]] = {"read": [], "plain": []}
    for action, now, amount, expected in steps:
        results: dict[str, tuple[object, ...]] = {}
        for key in ("read", "plain"):
            if key == "read":
                for moment in (now, now - 30, now + 3600, now + 30 * 86_400):
                    await backend.window_usage(key, (rpm,), tpm=True, now=moment)
            if action == "settle":
                await settle(backend, held[key].pop(0), amount, now)
                continue
            request = req(now, key=key, windows=(rpm,), tpm=300, max_tokens=amount, max_concurrent=2)
            try:
                admission = await backend.admit(request)
            except GatewayError as err:
                results[key] = (_limit_of(err), err.message, err.retry_after)
            else:
                held[key].append(admission)
                results[key] = ("admitted", admission.window)
        if action == "admit":
            assert results["read"] == results["plain"], (now, results)
            assert results["read"][0] == expected, (now, results)
    final = [await usage(backend, T0 + 61, key=key) for key in ("read", "plain")]
    assert final[0] == final[1] == WindowUsage({"rpm": 2, "per_5h": 0}, 110, 2)


def _limit_of(err: GatewayError) -> str:
    for name in ("max_concurrent", "tpm", "rpm"):
        if f"{name}=" in err.message or f"{name} limit" in err.message:
            return name
    return err.message


@pytest.mark.redis
async def test_redis_read_writes_nothing(redis_limits: RedisLimits) -> None:
    """Every Redis key under the prefix is byte for byte the same after a read, at any moment."""
    for i in range(3):
        await redis_limits.admit(req(T0 + i))
    before = await _snapshot(redis_limits._redis, redis_limits._prefix)
    for moment in (T0, T0 + 61, T0 + 4 * 3600, T0 + 30 * 86_400):
        await usage(redis_limits, moment)
    assert await _snapshot(redis_limits._redis, redis_limits._prefix) == before


async def _snapshot(client: Redis, prefix: str) -> dict[bytes, bytes | None]:
    names = sorted([name async for name in client.scan_iter(match=f"{prefix}:*")])
    assert names, "nothing to compare"
    return {name: await client.dump(name) for name in names}


async def test_memory_read_leaves_its_windows_as_they_were() -> None:
    limits = MemoryLimits()
    for i in range(3):
        await limits.admit(req(T0 + i))
    state = limits._keys["k1"]
    names = ("rpm", "per_5h", "per_1d", "per_7d", "tpm")
    before = {name: (win.buckets(), win._total) for name in names if (win := state.window(name)) is not None}
    assert before, "nothing to compare"
    await usage(limits, T0 + 30 * 86_400)
    after = {name: (win.buckets(), win._total) for name in names if (win := state.window(name)) is not None}
    assert after == before
    assert limits._now == T0 + 2  # the housekeeping clock moves with admissions only


# --- Redis specifics ---------------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_reloads_a_lost_script(redis_limits: RedisLimits) -> None:
    await redis_limits.admit(req(T0))
    redis_limits._shas[WINDOW_USAGE] = "0" * 40  # as after a Redis restart: the cached SHA is unknown
    assert await usage(redis_limits, T0) == usage_of(1, 1, 100, 1)


async def test_unreachable_redis_fails_closed() -> None:
    limits = RedisLimits(Redis.from_url(DEAD, socket_connect_timeout=0.5))
    try:
        with pytest.raises(GatewayError) as info:
            await usage(limits, T0)
        assert info.value.error_type is ErrorType.LIMITS_UNAVAILABLE
        assert limits._down_until == 0.0  # a failed read does not hold admissions back
    finally:
        await limits.close()


async def test_unreachable_redis_failing_open_reads_the_local_limits() -> None:
    limits = RedisLimits(Redis.from_url(DEAD, socket_connect_timeout=0.5), fail_open=True)
    try:
        await limits.admit(req(T0))  # admitted on this process's own limits
        assert await usage(limits, T0) == usage_of(1, 1, 100, 1)  # Redis is skipped for a second after a failure
        limits._down_until = 0.0
        assert await usage(limits, T0) == usage_of(1, 1, 100, 1)  # and then tried, and failing again
    finally:
        await limits.close()


# --- SlidingWindow.used_at against used ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None, database=None)
@given(
    seconds=st.sampled_from([60, 5 * 3600]),
    steps=st.lists(
        st.tuples(
            st.floats(-2, 3),  # time step in windows, backwards too (another replica's clock)
            st.integers(0, 50),  # weight to add (0: only probe)
            st.integers(-30, 10),  # adjustment of the newest bucket (a tpm settlement)
            st.floats(-2, 3),  # probe offset in windows
        ),
        max_size=40,
    ),
)
def test_used_at_is_used_without_the_forgetting(seconds: int, steps: list[tuple[float, int, int, float]]) -> None:
    window = w.SlidingWindow(seconds)
    now = T0
    for step, weight, delta, probe in steps:
        now += step * seconds
        at = now + probe * seconds
        state = (copy.deepcopy(window._buckets), window._total)
        expected = copy.deepcopy(window).used(at)
        assert window.used_at(at) == expected
        assert (window._buckets, window._total) == state
        pairs = window.buckets()
        spec = dict(pairs)
        if len(spec) == len(pairs) and list(spec) == sorted(spec):  # time only went forward
            assert expected == w.live(spec, w.bucket_of(at, seconds))
        window.used(now)
        if weight:
            window.add(now, weight)
        if delta:
            window.adjust(window.bucket(now), delta)


@pytest.mark.redis
async def test_redis_in_flight_drops_an_expired_reservation(redis_limits: RedisLimits) -> None:
    """A reservation whose process died holds its slot until RESERVATION_TTL_S after admission, no longer."""
    await redis_limits.admit(req(T0, windows=(), tpm=None, max_concurrent=1))
    expires = T0 + RESERVATION_TTL_S
    assert (await usage(redis_limits, expires - 0.001)).in_flight == 1
    assert (await outcome(redis_limits, req(expires - 0.001, windows=(), tpm=None, max_concurrent=1)))[0] == "refused"
    assert (await usage(redis_limits, expires)).in_flight == 0
    assert (await outcome(redis_limits, req(expires, windows=(), tpm=None, max_concurrent=1)))[0] == "admitted"
