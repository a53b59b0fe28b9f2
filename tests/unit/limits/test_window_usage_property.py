"""Property tests of window_usage: random admissions, settlements, clock steps and reads.

Every backend is stepped beside a naive reference (every request's timestamp in a list, ``RefWindow``):
each admission must decide as the reference does, although the key is read before and after it, at the
present and ahead of it; each read must give the reference's counts. A second test runs memory and
Redis side by side and asks for the same answers from both (the admissions' x-ratelimit-* figures and Retry-After
too), and checks the running 'sum' and oldest bucket 'lo' that admit_v5.lua keeps in each window hash.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import keyrelay.limits.memory
import keyrelay.limits.redis
from keyrelay.errors import GatewayError
from keyrelay.limits import windows
from keyrelay.limits.backend import (
    RESERVATION_TTL_S,
    AdmissionRequest,
    LimitsBackend,
    RequestWindow,
    Reservation,
    WindowUsage,
    window_refusal,
)
from keyrelay.limits.memory import MemoryLimits
from keyrelay.limits.redis import RedisLimits
from tests.unit.limits.test_properties import RefWindow

T0 = 1_800_000_000.0
# Redis releases a reservation RESERVATION_TTL_S after its admission and the memory backend never does,
# so the clock and every read stay short of that: in-flight counts must agree.
HORIZON = T0 + RESERVATION_TTL_S - 1


@contextlib.contextmanager
def raw_retries() -> Iterator[list[float]]:
    """The Retry-After of each window refusal as the backend computed it, before ``window_refusal``'s floor of 1 s."""
    raw: list[float] = []

    def recording(name: str, limit: int, retry_after: float, *, in_flight: int | None = None) -> GatewayError:
        raw.append(retry_after)
        return window_refusal(name, limit, retry_after, in_flight=in_flight)

    with (
        patch.object(keyrelay.limits.memory, "window_refusal", recording),
        patch.object(keyrelay.limits.redis, "window_refusal", recording),
    ):
        yield raw


async def check_sums(backend: RedisLimits, key: str, names: list[str]) -> dict[str, dict[int, int]]:
    """admit_v5.lua's running figures of each window hash: 'sum' of its buckets, 'lo' the oldest of them.

    Returns each window's buckets (index → count).
    """
    found = {}
    for name in names:
        fields = await backend._redis.hgetall(backend._window_key(key, name))
        buckets = {int(field): int(value) for field, value in fields.items() if field not in (b"sum", b"lo")}
        if not buckets:
            assert b"lo" not in fields and int(fields.get(b"sum", 0)) == 0, (name, fields)
        else:
            assert int(fields[b"sum"]) == sum(buckets.values()) and int(fields[b"lo"]) == min(buckets), (name, fields)
        found[name] = buckets
    return found


@dataclass(frozen=True)
class Config:
    rpm: int | None
    per_5h: int | None
    tpm: int | None
    max_concurrent: int | None
    start: float  # seconds after T0


@dataclass(frozen=True)
class Admit:
    max_tokens: int


@dataclass(frozen=True)
class Settle:
    pick: int  # which open request (modulo their number)
    tokens: int  # clipped to its max_tokens


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Read:
    ahead: float  # seconds after the present (never before it: admissions have dropped what left the window)
    tpm: bool


Op = Admit | Settle | Advance | Read


@dataclass
class Open:
    reservations: list[Reservation]  # one per backend
    entry: list[float]  # its [time, tokens] in the reference tpm window
    max_tokens: int


