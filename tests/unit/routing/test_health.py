"""Circuit breakers and credential rests, on the fake clock."""

from __future__ import annotations

import pytest

from keyrelay.providers.failure import FailureClass, status_class
from keyrelay.routing.health import BreakerPolicy, ChannelState, Health
from keyrelay.testing.clock import FakeClock
from tests.unit.routing.test_failover_order import channel

T = FailureClass.TRANSIENT
POLICY = BreakerPolicy(failures=5, window_s=60, cooldown_s=30, max_cooldown_s=100)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(clock, POLICY)


def fail(health: Health, n: int, cls: FailureClass = T, name: str = "a") -> None:
    ch = channel(name)
    for _ in range(n):
        health.failure(ch, ch.credentials[0], cls, 0.01)


def test_opens_after_n_failures_in_the_window_never_after_one(health: Health) -> None:
    ch = channel("a")
    fail(health, 1)
    assert health.state(ch) is ChannelState.CLOSED
    fail(health, 3)
    assert health.state(ch) is ChannelState.CLOSED
    fail(health, 1)
    assert health.state(ch) is ChannelState.OPEN


def test_failures_older_than_the_window_do_not_count(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    fail(health, 4)
    clock.advance(60.5)
    fail(health, 4)
    assert health.state(ch) is ChannelState.CLOSED
    fail(health, 1)
    assert health.state(ch) is ChannelState.OPEN


@pytest.mark.parametrize("cls", [FailureClass.RATE_LIMIT, FailureClass.CALLER_FAULT])
def test_rate_limits_and_the_callers_faults_do_not_open_the_breaker(health: Health, cls: FailureClass) -> None:
    fail(health, 50, cls)
    assert health.state(channel("a")) is ChannelState.CLOSED


@pytest.mark.parametrize("cls", [FailureClass.TRANSIENT, FailureClass.MODEL_ACCESS, FailureClass.CREDENTIAL])
def test_the_providers_trouble_opens_it(health: Health, cls: FailureClass) -> None:
    fail(health, 5, cls)
    assert health.state(channel("a")) is ChannelState.OPEN


def test_half_open_lets_one_probe_through_and_its_success_closes(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    fail(health, 5)
    breaker = health.breaker(ch)
    clock.advance(29.9)
    assert not breaker.usable(clock.monotonic())
    clock.advance(0.1)
    now = clock.monotonic()
    assert health.state(ch) is ChannelState.HALF_OPEN and breaker.usable(now)
    breaker.claim(now)
    assert not breaker.usable(now)  # one probe at a time
    health.success(ch, ch.credentials[0], 0.02)
    assert health.state(ch) is ChannelState.CLOSED and breaker.usable(clock.monotonic())
    fail(health, 4)  # a closed breaker counts afresh
    assert health.state(ch) is ChannelState.CLOSED


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    fail(health, 5)
    cooldowns = []
    for _ in range(4):
        opened = clock.monotonic()
        while health.state(ch) is ChannelState.OPEN:
            clock.advance(1)
        cooldowns.append(clock.monotonic() - opened)
        fail(health, 1)  # the probe fails: open again at once
        assert health.state(ch) is ChannelState.OPEN
    assert cooldowns == [30, 60, 100, 100]


def test_a_probe_that_never_reports_frees_its_claim(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    fail(health, 5)
    clock.advance(30)
    breaker = health.breaker(ch)
    breaker.claim(clock.monotonic())
    clock.advance(POLICY.max_cooldown_s)
    assert breaker.usable(clock.monotonic())


def test_a_rate_limited_credential_rests_for_its_retry_after(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    health.failure(ch, ch.credentials[0], FailureClass.RATE_LIMIT, 0.01, retry_after_s=7)
    assert health.credential(ch, clock.monotonic()) is None
    clock.advance(7)
    assert health.credential(ch, clock.monotonic()) is ch.credentials[0]


def test_a_refused_credential_rests_longer_each_time_until_a_success(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    cred = ch.credentials[0]
    rests = []
    for _ in range(3):
        health.failure(ch, cred, FailureClass.CREDENTIAL, 0.01)
        start = clock.monotonic()
        while health.credential(ch, clock.monotonic()) is None:
            clock.advance(1)
        rests.append(clock.monotonic() - start)
    assert rests == [30, 60, 100]
    health.success(ch, cred, 0.01)
    health.failure(ch, cred, FailureClass.CREDENTIAL, 0.01)
    start = clock.monotonic()
    while health.credential(ch, clock.monotonic()) is None:
        clock.advance(1)
    assert clock.monotonic() - start == 30


def test_states_heard_from_another_process_apply(health: Health, clock: FakeClock) -> None:
    ch = channel("a")
    heard: list[tuple[str, str, float]] = []
    health.on_change = lambda kind, name, seconds: heard.append((kind, name, seconds))
    fail(health, 5)
    assert heard == [("channel", "a/m", 30.0)]
    other = Health(clock, POLICY)
    other.apply(*heard[0])
    assert other.state(ch) is ChannelState.OPEN
    other.apply("channel", "a/m", 0)
    assert other.state(ch) is ChannelState.CLOSED


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (301, FailureClass.TRANSIENT),
        (408, FailureClass.TRANSIENT),
        (409, FailureClass.TRANSIENT),
        (500, FailureClass.TRANSIENT),
        (529, FailureClass.TRANSIENT),
        (429, FailureClass.RATE_LIMIT),
        (401, FailureClass.CREDENTIAL),
        (402, FailureClass.CREDENTIAL),
        (403, FailureClass.CREDENTIAL),
        (404, FailureClass.MODEL_ACCESS),
        (400, FailureClass.CALLER_FAULT),
        (413, FailureClass.CALLER_FAULT),
        (422, FailureClass.CALLER_FAULT),
    ],
)
def test_status_table(status: int, cls: FailureClass) -> None:
    assert status_class(status) is cls


@pytest.mark.parametrize("cls", [FailureClass.RATE_LIMIT, FailureClass.CALLER_FAULT])
def test_a_probe_that_meets_a_failure_that_does_not_count_frees_its_claim(
    health: Health, clock: FakeClock, cls: FailureClass
) -> None:
    ch = channel("a")
    fail(health, 5)
    clock.advance(30)
    breaker = health.breaker(ch)
    breaker.claim(clock.monotonic())
    assert not breaker.usable(clock.monotonic())
    health.failure(ch, ch.credentials[0], cls, 0.01)
    assert health.state(ch) is ChannelState.HALF_OPEN and breaker.usable(clock.monotonic())
