"""The key cache and its store poller: never evict what is current, always catch what changed elsewhere.

Time is a FakeClock and the background poll is off (its interval is an hour): every poll below is an explicit,
awaited ``cache_sync.poll_once()``, so each test runs the same interleaving on every run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from keyrelay.config import Settings
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyUpdate
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.inputs import AccountUpdate, GroupCreate, GroupUpdate
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import PG_ADMIN_DSN, TEST_ACTOR, make_api_key
from tests.integration.gateway.helpers import assert_error, break_store, chat, make_account


@contextlib.asynccontextmanager
async def store_outage(database_url: str, runtime: Runtime) -> AsyncIterator[None]:
    """Make the store unreachable for every new connection, then bring it back as it was.

    PostgreSQL refuses connections to the database and its sessions are ended; an SQLite file is moved aside and a
    directory takes its place. The runtime's pool is emptied first, so its next query opens a new connection.
    """
    await runtime.engine.dispose()
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'ALTER DATABASE "{url.database}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", url.database
            )
            yield
            await admin.execute(f'ALTER DATABASE "{url.database}" WITH ALLOW_CONNECTIONS true')
        finally:
            await admin.close()
        return
    path = url.database
    assert path
    moved = [suffix for suffix in ("", "-wal", "-shm") if os.path.exists(path + suffix)]
    for suffix in moved:
        os.rename(path + suffix, path + suffix + ".away")
    os.mkdir(path)  # SQLite cannot open a directory: every new connection fails
    yield
    os.rmdir(path)
    for suffix in moved:
        os.rename(path + suffix + ".away", path + suffix)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No background poll, and no usage flush holding a connection open while the store is made unreachable.
    return settings.model_copy(update={"cache_poll_interval_s": 3600, "usage_flush_interval_s": 3600})


@pytest.fixture
async def server(settings: Settings, clock: FakeClock) -> AsyncIterator[RunningServer]:
    async with running_server(settings, clock=clock) as srv:
        yield srv


@pytest.fixture
async def other(server: RunningServer, settings: Settings, clock: FakeClock) -> AsyncIterator[Runtime]:
    """Another process on the same store (the CLI, another gateway): its writes never touch the server's cache."""
    runtime = await open_runtime(settings, clock=clock, migrate=False)
    try:
        yield runtime
    finally:
        await runtime.close()


async def test_own_writes_stay_cached_through_a_poll_and_a_store_outage(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, database_url: str
) -> None:
    """The race of issue 7 item 6, made to happen on every run.

    Keys, accounts and groups written by this process (just now, within the poller's look-back window) are cached
    by a request; the poll that follows sees those rows as recently changed. It must not evict them: they are
    current, and if the store then goes down, an evicted key could not be loaded again (503 for a working key).
    """
    rt = server.runtime
    group = await rt.account_service.create_group(GroupCreate(name="team"), actor=TEST_ACTOR)
    await rt.account_service.update_group(group, GroupUpdate(description="renamed"), actor=TEST_ACTOR)
    account = await make_account(server, "a@example.com", group="team")
    await rt.account_service.update_account(account, AccountUpdate(balance=5), actor=TEST_ACTOR)
    key = await make_api_key(server, "a@example.com")
    record = await rt.keys.get(key_hash=key_hash(key))
    assert record is not None
    await rt.key_service.update(record=record, spec=KeyUpdate(name="renamed"), actor=TEST_ACTOR)
    assert (await chat(client, key)).status_code == 200  # now in the cache
    assert len(rt.cache) == 1

    assert await rt.cache_sync.poll_once() == 0, "the poll evicted a current entry"
    assert len(rt.cache) == 1

    not_cached = await make_api_key(server, "a@example.com")
    await break_store(database_url, PG_ADMIN_DSN, rt.engine)
    assert await rt.cache_sync.poll_once() == 0  # the store is unreachable: nothing is known to be stale
    r = await chat(client, key)
    assert r.status_code == 200, r.text
    assert_error(await chat(client, not_cached), 503, "SERVICE_UNAVAILABLE")
    assert len(mock.requests) == 2


