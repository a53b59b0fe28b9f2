"""The failover order: priorities first, then a weighted random permutation (checked by chi-square), and the plan."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from keyrelay.protocols.base import ProviderPreferences as Preferences
from keyrelay.providers.failure import FailureClass
from keyrelay.routing.failover import AttemptPlan, draw_order, preferred
from keyrelay.routing.health import BreakerPolicy, Health
from keyrelay.routing.table import Channel, Credential
from keyrelay.testing.clock import FakeClock

# Critical values of the chi-square distribution at p = 0.001 (a correct draw fails once in a thousand seeds;
# the seeds below are fixed, so the test is deterministic).
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266}


def channel(provider: str, *, priority: int = 0, weight: float = 1.0, keys: int = 1) -> Channel:
    credentials = tuple(Credential(f"{provider.upper()}_KEY_{i}", f"sk-{provider}-{i}", i) for i in range(keys))
    return Channel(
        provider=provider,
        kind="openai",
        base_url="http://x",
        api_key=credentials[0].secret,
        model="m",
        upstream_model="m",
        input_micros_per_mtok=0,
        output_micros_per_mtok=0,
        region=None,
        timeout_s=1,
        connect_timeout_s=1,
        priority=priority,
        weight=weight,
        credentials=credentials,
    )


def chi_square(observed: Counter[str], expected: dict[str, float]) -> float:
    return sum((observed[name] - e) ** 2 / e for name, e in expected.items())


def test_first_pick_follows_the_weights() -> None:
    channels = [channel("a", weight=1), channel("b", weight=2), channel("c", weight=5)]
    rng = random.Random(20261206)
    draws = 4000
    first = Counter(draw_order(channels, rng)[0].provider for _ in range(draws))
    expected = {"a": draws / 8, "b": draws * 2 / 8, "c": draws * 5 / 8}
    assert chi_square(first, expected) < CHI2_999[2], first


def test_the_rest_of_the_order_is_the_rest_of_the_weighted_draw() -> None:
    # After the first pick, the second is drawn among the rest in proportion to their weights: when "c" (5)
    # came first, "b" (2) is second twice as often as "a" (1).
    channels = [channel("a", weight=1), channel("b", weight=2), channel("c", weight=5)]
    rng = random.Random(7)
    second = Counter()
    for _ in range(6000):
        order = draw_order(channels, rng)
        if order[0].provider == "c":
            second[order[1].provider] += 1
    total = second["a"] + second["b"]
    assert chi_square(second, {"a": total / 3, "b": total * 2 / 3}) < CHI2_999[1], second


def test_equal_weights_are_uniform_and_every_channel_appears_once() -> None:
    channels = [channel(name) for name in "abcd"]
    rng = random.Random(11)
    first = Counter()
    for _ in range(4000):
        order = draw_order(channels, rng)
        assert sorted(c.provider for c in order) == ["a", "b", "c", "d"]
        first[order[0].provider] += 1
    assert chi_square(first, dict.fromkeys("abcd", 1000.0)) < CHI2_999[3], first


def test_a_higher_priority_always_comes_first_whatever_the_weights() -> None:
    channels = [channel("low", priority=0, weight=1000), channel("high", priority=2), channel("mid", priority=1)]
    rng = random.Random(3)
    for _ in range(200):
        assert [c.provider for c in draw_order(channels, rng)] == ["high", "mid", "low"]


def test_preferences_filter_and_reorder() -> None:
    order = [channel("a"), channel("b"), channel("c")]
    assert [c.provider for c in preferred(order, Preferences(order=("c", "a")))] == ["c", "a", "b"]
    assert [c.provider for c in preferred(order, Preferences(order=("c",), allow_fallbacks=False))] == ["c"]
    assert [c.provider for c in preferred(order, Preferences(only=("b", "c")))] == ["b", "c"]
    assert [c.provider for c in preferred(order, Preferences(order=("a",), only=("b", "c")))] == ["b", "c"]


# --- the plan -------------------------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def walk(plan: AttemptPlan, failures: list[FailureClass]) -> list[tuple[str, int]]:
    """The (provider, credential index) of each attempt while the attempts fail with ``failures`` in turn."""
    seen = []
    last = None
    for failure in [*failures, None]:
        step = plan.next(last)
        if step is None:
            break
        seen.append((step[0].provider, step[1].index))
        last = failure
    return seen


def test_each_attempt_goes_to_a_channel_not_yet_tried_and_max_attempts_bounds_them(clock: FakeClock) -> None:
    order = [channel(name) for name in "abcde"]
    plan = AttemptPlan(order, Health(clock), max_attempts=3)
    transient = FailureClass.TRANSIENT
    assert walk(plan, [transient] * 10) == [("a", 0), ("b", 0), ("c", 0)]


def test_a_rate_limited_credential_is_followed_by_the_next_of_its_pool_before_the_next_channel(
    clock: FakeClock,
) -> None:
    order = [channel("a", keys=2), channel("b")]
    health = Health(clock)
    plan = AttemptPlan(order, health, max_attempts=5)
    first = plan.next()
    assert first is not None
    health.failure(first[0], first[1], FailureClass.RATE_LIMIT, 0.01, 2.0)
    second = plan.next(FailureClass.RATE_LIMIT)
    assert second is not None and second[0].provider == "a" and second[1].index != first[1].index
    health.failure(second[0], second[1], FailureClass.RATE_LIMIT, 0.01, 2.0)
    third = plan.next(FailureClass.RATE_LIMIT)
    assert third is not None and third[0].provider == "b"
    # Both credentials of "a" rest for 2 s: a new request goes to "b" first, then after the rest to "a" again.
    assert walk(AttemptPlan(order, health, 5), []) == [("b", 0)]
    clock.advance(2.0)
    assert walk(AttemptPlan(order, health, 5), [])[0][0] == "a"


def test_a_transient_failure_moves_to_the_next_channel_not_the_next_credential(clock: FakeClock) -> None:
    order = [channel("a", keys=2), channel("b")]
    plan = AttemptPlan(order, Health(clock), max_attempts=5)
    assert [p for p, _ in walk(plan, [FailureClass.TRANSIENT, FailureClass.TRANSIENT])] == ["a", "b"]


def test_a_pool_is_used_in_turn(clock: FakeClock) -> None:
    order = [channel("a", keys=3)]
    health = Health(clock)
    used = [walk(AttemptPlan(order, health, 3), [])[0][1] for _ in range(6)]
    assert used == [0, 1, 2, 0, 1, 2]


def test_when_every_channel_is_open_the_one_open_longest_is_still_tried(clock: FakeClock) -> None:
    a, b, c = channel("a"), channel("b"), channel("c")
    health = Health(clock, BreakerPolicy(failures=2))
    for ch in (b, a, c):  # b opens first, then a, then c
        for _ in range(2):
            health.failure(ch, ch.credentials[0], FailureClass.TRANSIENT, 0.01)
        clock.advance(1)
    assert walk(AttemptPlan([a, b, c], health, 3), [FailureClass.TRANSIENT] * 3) == [("b", 0)]


def test_the_breaker_skips_only_the_open_channel(clock: FakeClock) -> None:
    a, b = channel("a"), channel("b")
    health = Health(clock, BreakerPolicy(failures=2))
    for _ in range(2):
        health.failure(a, a.credentials[0], FailureClass.TRANSIENT, 0.01)
    assert walk(AttemptPlan([a, b], health, 3), []) == [("b", 0)]
