"""Property tests: the window arithmetic and both limits backends against plain reference models.

The references are deliberately naive: a window is a list of every admitted request's timestamp
(a request counts while its bucket is one of the last 60 buckets), and the spend ledger is a dict
of spent/reserved per level. Hypothesis drives random sequences through the real code and the
reference side by side and checks that every decision matches and that no cap is ever exceeded.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.limits import windows as w
from keyrelay.limits.backend import (
    RESERVATION_TTL_S,
    AdmissionRequest,
    LimitsBackend,
    RequestWindow,
    Reservation,
    SpendLevel,
)

T0 = 1_800_000_000.0
EPS = 1e-6  # far below any bucket width, above the float spacing at epoch ~1.8e9 (2.4e-7)
SCOPES = ("account", "group", "key")


# --- reference window: every request timestamp in a list --------------------------------------------------


@dataclass
class RefWindow:
    """A window that remembers every (time, weight) and counts the ones whose bucket is among the last 60."""

    seconds: int
    entries: list[list[float]] = field(default_factory=list)  # [time, weight]; weight may be settled down

    def bucket(self, t: float) -> int:
        return w.bucket_of(t, self.seconds)

    def count(self, now: float) -> int:
        oldest = self.bucket(now) - (w.BUCKETS - 1)
        return int(sum(weight for t, weight in self.entries if self.bucket(t) >= oldest))

    def earliest_fit(self, now: float, limit: int, weight: int) -> float | None:
        """The first moment >= now at which ``weight`` more fits (None if it never does)."""
        if self.count(now) + weight <= limit:
            return now
        if weight > limit:
            return None
        width = self.seconds / w.BUCKETS
        # The count only drops when a bucket leaves the window, i.e. at (bucket + 60) * width.
        for b in sorted({self.bucket(t) for t, _ in self.entries}):
            leave = (b + w.BUCKETS) * width
            if leave > now and self.count(leave) + weight <= limit:
                return leave
        return None


# --- 1. window arithmetic ----------------------------------------------------------------------------------


def _window_case(name: str) -> st.SearchStrategy[tuple[float, int, list[tuple[float, int]]]]:
    seconds = w.WINDOW_SECONDS[name]
    width = w.width(seconds)
    increment = st.one_of(
        st.just(0.0),
        st.floats(0, 1, exclude_max=True).map(lambda f: f * width),  # inside one bucket
        st.integers(0, 130).map(lambda k: k * width),  # exactly on bucket boundaries
        st.floats(0, 130).map(lambda f: f * width),  # anywhere up to two windows ahead
    )
    if name == "tpm":
        limit = st.integers(1, 40)
        weight = st.integers(1, 45)  # sometimes more than the whole limit
    else:
        limit = st.integers(1, 8)
        weight = st.just(1)
    start = st.floats(0, seconds).map(lambda f: T0 + f)
    return st.tuples(start, limit, st.lists(st.tuples(increment, weight), max_size=60))


@pytest.mark.parametrize("name", list(w.WINDOW_SECONDS))
@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data())
def test_window_arithmetic_matches_reference(name: str, data: st.DataObject) -> None:
    seconds = w.WINDOW_SECONDS[name]
    width = w.width(seconds)
    now, limit, steps = data.draw(_window_case(name))
    buckets: dict[int, int] = {}
    ref = RefWindow(seconds)
    for increment, weight in steps:
        now += increment
        current = w.bucket_of(now, seconds)
        expected = ref.count(now)
        assert w.live(buckets, current) == expected  # live ignores stale buckets even before pruning
        w.prune(buckets, current)
        assert w.live(buckets, current) == expected
        assert len(buckets) <= w.BUCKETS
        assert all(current - w.BUCKETS < index <= current for index in buckets)

        admitted = w.live(buckets, current) + weight <= limit
        assert admitted == (expected + weight <= limit)
        if admitted:
            buckets[current] = buckets.get(current, 0) + weight
            ref.entries.append([now, weight])
            assert len(buckets) <= w.BUCKETS
            continue

        before = dict(buckets)
        retry = w.retry_after(buckets, current, seconds, now, limit, weight)
        assert buckets == before  # asking does not change anything
        assert 0 <= retry <= seconds
        fit = ref.earliest_fit(now, limit, weight)
        if fit is None:  # the weight alone exceeds the limit
            assert weight > limit and retry == seconds
            continue
        assert retry == pytest.approx(fit - now, abs=EPS)
        later = now + retry + EPS
        assert ref.count(later) + weight <= limit
        assert w.live(buckets, w.bucket_of(later, seconds)) + weight <= limit
        if retry > width:
            sooner = now + retry - width / 2
            assert ref.count(sooner) + weight > limit
            assert w.live(buckets, w.bucket_of(sooner, seconds)) + weight > limit


# --- 2. reservation ledger on both backends ----------------------------------------------------------------


@dataclass(frozen=True)
class LedgerConfig:
    """One example's fixed limits: caps and seeds per level, and the key's optional rpm/tpm/in-flight caps."""

    caps: tuple[int, int, int]  # account, group, key
    bases: tuple[int, int, int]  # seeded spend, clipped to the cap
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    start: float


Fill = tuple[str, int]  # ("fill", extra): exactly what is left (+ extra), resolved when the step runs


@dataclass(frozen=True)
class AdmitOp:
    cost: int | Fill
    scopes: tuple[str, ...]  # put in account → group → key order
    max_tokens: int | Fill


@dataclass(frozen=True)
class SettleOp:
    pick: int  # which open reservation (modulo their number)
    cost: int  # clipped to the reserved cost
    tokens: int  # clipped to max_tokens


@dataclass(frozen=True)
class AdvanceOp:
    seconds: float


@dataclass
class RefLevel:
    cap: int
    spent: int
    reserved: int = 0


@dataclass
class Open:
    """An admitted, not yet settled request: the backend's reservation and the reference's view of it."""

    reservation: Reservation
    cost: int
    scopes: tuple[str, ...]
    max_tokens: int
    tpm_entry: list[float] | None


def reason_of(err: GatewayError) -> tuple[str, ...]:
    """The reference's refusal reason for a backend error."""
    if err.error_type in (ErrorType.INSUFFICIENT_BALANCE, ErrorType.API_KEY_QUOTA_EXHAUSTED):
        return ("spend", str(err.limit_source))
    assert err.error_type is ErrorType.RATE_LIMIT_EXCEEDED, err
    if "max_concurrent" in err.message:
        return ("max_concurrent",)
    if err.message.startswith("Token rate limit") or "than this key's tpm=" in err.message:
        return ("tpm",)  # the window is full, or this request alone is larger than the whole window
    window = re.match(r"Rate limit (\w+)=", err.message)
    return ("window", window[1]) if window else ("unrecognised", err.message)


