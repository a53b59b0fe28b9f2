"""Property test: spend counters across day, week and month boundaries, with late records and restarts.

Hypothesis drives a real gateway (real HTTP, SQLite store, in-process limits, the controllable clock) through
random admissions, settlements in any order, flushes of the usage writer, clock jumps over day, week and
month boundaries, and restarts (a new gateway process on the same database). A plain reference model keeps,
per counter, what was settled, what the store holds and what is reserved, where a request's counters are
those of the periods its ADMISSION fell in. After every step the model and the gateway must agree on:

* every admission decision (admitted, or refused by the right level);
* the store: each period row of the spend ledger, and lifetime usage of keys, groups and accounts;
* what ``GET /v1/key`` and the management API show (``limit_remaining``, ``usage``, ``quota_used``);
* no stored counter ever goes backwards, and no capped counter ever holds more than its cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from keyrelay.app import KeyrelayApp, create_app
from keyrelay.clock import ensure_utc
from keyrelay.config import ModelConfig, Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.engine import create_engine
from keyrelay.store.keys import KEY_USAGE_MICROS, KEYS_WITH_USAGE
from keyrelay.store.migrate import upgrade_to_head
from keyrelay.store.schema import accounts, groups, keys, spend_periods
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import wait_until
from tests.conftest import TEST_ACTOR
from tests.integration.gateway.conftest import provider_for
from tests.integration.gateway.helpers import auth, chat, chat_body, max_cost_micros

BASE = "http://keyrelay.test"
HELD = "gpt-4o-mini-held"  # answered when the test releases it: the test decides when a request settles
RESETS = (None, "daily", "weekly", "monthly")
STARTS = (
    datetime(2026, 5, 31, 23, 58, tzinfo=UTC),  # Sunday, the month's last day: day, week and month end together
    datetime(2026, 6, 7, 23, 58, tzinfo=UTC),  # Sunday: a day and a week end
    datetime(2026, 6, 30, 23, 58, tzinfo=UTC),  # Tuesday, the month's last day: a day and a month end
)

# A counter: (scope, ident, reset, period start); reset and start are None for a lifetime counter.
Slot = tuple[str, str, str | None, date | None]


def period_of(reset: str | None, at: datetime) -> date | None:
    """The reference's own calendar: the first day of the period of ``reset`` containing ``at`` (UTC)."""
    if reset is None:
        return None
    day = at.astimezone(UTC).date()
    if reset == "daily":
        return day
    if reset == "weekly":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def cost_of(prompt_tokens: int, completion_tokens: int) -> int:
    """gpt-4o-mini at $0.15 / $0.60 per million tokens, in micro-dollars rounded up."""
    return -(-(prompt_tokens * 150_000 + completion_tokens * 600_000) // 1_000_000)


# --- operations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admit:
    key: int
    max_tokens: int


@dataclass(frozen=True)
class Settle:
    pick: int  # which request in flight finishes (modulo their number): any order, so records come late


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Advance:
    seconds: int


@dataclass(frozen=True)
class Restart:
    pass


Op = Admit | Settle | Flush | Advance | Restart


@dataclass(frozen=True)
class Config:
    start: datetime
    key_limits: tuple[tuple[int | None, str | None], ...]  # per key: (limit in micro-dollars, limit_reset)
    quota: int | None
    quota_reset: str | None
    balance: int | None


limits = st.tuples(st.one_of(st.none(), st.integers(15, 90)), st.sampled_from(RESETS))
configs = st.builds(
    Config,
    start=st.sampled_from(STARTS),
    key_limits=st.tuples(limits, limits),
    quota=st.one_of(st.none(), st.integers(30, 160)),
    quota_reset=st.sampled_from(RESETS),
    balance=st.one_of(st.none(), st.integers(60, 400)),
)
# Most jumps stay within a few minutes (requests around a boundary); some cross days, weeks, or a month.
advances = st.one_of(st.integers(1, 240), st.integers(3_600, 2 * 86_400), st.integers(3 * 86_400, 10 * 86_400)).map(
    Advance
)
ops = st.lists(
    st.one_of(
        st.builds(Admit, key=st.integers(0, 1), max_tokens=st.integers(1, 9)),
        st.builds(Settle, pick=st.integers(0, 7)),
        st.just(Flush()),
        advances,
        st.just(Restart()),
    ),
    min_size=1,
    max_size=24,
)


# --- the run: a gateway and its reference ------------------------------------------------------------------


@dataclass
class InFlight:
    task: asyncio.Future[httpx.Response]
    gate: int  # index in mock.state.held
    slots: list[Slot]  # every counter its cost goes to
    levels: list[Slot]  # the capped counters it holds a reservation on
    max_cost: int


@dataclass
class Run:
    mock: MockUpstream
    config: Config
    database_url: str
    clock: FakeClock = field(init=False)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    app: KeyrelayApp | None = None
    client: httpx.AsyncClient | None = None
    admin: str = ""
    plaintexts: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    account_id: str = ""
    group_id: str = ""
    in_flight: list[InFlight] = field(default_factory=list)
    settled: Counter[Slot] = field(default_factory=Counter)  # every settled cost, written or not
    stored: Counter[Slot] = field(default_factory=Counter)  # what the store must hold
    reserved: Counter[Slot] = field(default_factory=Counter)
    unflushed: list[tuple[list[Slot], int]] = field(default_factory=list)
    seen_rows: dict[tuple[str, str, str, date], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clock = FakeClock(self.config.start)

    # --- lifecycle ----------------------------------------------------------------------------------------

    def settings(self) -> Settings:
        base = provider_for(self.mock)
        held = ModelConfig(id=HELD, input_per_mtok="0.15", output_per_mtok="0.60")
        return Settings(
            database_url=self.database_url,
            cache_poll_interval_s=3600,  # nothing changes behind the cache's back here
            usage_flush_interval_s=3600,  # records reach the store when the test flushes (or at a clean stop)
            log_level="warning",
            providers=(base.model_copy(update={"models": (*base.models, held), "timeout_s": 60.0}),),
        )

    async def start(self) -> None:
        # The real application, started and stopped as its server would (lifespan), spoken to over ASGI in
        # this process: no socket and no server ticks, so a response has been settled when it arrives.
        app = create_app(self.settings(), clock=self.clock)
        await app.startup()
        self.stack.push_async_callback(app.shutdown)
        transport = httpx.ASGITransport(app=app)
        self.client = await self.stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=BASE))
        self.app = app

    async def stop(self) -> None:
        await self.stack.aclose()
        self.app = self.client = None
        # A clean stop flushes every queued record.
        self.store_unflushed()

    async def setup(self) -> None:
        await self.start()
        rt = self.runtime
        c = self.config
        quota = None if c.quota is None else Decimal(c.quota) / 1_000_000
        group = await rt.account_service.create_group(
            GroupCreate(name="team", quota=quota, quota_reset=c.quota_reset), actor=TEST_ACTOR
        )
        balance = None if c.balance is None else Decimal(c.balance) / 1_000_000
        account = await rt.account_service.create_account(
            AccountCreate(email="a@example.com", group="team", balance=balance), actor=TEST_ACTOR
        )
        self.account_id, self.group_id = str(account.id), str(group.id)
        for limit, reset in c.key_limits:
            fields: dict[str, Any] = (
                {} if limit is None else {"limit": Decimal(limit) / 1_000_000, "limit_reset": reset}
            )
            issued = await rt.key_service.create(
                account=account, spec=KeyCreate.model_validate({"name": "k", **fields}), actor=TEST_ACTOR
            )
            self.plaintexts.append(issued.plaintext)
            self.hashes.append(key_hash(issued.plaintext))
        root = await rt.account_service.create_account(AccountCreate(email="root@example.com"), actor=TEST_ACTOR)
        admin = await rt.key_service.create(
            account=root, spec=KeyCreate(name="admin"), key_type=KeyType.MANAGEMENT, is_admin=True, actor=TEST_ACTOR
        )
        self.admin = admin.plaintext

    async def release_all(self) -> None:
        """Let every held request of this run answer (used to end a failed example cleanly)."""
        for flight in self.in_flight:
            self.mock.state.release(flight.gate)
        await asyncio.gather(*(f.task for f in self.in_flight), return_exceptions=True)

    @property
    def runtime(self) -> Runtime:
        assert self.app is not None and self.app.runtime is not None
        return self.app.runtime

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.client is not None
        return self.client

    # --- the reference ------------------------------------------------------------------------------------

    def key_reset(self, index: int) -> str | None:
        limit, reset = self.config.key_limits[index]
        return None if limit is None else reset  # without its own limit a key inherits the group's (none here)

    def slots(self, index: int, at: datetime) -> list[Slot]:
        """Every counter a request of key ``index`` admitted at ``at`` is charged to."""
        h, reset, greset = self.hashes[index], self.key_reset(index), self.config.quota_reset
        out: list[Slot] = [("key", h, None, None), ("account", self.account_id, None, None)]
        out.append(("group", self.group_id, None, None))
        if reset is not None:
            out.append(("key", h, reset, period_of(reset, at)))
        if greset is not None:
            out.append(("group", self.group_id, greset, period_of(greset, at)))
        return out

    def levels(self, index: int, at: datetime) -> list[tuple[str, Slot, int]]:
        """The capped counters of a request admitted at ``at``, in the gateway's check order."""
        c = self.config
        out: list[tuple[str, Slot, int]] = []
        if c.balance is not None:
            out.append(("account", ("account", self.account_id, None, None), c.balance))
        if c.quota:
            out.append(("group", ("group", self.group_id, c.quota_reset, period_of(c.quota_reset, at)), c.quota))
        limit = c.key_limits[index][0]
        if limit is not None:
            reset = self.key_reset(index)
            out.append(("key", ("key", self.hashes[index], reset, period_of(reset, at)), limit))
        return out

    def store_unflushed(self) -> None:
        for slots, cost in self.unflushed:
            for slot in slots:
                self.stored[slot] += cost
        self.unflushed.clear()

    # --- steps --------------------------------------------------------------------------------------------

    async def step(self, op: Op) -> None:
        match op:
            case Admit(key=index, max_tokens=max_tokens):
                await self.admit(index, max_tokens)
            case Settle(pick=pick) if self.in_flight:
                await self.settle(self.in_flight.pop(pick % len(self.in_flight)))
            case Flush():
                assert self.app is not None
                await self.app.flush_usage()
                self.store_unflushed()
            case Advance(seconds=seconds):
                self.clock.advance(seconds)
            case Restart():
                # A clean stop lets requests in flight finish first; they finish here, newest first.
                while self.in_flight:
                    await self.settle(self.in_flight.pop())
                await self.stop()
                await self.start()
        # An admission changes no figure shown (reservations are not subtracted): only its decision is checked.
        await self.check(views=not isinstance(op, Admit))

    async def admit(self, index: int, max_tokens: int) -> None:
        now = self.clock.now_utc()
        max_cost = max_cost_micros(chat_body(model=HELD, max_tokens=max_tokens), max_tokens)
        levels = self.levels(index, now)
        refused = next(
            (scope for scope, slot, cap in levels if self.settled[slot] + self.reserved[slot] + max_cost > cap), None
        )
        gate = len(self.mock.state.held)
        task = asyncio.ensure_future(chat(self.http, self.plaintexts[index], model=HELD, max_tokens=max_tokens))
        await wait_until(
            lambda: task.done() or len(self.mock.state.held) > gate,
            what="the request settled or is held",
            interval=0.005,
        )
        if task.done():
            r = task.result()
            assert refused is not None, f"refused but the reference has room: {r.status_code} {r.text}"
            error = r.json()["error"]
            wanted = (402, "INSUFFICIENT_BALANCE") if refused == "account" else (429, "API_KEY_QUOTA_EXHAUSTED")
            assert (r.status_code, error["type"]) == wanted, r.text
            assert error["metadata"] == {"limit_source": refused}
            return
        assert refused is None, f"admitted, but the reference says {refused} is full"
        for _, slot, _ in levels:
            self.reserved[slot] += max_cost
        self.in_flight.append(InFlight(task, gate, self.slots(index, now), [s for _, s, _ in levels], max_cost))

    async def settle(self, flight: InFlight) -> None:
        assert self.app is not None
        queued = await self.app.unwritten_usage()
        self.mock.state.release(flight.gate)
        r = await flight.task
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        cost = cost_of(usage["prompt_tokens"], usage["completion_tokens"])
        assert cost <= flight.max_cost
        # settled, and its record queued (or in the Redis usage stream), before the response arrived
        assert await self.app.unwritten_usage() == queued + 1
        for slot in flight.levels:
            self.reserved[slot] -= flight.max_cost
        for slot in flight.slots:
            self.settled[slot] += cost
        self.unflushed.append((flight.slots, cost))

    # --- checks -------------------------------------------------------------------------------------------

    async def check(self, *, views: bool = True) -> None:
        await self.check_store()
        if views:
            await self.check_views()
        for scope, slot, cap in itertools.chain.from_iterable(
            self.levels(i, self.clock.now_utc()) for i in range(len(self.hashes))
        ):
            assert self.settled[slot] <= cap, f"{scope} spent {self.settled[slot]} > cap {cap}"

    async def check_store(self) -> None:
        async with self.runtime.engine.connect() as conn:
            rows = {
                (r.scope, r.ident, r.reset, ensure_utc(r.period_start).date()): r.usage_micros
                for r in await conn.execute(select(spend_periods))
            }
            key_usage = dict(
                (await conn.execute(select(keys.c.hash, KEY_USAGE_MICROS).select_from(KEYS_WITH_USAGE))).all()
            )
            group_usage = (await conn.execute(select(groups.c.usage_micros))).scalar_one()
            account_spent = dict((await conn.execute(select(accounts.c.id, accounts.c.spent_micros))).all())
        expected = {(s, i, r, p): v for (s, i, r, p), v in self.stored.items() if r is not None and p is not None and v}
        assert rows == expected
        for row, value in rows.items():
            assert value >= self.seen_rows.get(row, 0), f"{row} went back from {self.seen_rows[row]} to {value}"
        self.seen_rows = rows
        for h in self.hashes:
            assert key_usage[h] == self.stored[("key", h, None, None)]
        assert group_usage == self.stored[("group", self.group_id, None, None)]
        assert account_spent[int(self.account_id)] == self.stored[("account", self.account_id, None, None)]

    async def check_views(self) -> None:
        now = self.clock.now_utc()
        for index, (h, plaintext) in enumerate(zip(self.hashes, self.plaintexts, strict=True)):
            limit, reset = self.key_limits(index)
            current: Slot = ("key", h, reset, period_of(reset, now))
            own = await get(self.http, "/v1/key", plaintext)
            managed = await get(self.http, f"/api/v1/keys/{h}", self.admin)
            assert micros(own["usage"]) == self.settled[("key", h, None, None)]
            assert micros(managed["usage"]) == self.stored[("key", h, None, None)]
            if limit is None:
                assert own["limit_remaining"] is None and managed["limit_remaining"] is None
                continue
            # /v1/key: the limits backend's settled spend (flushed or not); the management API: the store's.
            assert micros(own["limit_remaining"]) == max(0, limit - self.settled[current])
            assert micros(managed["limit_remaining"]) == max(0, limit - self.stored[current])
        greset = self.config.quota_reset
        team = await get(self.http, f"/api/v1/groups/{self.group_id}", self.admin)
        assert micros(team["quota_used"]) == self.stored[("group", self.group_id, greset, period_of(greset, now))]

    def key_limits(self, index: int) -> tuple[int | None, str | None]:
        return self.config.key_limits[index][0], self.key_reset(index)


