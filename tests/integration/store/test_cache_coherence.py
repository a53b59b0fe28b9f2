"""Property test: the key cache and its store poller against the store itself, under any order of events.

Two runtimes share one store: ``local`` (whose cache is checked) and ``remote`` (another process: the CLI, another
gateway). Hypothesis drives loads into the local cache, writes to keys, accounts and the group from either side,
revocations, clock moves and polls. At every poll, against the rows in the store:

* no entry that was current before the poll is evicted by it (an eviction of a current entry is what turned a
  store outage into a 503 for a working key, issue 7 item 6);
* no entry that was stale before the poll survives it (another process's writes always reach the cache);
* the poll reports exactly the entries it evicted.

The clock only moves when an ``Advance`` says so: writes made in the same instant are the hard case for anything that
compares times.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyrelay.cache.keycache import Principal
from keyrelay.config import Settings
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyCreate, KeyUpdate
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.inputs import AccountCreate, AccountUpdate, GroupCreate, GroupUpdate
from keyrelay.testing.clock import FakeClock
from tests.conftest import TEST_ACTOR

KEYS = 3  # keys 0 and 1 belong to account 0, key 2 to account 1; both accounts are in the one group
_examples = itertools.count()


@dataclass(frozen=True)
class Load:
    key: int


@dataclass(frozen=True)
class Write:
    remote: bool
    target: str  # "key", "account" or "group"
    index: int


@dataclass(frozen=True)
class Revoke:
    key: int


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Poll:
    pass


Op = Load | Write | Revoke | Advance | Poll
ops = st.lists(
    st.one_of(
        st.builds(Load, st.integers(0, KEYS - 1)),
        st.builds(Write, st.booleans(), st.sampled_from(["key", "account", "group"]), st.integers(0, KEYS - 1)),
        st.builds(Revoke, st.integers(0, KEYS - 1)),
        st.builds(Advance, st.sampled_from([0.0, 0.5, 6.0, 3600.0])),
        st.just(Poll()),
    ),
    max_size=25,
)


@dataclass
class Runtimes:
    clock: FakeClock
    local: Runtime
    remote: Runtime


@pytest.fixture
async def runtimes(database_url: str) -> AsyncIterator[Runtimes]:
    clock = FakeClock()
    settings = Settings(database_url=database_url)
    local = await open_runtime(settings, clock=clock)
    remote = await open_runtime(settings, clock=clock, migrate=False)
    try:
        yield Runtimes(clock, local, remote)
    finally:
        await remote.close()
        await local.close()


class Scenario:
    """One example: a fresh group, two accounts and three keys, then the operations."""

    def __init__(self, rts: Runtimes) -> None:
        self.rts = rts
        self.n = next(_examples)
        self.secrets: list[str] = []
        self.account_ids: list[int] = []
        self.group_id = 0
        self.revoked: set[int] = set()

    async def setup(self) -> None:
        self.rts.local.cache.clear()  # nothing left over from an earlier example (one that failed half-way)
        services = self.rts.local.account_service
        group = await services.create_group(GroupCreate(name=f"g{self.n}"), actor=TEST_ACTOR)
        self.group_id = group.id
        for a in range(2):
            account = await services.create_account(
                AccountCreate(email=f"e{self.n}-{a}@example.com", group=group.name), actor=TEST_ACTOR
            )
            self.account_ids.append(account.id)
        for k in range(KEYS):
            account = await self.rts.local.accounts.get(account_id=self.account_ids[0 if k < 2 else 1])
            assert account is not None
            issued = await self.rts.local.key_service.create(
                account=account, spec=KeyCreate(name=f"k{k}"), actor=TEST_ACTOR
            )
            self.secrets.append(key_hash(issued.plaintext))

    async def _current(self, principal: Principal) -> bool:
        """Whether the cached principal was loaded from the rows now in the store."""
        store = self.rts.remote
        key = await store.keys.get(key_hash=principal.key.hash, include_deleted=True)
        account = await store.accounts.get(account_id=principal.account.id)
        group = await store.groups.get(group_id=self.group_id)
        assert key is not None and account is not None and group is not None and principal.group is not None
        return (
            (principal.key.version, principal.key.updated_at) == (key.version, key.updated_at)
            and (principal.account.version, principal.account.updated_at) == (account.version, account.updated_at)
            and (principal.group.version, principal.group.updated_at) == (group.version, group.updated_at)
        )

    async def _write(self, op: Write) -> None:
        rt = self.rts.remote if op.remote else self.rts.local
        tag = f"{self.n}-{rt is self.rts.remote}"
        if op.target == "key":
            if op.index in self.revoked:
                return
            record = await rt.keys.get(key_hash=self.secrets[op.index])  # a key's stable hash is its first secret's
            assert record is not None
            await rt.key_service.update(record=record, spec=KeyUpdate(name=f"k{op.index}-{tag}"), actor=TEST_ACTOR)
        elif op.target == "account":
            account = await rt.accounts.get(account_id=self.account_ids[op.index % 2])
            assert account is not None
            await rt.account_service.update_account(account, AccountUpdate(balance=op.index + 1), actor=TEST_ACTOR)
        else:
            group = await rt.groups.get(group_id=self.group_id)
            assert group is not None
            await rt.account_service.update_group(group, GroupUpdate(description=tag), actor=TEST_ACTOR)

    async def _poll(self) -> None:
        cache = self.rts.local.cache
        before = {s: p for s in self.secrets if (p := cache.peek(s)) is not None}
        current = {s for s, p in before.items() if await self._current(p)}
        evicted = await self.rts.local.cache_sync.poll_once()
        after = {s for s in self.secrets if cache.peek(s) is not None}
        assert current <= after, f"the poll evicted current entries {sorted(current - after)}"
        assert after <= current, f"stale entries survived the poll {sorted(after - current)}"
        assert evicted == len(before) - len(after)

    async def step(self, op: Op) -> None:
        match op:
            case Load(key):
                cache = self.rts.local.cache
                cached = cache.peek(self.secrets[key])
                principal = await cache.get(self.secrets[key])
                if cached is not None:
                    assert principal is cached  # served from the cache, even if revoked elsewhere since the last poll
                else:
                    assert (principal is None) == (key in self.revoked)
            case Write():
                await self._write(op)
            case Revoke(key):
                if key not in self.revoked:
                    record = await self.rts.remote.keys.get(key_hash=self.secrets[key])
                    assert record is not None
                    await self.rts.remote.key_service.revoke(record=record, actor=TEST_ACTOR)
                    self.revoked.add(key)
            case Advance(seconds):
                self.rts.clock.advance(seconds)
            case Poll():
                await self._poll()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=ops)
async def test_polls_evict_exactly_the_stale_entries(runtimes: Runtimes, operations: list[Op]) -> None:
    scenario = Scenario(runtimes)
    await scenario.setup()
    for op in [*operations, Poll()]:
        await scenario.step(op)
