"""The key cache holds at most KEYRELAY_KEY_CACHE_SIZE keys: the least recently used is evicted, then reloaded."""

from __future__ import annotations

from keyrelay.cache.keycache import Principal
from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from tests.conftest import TEST_ACTOR
from tests.integration.store.conftest import keys_of_one_account


async def test_the_least_recently_used_key_is_evicted_and_loaded_again(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url, key_cache_size=3))
    try:
        account, hashes = await keys_of_one_account(runtime, "c@example.com", 5)
        cache = runtime.cache
        loads: list[str] = []
        loader = cache._loader

        async def counting(secret_hash: str) -> Principal | None:
            loads.append(secret_hash)
            return await loader(secret_hash)

        cache._loader = counting
        for h in hashes[:3]:
            assert await cache.get(h) is not None
        assert await cache.get(hashes[0]) is not None  # a hit: k0 is now the most recently used
        assert await cache.get(hashes[3]) is not None  # one too many: k1, the least recently used, goes
        assert len(cache) == 3
        assert [cache.peek(h) is not None for h in hashes[:4]] == [True, False, True, True]
        assert loads == hashes[:4]
        assert await cache.get(hashes[1]) is not None  # loaded again from the store
        assert loads == [*hashes[:4], hashes[1]]
        assert len(cache) == 3 and cache.peek(hashes[2]) is None
        # Invalidating a key no longer cached changes nothing, and its indexes were cleaned with it.
        cache.invalidate_key(hashes[2], broadcast=False)
        assert len(cache) == 3
        assert cache._by_key.count() == 3
        assert cache._by_account.count() == 3
    finally:
        await runtime.close()


async def test_cached_keys_share_their_account_and_policy_and_hold_one_string_per_hash(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url, key_cache_size=3))
    try:
        account = await runtime.account_service.create_account(AccountCreate(email="s@example.com"), actor=TEST_ACTOR)
        spec = KeyCreate.model_validate({"name": "k", "rate_limits": {"rpm": 60}, "expires_in_days": 30})
        records = [
            (await runtime.key_service.create(account=account, spec=spec, actor=TEST_ACTOR)).record for _ in range(5)
        ]
        cache = runtime.cache
        principals = [await cache.get(r.hash) for r in records]
        assert all(p is not None for p in principals)
        first, last = principals[0], principals[-1]
        assert first is not None and last is not None
        assert first.account is last.account and first.policy is last.policy  # loaded apart, held once
        assert last.key.secret_hash is last.key.hash  # a key never rotated: one string for both
        assert last.key.updated_at is last.key.created_at
        # Two keys evicted: what only they held went with them; what the cached ones share stays, once.
        assert (len(cache), len(cache._accounts), len(cache._policies)) == (3, 1, 1)
        cache.clear()
        assert (len(cache._accounts), len(cache._policies)) == (0, 0)
    finally:
        await runtime.close()