def _resolve(spec: int | Fill, room: float) -> int:
    return max(0, int(room) + spec[1]) if isinstance(spec, tuple) else spec


class LedgerRun:
    """One example: the backend and the reference model, stepped together and compared after every step."""

    def __init__(self, backend: LimitsBackend, config: LedgerConfig, n: int) -> None:
        self.backend = backend
        self.config = config
        self.n = n  # fresh key and level names per example: examples share the backend fixture
        self.levels = {
            scope: SpendLevel(scope, f"{scope}-{n}", "life", cap, min(base, cap), None)  # type: ignore[arg-type]
            for scope, cap, base in zip(SCOPES, config.caps, config.bases, strict=True)
        }
        self.ref = {scope: RefLevel(lvl.cap_micros, lvl.base_micros) for scope, lvl in self.levels.items()}
        self.rpm = RefWindow(60)
        self.tpm = RefWindow(60)
        self.in_flight = 0
        self.opened: list[Open] = []
        self.actual = dict.fromkeys(SCOPES, 0)
        self.now = T0 + config.start
        self.requests = itertools.count()

    # --- the reference -------------------------------------------------------------------------------------
    def refusal(self, cost: int, scopes: tuple[str, ...], max_tokens: int) -> tuple[str, ...] | None:
        """Why the reference refuses (None: admitted), checking in the documented order."""
        config = self.config
        if config.tpm is not None and max_tokens > config.tpm:
            return ("tpm",)  # could never fit: refused before any counter is looked at
        for scope in scopes:
            lvl = self.ref[scope]
            if lvl.spent + lvl.reserved + cost > lvl.cap:
                return ("spend", scope)
        if config.rpm is not None and self.rpm.count(self.now) + 1 > config.rpm:
            return ("window", "rpm")
        if config.tpm is not None and self.tpm.count(self.now) + max_tokens > config.tpm:
            return ("tpm",)
        if config.max_concurrent is not None and self.in_flight >= config.max_concurrent:
            return ("max_concurrent",)
        return None

    def expected_retry(self, reason: tuple[str, ...], max_tokens: int) -> float | None:
        """Retry-After of a window refusal: when the reference window first has room (at least 1 s)."""
        if reason[0] == "window":
            fit = self.rpm.earliest_fit(self.now, self.config.rpm or 0, 1)
        elif reason[0] == "tpm":
            fit = self.tpm.earliest_fit(self.now, self.config.tpm or 0, max_tokens)
        else:
            return None
        return max(1.0, w.WINDOW_SECONDS["tpm"] if fit is None else fit - self.now)

    # --- steps ---------------------------------------------------------------------------------------------
    async def spent(self) -> dict[str, int]:
        return {scope: await self.backend.spent(lvl) for scope, lvl in self.levels.items()}

    async def step(self, op: AdmitOp | SettleOp | AdvanceOp) -> None:
        if isinstance(op, AdvanceOp):
            self.now += op.seconds
        elif isinstance(op, SettleOp):
            if self.opened:
                item = self.opened.pop(op.pick % len(self.opened))
                await self.settle(item, min(op.cost, item.cost), min(op.tokens, item.max_tokens))
        else:
            await self.admit(op)
        await self.check()

    async def admit(self, op: AdmitOp) -> None:
        scopes = tuple(s for s in SCOPES if s in op.scopes)
        room = min((self.ref[s].cap - self.ref[s].spent - self.ref[s].reserved for s in scopes), default=0)
        cost = _resolve(op.cost, room)
        tpm = self.config.tpm
        max_tokens = _resolve(op.max_tokens, 0 if tpm is None else tpm - self.tpm.count(self.now))
        request = AdmissionRequest(
            key_hash=f"prop-{self.n}",
            request_id=f"prop-{self.n}-{next(self.requests)}",
            now=self.now,
            cost_micros=cost,
            spend=tuple(self.levels[s] for s in scopes),
            windows=() if self.config.rpm is None else (RequestWindow("rpm", 60, self.config.rpm),),
            tpm=tpm,
            max_tokens=max_tokens,
            max_concurrent=self.config.max_concurrent,
        )
        expected = self.refusal(cost, scopes, max_tokens)
        before = await self.spent()
        try:
            admission = await self.backend.admit(request)
        except GatewayError as err:
            assert reason_of(err) == expected, (expected, err.message)
            assert await self.spent() == before  # a refusal changes nothing
            retry = self.expected_retry(expected, max_tokens)
            if retry is not None:
                assert err.retry_after == pytest.approx(retry, abs=2e-3)  # Redis rounds up to milliseconds
            return
        assert expected is None, (expected, "admitted")
        if self.config.rpm is not None:
            remaining = self.config.rpm - self.rpm.count(self.now) - 1
            assert admission.window is not None and admission.window.remaining == remaining
            self.rpm.entries.append([self.now, 1])
        tpm_entry = None
        if tpm is not None:
            tpm_entry = [self.now, max_tokens]
            self.tpm.entries.append(tpm_entry)
        for scope in scopes:
            self.ref[scope].reserved += cost
        if self.config.max_concurrent is not None:
            self.in_flight += 1
        self.opened.append(Open(admission.reservation, cost, scopes, max_tokens, tpm_entry))

    async def settle(self, item: Open, cost: int, tokens: int) -> None:
        await self.backend.settle(item.reservation, cost_micros=cost, tokens=tokens, now=self.now)
        for scope in item.scopes:
            self.ref[scope].reserved -= item.cost
            self.ref[scope].spent += cost
            self.actual[scope] += cost
        if item.tpm_entry is not None:
            item.tpm_entry[1] = tokens
        if self.config.max_concurrent is not None:
            self.in_flight -= 1

    async def check(self) -> None:
        """Invariants after every step (every admitted request settles at most at its reserved cost)."""
        spent = await self.spent()
        for scope, lvl in self.ref.items():
            assert spent[scope] == lvl.spent
            assert spent[scope] + lvl.reserved <= lvl.cap
        if self.config.max_concurrent is not None:
            assert self.in_flight <= self.config.max_concurrent
        if self.config.tpm is not None:
            assert self.tpm.count(self.now) <= self.config.tpm

    async def finish(self) -> None:
        """Settle what is still open at its full reserved cost (the worst case for the caps), then compare."""
        while self.opened:
            item = self.opened.pop()
            await self.settle(item, item.cost, item.max_tokens)
        spent = await self.spent()
        for scope, lvl in self.levels.items():
            assert spent[scope] == lvl.base_micros + self.actual[scope] <= lvl.cap_micros
            assert self.ref[scope].reserved == 0


