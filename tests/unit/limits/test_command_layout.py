"""The Redis backend's commands packed from each key's cached parts: the bytes of the whole command, made again
as soon as the key's limits, periods or state marks change, and a bounded cache."""

from __future__ import annotations

import hiredis
import pytest

import keyrelay.limits.redis as redis_module
from keyrelay.errors import GatewayError
from keyrelay.limits.backend import AdmissionRequest, RequestWindow, SpendLevel
from keyrelay.limits.redis import ADMIT, RedisLimits, _bulk

pytestmark = pytest.mark.redis
T0 = 1_764_950_400.25
WINDOWS = (RequestWindow("rpm", 60, 100), RequestWindow("per_1d", 86_400, 1_000))


def request(
    rid: str, *, key: str = "kh", cap: int = 10_000, counter: str = "life", marks: tuple[tuple[str, int], ...] = ()
) -> AdmissionRequest:
    levels = (
        SpendLevel("account", "1", "life", 50_000, 10, None),
        SpendLevel("key", key, counter, cap, 0, None if counter == "life" else 3_600.5),
    )
    return AdmissionRequest(key, rid, T0, 600, levels, WINDOWS, 5_000, 100, 4, marks)


@pytest.mark.parametrize(
    "wanted",
    [
        request("r1", marks=(("k:kh", 3), ("a:1", 1))),
        request("r2", counter="daily:2026-12-06"),
        AdmissionRequest("kh", "r3", T0, 0, (), (), None, 1, None),  # no limit at all
    ],
)
async def test_the_packed_admission_is_the_command_redis_py_would_send(
    redis_limits: RedisLimits, wanted: AdmissionRequest
) -> None:
    layout = redis_limits._layout(wanted)
    per_request: list[str | int] = [repr(wanted.now), wanted.cost_micros, wanted.max_tokens, wanted.request_id]
    for level in wanted.spend:
        per_request += [level.base_micros, -1 if level.resets_in_s is None else int(level.resets_in_s) + 86_400]
    packed = layout.admit_head + _bulk(*per_request) + layout.admit_tail
    sha = redis_limits._sha[ADMIT]
    args = (*layout.head_args, *per_request, *layout.tail_args)
    assert packed == hiredis.pack_command(("EVALSHA", sha, len(layout.keys), *layout.keys, *args))  # type: ignore[arg-type]
    assert layout.settle_head.startswith(b"*%d\r\n" % (3 + len(layout.settle_keys) + 1 + 8))


async def test_a_keys_new_cap_counter_and_marks_are_sent_at_once(redis_limits: RedisLimits) -> None:
    """The cached parts belong to one state of the key's policy: any change is in the very next command."""
    await redis_limits.admit(request("r1", cap=10_000))
    with pytest.raises(GatewayError):  # 600 reserved + 600 more > the new cap of 1,000
        await redis_limits.admit(request("r2", cap=1_000))
    # A new period's counter starts empty: admitted under the same small cap.
    daily = "daily:2026-12-06"
    await redis_limits.admit(request("r3", cap=1_000, counter=daily, marks=(("k:kh", 1),)))
    await redis_limits.mark((("k:kh", 2),))  # the key changed; the gateway reloaded it (version 2)
    await redis_limits.admit(request("r4", cap=10_000, counter=daily, marks=(("k:kh", 2),)))  # not StaleState


async def test_the_cache_of_packed_parts_is_bounded(redis_limits: RedisLimits, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "LAYOUT_CACHE_SIZE", 8)
    for n in range(20):
        await redis_limits.admit(request(f"r{n}", key=f"key-{n}"))
    assert len(redis_limits._layouts) == 8
    assert set(redis_limits._layouts) == {f"key-{n}" for n in range(12, 20)}  # the most recent ones