class UsageRun:
    """One example: the backends and the reference, stepped together."""

    def __init__(self, backends: list[LimitsBackend], config: Config, n: int) -> None:
        self.backends = backends
        self.config = config
        self.key = f"usage-prop-{n}"  # examples share the Redis fixture: a fresh key each
        self.now = T0 + config.start
        self.windows = tuple(
            RequestWindow(name, seconds, limit)
            for name, seconds, limit in (("rpm", 60, config.rpm), ("per_5h", 5 * 3600, config.per_5h))
            if limit is not None
        )
        self.ref = {spec.name: RefWindow(spec.seconds) for spec in self.windows}
        self.ref_tpm = RefWindow(60)
        self.opened: list[Open] = []
        self.ids = itertools.count()

    def expected(self, at: float, tpm: bool) -> WindowUsage:
        in_flight = len(self.opened) if self.config.max_concurrent is not None else 0
        return WindowUsage(
            counts={name: ref.count(at) for name, ref in self.ref.items()},
            tokens_per_minute=self.ref_tpm.count(at) if tpm else None,
            in_flight=in_flight,
        )

    def admits(self, max_tokens: int) -> bool:
        config = self.config
        if config.tpm is not None and self.ref_tpm.count(self.now) + max_tokens > config.tpm:
            return False
        if config.max_concurrent is not None and len(self.opened) >= config.max_concurrent:
            return False
        return all(self.ref[spec.name].count(self.now) < spec.limit for spec in self.windows)

    async def read(self, at: float, tpm: bool) -> None:
        want = self.expected(at, tpm)
        for backend in self.backends:
            assert await backend.window_usage(self.key, self.windows, tpm=tpm, now=at) == want, (at, type(backend))

    async def step(self, op: Op) -> None:
        match op:
            case Advance(seconds):
                self.now = min(self.now + seconds, HORIZON)
            case Read(ahead, tpm):
                await self.read(min(self.now + ahead, HORIZON), tpm)
            case Settle(pick, tokens):
                if self.opened:
                    item = self.opened.pop(pick % len(self.opened))
                    tokens = min(tokens, item.max_tokens)
                    for backend, reservation in zip(self.backends, item.reservations, strict=True):
                        await backend.settle(reservation, cost_micros=0, tokens=tokens, now=self.now)
                    item.entry[1] = tokens
            case Admit(max_tokens):
                await self.admit(max_tokens)
        await self.read(self.now, tpm=True)

    async def check_sums(self, backend: RedisLimits) -> None:
        names = [spec.name for spec in self.windows] + (["tpm"] if self.config.tpm is not None else [])
        await check_sums(backend, self.key, names)

    async def admit(self, max_tokens: int) -> None:
        expected = self.admits(max_tokens)
        reservations = []
        outcomes: list[tuple[object, ...]] = []
        resets: list[float | None] = []
        for backend in self.backends:
            request = AdmissionRequest(
                key_hash=self.key,
                request_id=f"{self.key}-{next(self.ids)}",
                now=self.now,
                cost_micros=0,
                spend=(),
                windows=self.windows,
                tpm=self.config.tpm,
                max_tokens=max_tokens,
                max_concurrent=self.config.max_concurrent,
            )
            try:
                with raw_retries() as raw:
                    admission = await backend.admit(request)
            except GatewayError as err:
                assert not expected, (self.now, err.message)
                outcomes.append(("refused", err.message, raw[0] if raw else err.retry_after))
            else:
                reservations.append(admission.reservation)
                status = admission.window
                outcomes.append(("admitted", None) if status is None else ("admitted", status.limit, status.remaining))
                resets.append(None if status is None else status.reset_s)
            if isinstance(backend, RedisLimits):
                await self.check_sums(backend)
        # Every backend gives the same x-ratelimit-* figures and Retry-After (Redis in whole milliseconds).
        assert all(outcome[:2] == outcomes[0][:2] for outcome in outcomes), (self.now, outcomes)
        if outcomes[0][0] == "admitted":
            assert all(outcome == outcomes[0] for outcome in outcomes), (self.now, outcomes)
            assert all(
                (r is None) == (resets[0] is None) and (r is None or abs(r - resets[0]) <= 0.001) for r in resets
            ), (self.now, resets)
        else:
            assert all(abs(outcome[2] - outcomes[0][2]) <= 0.001 for outcome in outcomes), (self.now, outcomes)
        if not expected:
            return
        assert len(reservations) == len(self.backends)
        for spec in self.windows:
            self.ref[spec.name].entries.append([self.now, 1])
        entry = [self.now, float(max_tokens)]
        if self.config.tpm is not None:
            self.ref_tpm.entries.append(entry)
        self.opened.append(Open(reservations, entry, max_tokens))