def _amount(round_values: list[int], top: int) -> st.SearchStrategy[int]:
    """Round amounts (so sums hit caps exactly) mixed with arbitrary ones."""
    return st.one_of(st.sampled_from(round_values), st.integers(0, top))


_optional_limit = st.one_of(st.none(), st.integers(1, 6))
_fill = st.tuples(st.just("fill"), st.integers(0, 1))  # exactly what is left, or one more
ledger_configs = st.builds(
    LedgerConfig,
    caps=st.tuples(*[_amount([0, 500, 1000, 2000], 3000)] * 3),
    bases=st.tuples(*[_amount([0, 500], 1000)] * 3),
    rpm=_optional_limit,
    tpm=st.one_of(st.none(), st.sampled_from([500, 1000]), st.integers(1, 4000)),
    max_concurrent=_optional_limit,
    start=st.floats(0, 60),
)
admit_ops = st.builds(
    AdmitOp,
    cost=st.one_of(_amount([0, 250, 500, 1000], 1200), _fill),
    scopes=st.lists(st.sampled_from(SCOPES), unique=True).map(tuple),
    max_tokens=st.one_of(_amount([0, 250, 500, 1000], 1500), _fill),
)
settle_ops = st.builds(
    SettleOp, pick=st.integers(0, 63), cost=_amount([0, 100, 500], 1500), tokens=_amount([0, 100, 500], 1500)
)
# Time stays below RESERVATION_TTL_S (the Redis backend releases reservations older than that, the memory
# backend keeps them): a start under 60 s plus at most 40 steps of at most 70 s.
MAX_OPS, MAX_ADVANCE = 40, 70
advance_ops = st.builds(AdvanceOp, st.one_of(st.floats(0, 1.5), st.integers(0, MAX_ADVANCE).map(float)))
# Draw the length first: long sequences are common, and a failure still shrinks to a short one.
ledger_ops = st.integers(1, MAX_OPS).flatmap(
    lambda n: st.lists(st.one_of(admit_ops, settle_ops, advance_ops), min_size=n, max_size=n)
)
assert 60 + MAX_OPS * MAX_ADVANCE < RESERVATION_TTL_S

