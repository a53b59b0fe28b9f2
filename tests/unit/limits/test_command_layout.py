"""The Redis backend's commands packed from each key's cached parts: the bytes of the whole command in admit_v5.lua's
argument order, made again as soon as the key's limits, periods or state marks change, and a bounded cache."""

from __future__ import annotations

from collections.abc import AsyncIterator

import hiredis
import pytest
from redis.asyncio import Redis

import keyrelay.limits.redis as redis_module
from keyrelay.errors import GatewayError
from keyrelay.limits.backend import RESERVATION_TTL_S, AdmissionRequest, RequestWindow, SpendLevel
from keyrelay.limits.redis import ADMIT, SETTLE, RedisLimits, _bulk

T0 = 1_764_950_400.25
WINDOWS = (RequestWindow("rpm", 60, 100), RequestWindow("per_1d", 86_400, 1_000))


def request(
    rid: str,
    *,
    key: str = "kh",
    cap: int = 10_000,
    counter: str = "life",
    marks: tuple[tuple[str, int], ...] = (),
    max_concurrent: int | None = 4,
) -> AdmissionRequest:
    levels = (
        SpendLevel("account", "1", "life", 50_000, 10, None),
        SpendLevel("key", key, counter, cap, 0, None if counter == "life" else 3_600.5),
    )
    return AdmissionRequest(key, rid, T0, 600, levels, WINDOWS, 5_000, 100, max_concurrent, marks)


@pytest.fixture
async def offline() -> AsyncIterator[RedisLimits]:
    """A backend whose Redis is never reached (the packing needs none)."""
    limits = RedisLimits(Redis(host="127.0.0.1", port=1), prefix="p")
    try:
        yield limits
    finally:
        await limits.close()


async def test_the_packed_admission_is_admit_v5s_argument_order(offline: RedisLimits) -> None:
    wanted = request("r1", counter="daily:2026-12-06", marks=(("k:kh", 3), ("a:1", 1)))
    layout = offline._layout(wanted)
    keys = [
        "p:spend:account:1:life",
        "p:spend:account:1:life:resv",
        "p:spend:key:kh:daily:2026-12-06",
        "p:spend:key:kh:daily:2026-12-06:resv",
        "p:window:kh:rpm",
        "p:window:kh:per_1d",
        "p:window:kh:tpm",
        "p:flight:kh",
        "p:mark:k:kh",
        "p:mark:a:1",
    ]
    argv = [2, 2, 5_000, 4, RESERVATION_TTL_S, 2]  # levels, windows, tpm, max_concurrent, reservation ttl, marks
    argv += [repr(T0), 600, 100, "r1", 10, -1, 0, 3_600 + 86_400]  # now, cost, max_tokens, id, (base, ttl) a level
    argv += [50_000, 10_000, 60, 100, 86_400, 1_000, 3, 1]  # caps, (seconds, limit) a window, mark versions
    per_request = argv[6:14]
    packed = layout.admit_head + _bulk(*per_request) + layout.admit_tail
    command = ("EVALSHA", offline._sha[ADMIT], len(keys), *keys, *argv)
    assert packed == hiredis.pack_command(command)  # type: ignore[arg-type]
    # The settlement with its record: the spend keys, tpm, in-flight, then the usage stream.
    # levels, id, cost, reserved cost, tpm bucket, reserved and actual tokens, in-flight, not "held only", the record
    settle_args = (2, "r1", 120, 600, 7, 100, 40, 1, 0, b'{"r":1}')
    settle_keys = [*keys[:4], "p:window:kh:tpm", "p:flight:kh", "p:usage"]
    expected = ("EVALSHA", offline._sha[SETTLE], len(settle_keys), *settle_keys, *settle_args)
    assert layout.settle_head + _bulk(*settle_args) == hiredis.pack_command(expected)  # type: ignore[arg-type]


async def test_a_key_without_limits_packs_an_empty_tail(offline: RedisLimits) -> None:
    layout = offline._layout(AdmissionRequest("kh", "r3", T0, 0, (), (), None, 1, None))
    assert layout.keys == [] and layout.admit_tail == b""
    packed = layout.admit_head + _bulk(repr(T0), 0, 1, "r3")
    expected = ("EVALSHA", offline._sha[ADMIT], 0, 0, 0, 0, 0, RESERVATION_TTL_S, 0, repr(T0), 0, 1, "r3")
    assert packed == hiredis.pack_command(expected)  # type: ignore[arg-type]


async def test_the_parts_are_made_again_for_a_changed_policy(offline: RedisLimits) -> None:
    first = offline._layout(request("r1", marks=(("k:kh", 1),)))
    assert offline._layout(request("r2", marks=(("k:kh", 1),))) is first  # same policy: the same parts
    for changed in (
        request("r3", cap=999, marks=(("k:kh", 1),)),
        request("r4", counter="daily:2026-12-06", marks=(("k:kh", 1),)),
        request("r5", marks=(("k:kh", 2),)),
        request("r6", marks=(("k:kh", 1),), max_concurrent=None),  # one key fewer: the marks' keys move
    ):
        layout = offline._layout(changed)
        assert (layout.admit_head, layout.admit_tail) != (first.admit_head, first.admit_tail)
    assert list(offline._layouts) == ["kh"]  # one entry per key, replaced


async def test_the_cache_of_packed_parts_is_bounded(offline: RedisLimits, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "LAYOUT_CACHE_SIZE", 8)
    for n in range(20):
        offline._layout(request(f"r{n}", key=f"key-{n}"))
    assert list(offline._layouts) == [f"key-{n}" for n in range(12, 20)]  # the ones made last
    offline._layout(request("again", key="key-12", cap=1))  # made again: replaces its own entry, evicts none
    assert list(offline._layouts) == [*(f"key-{n}" for n in range(13, 20)), "key-12"]


@pytest.mark.redis
async def test_a_keys_new_cap_counter_and_marks_are_sent_at_once(redis_limits: RedisLimits) -> None:
    """The cached parts belong to one state of the key's policy: any change is in the very next command."""
    await redis_limits.admit(request("r1", cap=10_000))
    with pytest.raises(GatewayError):  # 600 reserved + 600 more > the new cap of 1,000
        await redis_limits.admit(request("r2", cap=1_000))
    daily = "daily:2026-12-06"
    await redis_limits.admit(request("r3", cap=1_000, counter=daily, marks=(("k:kh", 1),)))  # a new, empty period
    await redis_limits.mark((("k:kh", 2),))  # the key changed; the gateway reloaded it (version 2)
    await redis_limits.admit(request("r4", cap=10_000, counter=daily, marks=(("k:kh", 2),)))  # not StaleState
    # No in-flight cap any more: one key fewer, the mark's key one place earlier; still read as the mark.
    await redis_limits.admit(request("r5", cap=10_000, counter=daily, marks=(("k:kh", 2),), max_concurrent=None))