async def test_changes_by_another_process_are_applied_by_the_next_poll(
    server: RunningServer, client: httpx.AsyncClient, other: Runtime, database_url: str
) -> None:
    """Every write of another process reaches this one's cache on the next poll, even two writes in the same instant.

    The clock never moves here, so consecutive writes carry the same ``updated_at``: only a version tells them apart.
    """
    rt = server.runtime
    group = await rt.account_service.create_group(GroupCreate(name="team"), actor=TEST_ACTOR)
    await make_account(server, "a@example.com", group="team")
    key = await make_api_key(server, "a@example.com")
    bystander = await make_api_key(server, "b@example.com")
    for k in (key, bystander):
        assert (await chat(client, k)).status_code == 200
    record = await other.keys.get(key_hash=key_hash(key))
    assert record is not None

    await other.key_service.update(record=record, spec=KeyUpdate(disabled=True), actor=TEST_ACTOR)
    assert (await chat(client, key)).status_code == 200  # not polled yet: the cache still has the old row
    assert await rt.cache_sync.poll_once() == 1
    assert_error(await chat(client, key), 401, "API_KEY_DISABLED")

    await other.key_service.update(
        record=record, spec=KeyUpdate(disabled=False, rate_limits={"rpm": 100}), actor=TEST_ACTOR
    )
    assert await rt.cache_sync.poll_once() == 1
    r = await chat(client, key)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "100"
    assert await rt.cache_sync.poll_once() == 0  # the same rows again: the cache already holds their versions

    account = await other.accounts.get(account_id=record.account_id)
    assert account is not None
    account = await other.account_service.update_account(account, AccountUpdate(status="inactive"), actor=TEST_ACTOR)
    assert await rt.cache_sync.poll_once() == 1
    assert_error(await chat(client, key), 403, "USER_INACTIVE")
    await other.account_service.update_account(account, AccountUpdate(status="active"), actor=TEST_ACTOR)
    assert await rt.cache_sync.poll_once() == 1  # the 403 came from an entry loaded with the inactive account
    assert (await chat(client, key)).status_code == 200

    fresh_group = await other.groups.get(group_id=group.id)
    assert fresh_group is not None
    await other.account_service.update_group(fresh_group, GroupUpdate(allowed_models=["gpt-4o"]), actor=TEST_ACTOR)
    assert await rt.cache_sync.poll_once() == 1
    assert_error(await chat(client, key), 403, "ACCESS_DENIED")

    await other.key_service.revoke(record=record, actor=TEST_ACTOR)
    assert await rt.cache_sync.poll_once() == 1
    assert_error(await chat(client, key), 401, "INVALID_API_KEY")

    # None of those polls evicted the other account's key: it is still served from the cache alone.
    await break_store(database_url, PG_ADMIN_DSN, rt.engine)
    assert (await chat(client, bystander)).status_code == 200
    assert_error(await chat(client, "kr_live_" + secrets.token_urlsafe(32)), 503, "SERVICE_UNAVAILABLE")


async def test_a_change_made_before_an_outage_is_applied_when_the_store_is_back(
    server: RunningServer,
    client: httpx.AsyncClient,
    settings: Settings,
    clock: FakeClock,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keyrelay.cache")
    rt = server.runtime
    key = await make_api_key(server, "a@example.com")
    assert (await chat(client, key)).status_code == 200
    other = await open_runtime(settings, clock=clock, migrate=False)
    try:
        record = await other.keys.get(key_hash=key_hash(key))
        assert record is not None
        await other.key_service.update(record=record, spec=KeyUpdate(disabled=True), actor=TEST_ACTOR)
    finally:
        await other.close()

    async with store_outage(database_url, rt):
        clock.advance(3600)  # the outage outlasts the poller's look-back window many times over
        assert await rt.cache_sync.poll_once() == 0
        assert await rt.cache_sync.poll_once() == 0
        # Served from the cache: the change cannot be known while the store is down.
        assert (await chat(client, key)).status_code == 200
    # The first poll after the outage still looks back to before it.
    assert await rt.cache_sync.poll_once() == 1
    assert_error(await chat(client, key), 401, "API_KEY_DISABLED")
    messages = [r.getMessage() for r in caplog.records if r.name == "keyrelay.cache"]
    assert [m.split(" (")[0].split(";")[0] for m in messages] == ["key store unreachable", "key store reachable again"]