_examples = itertools.count()


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(config=ledger_configs, ops=ledger_ops)
@example(  # a zero-cost reservation with a spend level, settled: then its tpm tokens and in-flight slot are free
    config=LedgerConfig(caps=(1000, 0, 0), bases=(0, 0, 0), rpm=None, tpm=500, max_concurrent=1, start=0.0),
    ops=[
        AdmitOp(cost=0, scopes=("account",), max_tokens=500),
        SettleOp(pick=0, cost=0, tokens=0),
        AdmitOp(cost=0, scopes=(), max_tokens=250),
    ],
)
async def test_ledger_matches_reference(
    backend: LimitsBackend, config: LedgerConfig, ops: list[AdmitOp | SettleOp | AdvanceOp]
) -> None:
    run = LedgerRun(backend, config, next(_examples))
    for op in ops:
        await run.step(op)
    await run.finish()


def test_reference_window_counts_whole_buckets() -> None:
    """Sanity check of the reference itself: a request leaves exactly when its bucket does."""
    ref = RefWindow(60)
    ref.entries.append([T0 + 0.5, 1])
    assert ref.count(T0 + 59.999) == 1
    assert ref.count(T0 + 60.0) == 0
    assert math.isclose(ref.earliest_fit(T0 + 10, 1, 1) or 0.0, T0 + 60)