configs = st.builds(
    Config,
    rpm=st.one_of(st.none(), st.integers(1, 6)),
    per_5h=st.one_of(st.none(), st.integers(1, 12)),
    tpm=st.one_of(st.none(), st.sampled_from([300, 1000]), st.integers(1, 2000)),
    max_concurrent=st.one_of(st.none(), st.integers(1, 4)),
    start=st.floats(0, 300),
)
ops = st.lists(
    st.one_of(
        st.builds(Admit, st.one_of(st.sampled_from([0, 100, 250]), st.integers(0, 600))),
        st.builds(Settle, st.integers(0, 63), st.one_of(st.sampled_from([0, 50]), st.integers(0, 600))),
        st.builds(
            Advance,
            st.one_of(st.floats(0, 1.5), st.integers(0, 70).map(float), st.sampled_from([299.5, 300.0, 900.0])),
        ),
        st.builds(
            Read,
            st.one_of(st.just(0.0), st.floats(0, 130), st.sampled_from([59.999, 60.0, 300.0, 3600.0])),
            st.booleans(),
        ),
    ),
    max_size=50,
)
_examples = itertools.count()
# Always tried: requests read just before, at and after the moment their bucket leaves, with tokens settled.
EDGES = {
    "config": Config(rpm=2, per_5h=3, tpm=100, max_concurrent=2, start=0.25),
    "steps": [
        Admit(10),
        Advance(0.5),
        Admit(20),
        Read(59.5, True),
        Read(59.75, True),
        Read(60.5, True),
        Settle(0, 5),
        Advance(59.75),
        Admit(30),
        Admit(30),
        Advance(0.5),
        Admit(30),
    ],
}


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, steps=ops)
@example(**EDGES)
async def test_window_usage_matches_reference(backend: LimitsBackend, config: Config, steps: list[Op]) -> None:
    run = UsageRun([backend], config, next(_examples))
    for op in steps:
        await run.step(op)


@pytest.mark.redis
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, steps=ops)
@example(**EDGES)
async def test_memory_and_redis_agree(redis_limits: RedisLimits, config: Config, steps: list[Op]) -> None:
    run = UsageRun([MemoryLimits(), redis_limits], config, next(_examples))
    for op in steps:
        await run.step(op)


@pytest.mark.redis
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 5),
    moments=st.lists(st.one_of(st.floats(0, 200), st.integers(0, 200).map(float)), min_size=1, max_size=30),
)
@example(limit=2, moments=[100.0, 95.5, 30.0, 100.0, 161.0, 95.0, 160.0])
async def test_redis_windows_of_gateways_whose_clocks_disagree(
    redis_limits: RedisLimits, limit: int, moments: list[float]
) -> None:
    """Admissions of one key stamped by gateways whose clocks disagree (times in any order, buckets written ahead
    of another's present): each decides, reports and advises as windows.py's functions do on the buckets written
    so far, less those that left the window as the admitting gateway's clock says (the memory backend assumes one
    clock that never goes back, so it cannot be the reference here); 'sum' and 'lo' stay right throughout."""
    key = f"skew-{next(_examples)}"
    rpm = RequestWindow("rpm", 60, limit)
    buckets: dict[int, int] = {}
    for n, moment in enumerate(moments):
        now = T0 + moment
        current = windows.bucket_of(now, 60)
        windows.prune(buckets, current)
        used = windows.live(buckets, current)
        request = AdmissionRequest(key, f"{key}-{n}", now, 0, (), (rpm,), None, 0, None)
        with raw_retries() as raw:
            try:
                status = (await redis_limits.admit(request)).window
            except GatewayError:
                assert used + 1 > limit, (moment, buckets)
                assert abs(raw[0] - windows.retry_after(buckets, current, 60, now, limit, 1)) <= 0.001, (moment, raw)
            else:
                assert used + 1 <= limit and status is not None, (moment, buckets)
                assert (status.limit, status.remaining) == (limit, limit - used - 1)
                expected_reset = windows.retry_after(buckets, current, 60, now, limit, limit - used + 1)
                assert abs(status.reset_s - expected_reset) <= 0.001, (moment, status, buckets)
                buckets[current] = buckets.get(current, 0) + 1
        assert (await check_sums(redis_limits, key, ["rpm"]))["rpm"] == buckets, moment
