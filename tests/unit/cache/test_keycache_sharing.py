"""Cached keys hold as little as they can: equal account records and policies are shared, counted, released."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from keyrelay.cache.keycache import KeyCache, Principal, principal_marks
from keyrelay.keys.policy import effective_policy
from keyrelay.store.records import AccountRecord, KeyRecord

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def key_record(name: str, *, rpm: int | None = 60, expires_at: datetime | None = None) -> KeyRecord:
    return KeyRecord(
        hash=name * 64,
        secret_hash=name * 64,
        prev_secret_hash=None,
        prev_secret_expires_at=None,
        display="kr_live_...abcd",
        key_type="regular",
        is_admin=False,
        name=name,
        account_id=1,
        disabled=False,
        created_at=NOW,
        updated_at=NOW,
        expires_at=expires_at,
        deleted_at=None,
        limit_micros=None,
        limit_reset=None,
        rpm=rpm,
        per_5h=None,
        per_1d=None,
        per_7d=None,
        tpm=None,
        max_concurrent=None,
        allowed_models=None,
        allowed_providers=None,
        ip_allowlist=None,
        ip_denylist=None,
        region=None,
        usage_micros=0,
        period_usage={},
        last_used_at=None,
        last_used_ip=None,
    )


def load(key: KeyRecord) -> Principal:
    """What the store loader builds: a fresh account record for every key, as each load reads its row."""
    account = AccountRecord(1, "a@example.com", "active", None, 0, None, NOW, NOW)
    return Principal(key, account, None, effective_policy(key, None), False, principal_marks(key, account, None))


def cache_of(*keys: KeyRecord, max_entries: int = 100) -> KeyCache:
    by_secret = {k.secret_hash: k for k in keys}

    async def loader(secret_hash: str) -> Principal | None:
        key = by_secret.get(secret_hash)
        return None if key is None else load(key)

    return KeyCache(loader, max_entries=max_entries)


async def test_keys_of_one_account_with_equal_rules_share_their_account_and_policy() -> None:
    a, b = key_record("a", expires_at=NOW), key_record("b")  # the expiry is the key's: not in the policy
    c = key_record("c", rpm=120)
    cache = cache_of(a, b, c)
    pa, pb, pc = [await cache.get(k.secret_hash) for k in (a, b, c)]
    assert pa is not None and pb is not None and pc is not None
    assert pa.account is pb.account is pc.account
    assert pa.policy is pb.policy and pa.policy.windows == pb.policy.windows
    assert pc.policy is not pa.policy and pc.policy.rpm == 120
    assert (len(cache._accounts), len(cache._policies)) == (1, 2)


async def test_what_is_shared_goes_with_the_last_entry_that_held_it() -> None:
    keys = [key_record(name) for name in "abcd"]
    cache = cache_of(*keys, max_entries=2)
    for key in keys:
        await cache.get(key.secret_hash)
    assert len(cache) == 2 and cache._accounts._held[load(keys[0]).account][1] == 2  # two holders, not four
    cache.invalidate_key(keys[2].hash)
    cache.invalidate_account(1)
    assert len(cache) == 0
    assert (len(cache._accounts), len(cache._policies), len(cache._by_key), len(cache._by_account)) == (0, 0, 0, 0)


async def test_two_loads_of_one_key_at_once_leave_one_entry_and_one_holder() -> None:
    key = key_record("a")
    gate = asyncio.Event()

    async def loader(secret_hash: str) -> Principal | None:
        await gate.wait()
        return load(key)

    cache = KeyCache(loader)
    both = asyncio.gather(cache.get(key.secret_hash), cache.get(key.secret_hash))
    await asyncio.sleep(0)
    gate.set()
    await both
    assert len(cache) == 1
    cache.invalidate_key(key.hash)
    assert (len(cache._accounts), len(cache._policies)) == (0, 0)  # the first load's holds were released


async def test_the_entry_is_keyed_by_the_records_own_hash_string() -> None:
    key = key_record("a")
    cache = cache_of(key)
    asked = "".join(["a"] * 64)  # equal to the key's secret hash, another object
    assert asked == key.secret_hash and asked is not key.secret_hash
    await cache.get(asked)
    assert next(iter(cache._entries)) is key.secret_hash


async def test_state_marks_are_kept_only_when_a_shared_backend_compares_them() -> None:
    a, b = key_record("a"), key_record("b")
    cache = cache_of(a, b)
    alone = await cache.get(a.secret_hash)
    assert alone is not None and alone.marks == ()

    async def check(marks: tuple[tuple[str, int], ...]) -> None:
        return None

    cache.checker = check
    shared = await cache.get(b.secret_hash)
    assert shared is not None and shared.marks == principal_marks(b, shared.account, None)