async def get(client: httpx.AsyncClient, url: str, key: str) -> dict[str, Any]:
    r = await client.get(url, headers=auth(key))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


_examples = itertools.count()


async def fresh_database(tmp_path: Path) -> str:
    """A new SQLite database at the newest schema: a copy of one migrated once (migrating costs ~0.3 s)."""
    template = tmp_path / "template.db"
    if not template.exists():
        engine = create_engine(f"sqlite+aiosqlite:///{template}")
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()
    path = tmp_path / f"example-{next(_examples)}.db"
    shutil.copyfile(template, path)
    return f"sqlite+aiosqlite:///{path}"


# Each example runs a gateway (and restarts it): a dozen random ones plus the cases of the issue, written out.
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config=configs, steps=ops)
@example(  # the reported case, on a Sunday night: admitted before midnight, written after the new day's records
    config=Config(STARTS[1], ((40, "daily"), (60, "weekly")), quota=150, quota_reset="daily", balance=None),
    steps=[
        Admit(0, 9),
        Admit(1, 9),
        Advance(150),  # a new day and a new week; both requests are still in flight
        Admit(0, 3),
        Admit(1, 3),
        Settle(2),
        Settle(2),
        Flush(),  # the new period's records are written first ...
        Settle(0),
        Settle(0),
        Flush(),  # ... then the late ones
        Admit(0, 9),
        Admit(0, 9),
        Restart(),
        Admit(0, 9),
        Admit(0, 9),
    ],
)
@example(  # a month boundary, the late record written only by the clean stop
    config=Config(STARTS[2], ((30, "monthly"), (None, None)), quota=100, quota_reset="monthly", balance=200),
    steps=[Admit(0, 9), Advance(200), Admit(0, 9), Settle(1), Flush(), Restart(), Admit(0, 9), Admit(1, 9)],
)
async def test_spend_counters_follow_the_admission_period(
    mock: MockUpstream, tmp_path: Path, config: Config, steps: list[Op]
) -> None:
    run = Run(mock, config, await fresh_database(tmp_path))
    try:
        await run.setup()
        await run.check()
        for op in steps:
            await run.step(op)
        # The end of the story: everything finishes, a clean stop writes it, a new process reloads it.
        await run.step(Restart())
    finally:
        await run.release_all()
        await run.stack.aclose()


def test_reference_calendar() -> None:
    """The reference's own periods: Monday weeks, first-of-month months, UTC days."""
    sunday = datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC)
    assert [period_of(r, sunday) for r in RESETS] == [None, date(2026, 5, 31), date(2026, 5, 25), date(2026, 5, 1)]
    monday = sunday + timedelta(seconds=1)
    assert [period_of(r, monday) for r in RESETS] == [None, date(2026, 6, 1), date(2026, 6, 1), date(2026, 6, 1)]
