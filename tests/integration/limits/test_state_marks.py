"""Account and group changes made through one gateway hold on another's very next request (Redis state marks).

Two gateways share a database and Redis; A's cross-process fan-out is switched off and the store poll is an
hour, so only the marks A's services record can make B see a change at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from unittest.mock import patch

import httpx
import pytest

from keyrelay.cache.keycache import Principal
from keyrelay.config import Settings
from keyrelay.keys.format import KeyType, generate
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyCreate, KeyUpdate
from keyrelay.services.inputs import AccountCreate, AccountUpdate, GroupCreate, GroupUpdate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import TEST_ACTOR, make_api_key
from tests.integration.gateway.conftest import provider_for
from tests.unit.limits.conftest import REDIS_URL

pytestmark = pytest.mark.redis

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
EMAIL = "marks@example.com"


@pytest.fixture
async def pair(tmp_path: Path, mock: MockUpstream, redis_prefix: str) -> AsyncIterator[tuple[RunningServer, ...]]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        cache_poll_interval_s=3600,
        log_level="warning",
        providers=(provider_for(mock),),
    )
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_server(settings))
        b = await stack.enter_async_context(running_server(settings))
        a.runtime.cache.on_invalidate = None  # no pub/sub from A: B can only learn of A's changes by the marks
        yield a, b


async def _status(client: httpx.AsyncClient, server: RunningServer, key: str, path: str = "chat") -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if path == "chat":
        return (await client.post(f"{server.base_url}/v1/chat/completions", json=CHAT, headers=headers)).status_code
    return (await client.get(f"{server.base_url}/v1/{path}", headers=headers)).status_code


async def test_account_and_group_changes_hold_on_the_next_request(pair: tuple[RunningServer, ...]) -> None:
    a, b = pair
    key = await make_api_key(a, EMAIL)
    services = a.runtime.account_service
    async with httpx.AsyncClient(timeout=10) as client:
        assert await _status(client, b, key) == 200  # cached on B

        account = await a.runtime.accounts.get_by_email(email=EMAIL)
        assert account is not None
        account = await services.update_account(account, AccountUpdate(status="inactive"), actor=TEST_ACTOR)
        assert await _status(client, b, key) == 403
        assert await _status(client, b, key, "models") == 403
        account = await services.update_account(account, AccountUpdate(status="active"), actor=TEST_ACTOR)
        assert await _status(client, b, key, "key") == 200

        group = await services.create_group(GroupCreate(name="team"), actor=TEST_ACTOR)
        account = await services.update_account(account, AccountUpdate(group="team"), actor=TEST_ACTOR)
        assert await _status(client, b, key) == 200  # B reloaded the key with its group
        await services.update_group(group, GroupUpdate(allowed_models=["gpt-4o"]), actor=TEST_ACTOR)
        assert await _status(client, b, key) == 403  # gpt-4o-mini is no longer allowed
        assert await _status(client, b, key, "models/gpt-4o-mini") == 404


async def test_what_is_allowed_again_is_served_on_the_next_request(pair: tuple[RunningServer, ...]) -> None:
    a, b = pair
    key = await make_api_key(a, EMAIL, allowed_models=["gpt-4o"])
    keys = a.runtime.key_service
    async with httpx.AsyncClient(timeout=10) as client:
        assert await _status(client, b, key) == 403  # gpt-4o-mini not allowed (B has the key cached now)
        record = await a.runtime.keys.get(key_hash=key_hash(key))
        assert record is not None
        record, _ = await keys.update(record=record, spec=KeyUpdate(allowed_models=None), actor=TEST_ACTOR)
        assert await _status(client, b, key) == 200
        record, _ = await keys.update(record=record, spec=KeyUpdate(disabled=True), actor=TEST_ACTOR)
        assert await _status(client, b, key) == 401  # API_KEY_DISABLED
        await keys.update(record=record, spec=KeyUpdate(disabled=False), actor=TEST_ACTOR)
        assert await _status(client, b, key) == 200


async def test_a_key_created_elsewhere_is_usable_where_it_was_unknown(pair: tuple[RunningServer, ...]) -> None:
    a, b = pair
    account = await a.runtime.account_service.create_account(AccountCreate(email=EMAIL), actor=TEST_ACTOR)
    plaintext = generate(KeyType.REGULAR)
    async with httpx.AsyncClient(timeout=10) as client:
        assert await _status(client, b, plaintext) == 401  # B remembers the hash as unknown
        # The key is created with this very secret (as if A had generated it) through A's services.
        with patch("keyrelay.services.keys.generate", return_value=plaintext):
            await a.runtime.key_service.create(account=account, spec=KeyCreate(name="new"), actor=TEST_ACTOR)
        assert await _status(client, b, plaintext) == 200
        assert await _status(client, b, generate(KeyType.REGULAR)) == 401  # unknown keys are still refused


async def test_a_revoked_key_hammering_another_gateway_costs_no_store_read_per_request(
    pair: tuple[RunningServer, ...],
) -> None:
    a, b = pair
    key = await make_api_key(a, EMAIL)
    loads: list[str] = []
    loader = b.runtime.cache._loader

    async def counting(secret_hash: str) -> Principal | None:
        loads.append(secret_hash)
        return await loader(secret_hash)

    b.runtime.cache._loader = counting
    async with httpx.AsyncClient(timeout=10) as client:
        assert await _status(client, b, key) == 200
        record = await a.runtime.keys.get(key_hash=key_hash(key))
        assert record is not None
        await a.runtime.key_service.revoke(record=record, actor=TEST_ACTOR)
        assert [await _status(client, b, key) for _ in range(6)] == [401] * 6
    # One load to cache it, one after the revocation's mark, one more to learn the mark's version: then memory.
    assert len(loads) <= 3
