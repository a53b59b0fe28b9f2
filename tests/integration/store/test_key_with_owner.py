"""The key cache's load (``KeyRepository.find_with_owner``) reads what the three separate reads read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord
from keyrelay.store.spend import PeriodCharge, add_charges
from tests.conftest import TEST_ACTOR

MONTH = datetime(2026, 11, 1, tzinfo=UTC)
DAY = datetime(2026, 11, 23, tzinfo=UTC)


async def separately(
    runtime: Runtime, secret_hash: str, now: datetime
) -> tuple[KeyRecord, AccountRecord, GroupRecord | None] | None:
    key = await runtime.keys.find_by_secret(secret_hash=secret_hash, now=now)
    if key is None:
        return None
    account = await runtime.accounts.get(account_id=key.account_id)
    assert account is not None
    group = None if account.group_id is None else await runtime.groups.get(group_id=account.group_id)
    return key, account, group


async def test_one_joined_read_finds_what_three_reads_find(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        group = await runtime.account_service.create_group(
            GroupCreate(name="g", quota=10, quota_reset="monthly"), actor=TEST_ACTOR
        )
        member = await runtime.account_service.create_account(
            AccountCreate(email="m@example.com", group="g"), actor=TEST_ACTOR
        )
        loner = await runtime.account_service.create_account(AccountCreate(email="l@example.com"), actor=TEST_ACTOR)
        spec = KeyCreate.model_validate({"name": "k", "limit": 5, "limit_reset": "daily"})
        grouped = await runtime.key_service.create(account=member, spec=spec, actor=TEST_ACTOR)
        alone = await runtime.key_service.create(account=loner, spec=spec, actor=TEST_ACTOR)
        async with runtime.engine.begin() as conn:
            await add_charges(
                conn,
                [
                    PeriodCharge("group", str(group.id), "monthly", MONTH, 70),
                    PeriodCharge("key", grouped.record.hash, "daily", DAY - timedelta(days=1), 20),
                    PeriodCharge("key", grouped.record.hash, "daily", DAY, 30),
                    PeriodCharge("key", alone.record.hash, "daily", DAY, 40),
                ],
            )
        rotated = await runtime.key_service.rotate(record=grouped.record, grace_seconds=60, actor=TEST_ACTOR)
        now = datetime.now(UTC)
        cases = {
            "current secret, grouped": rotated.record.secret_hash,
            "previous secret in its grace": grouped.record.secret_hash,
            "no group": alone.record.secret_hash,
            "unknown": "0" * 64,
        }
        for case, secret in cases.items():
            found = await runtime.keys.find_with_owner(secret_hash=secret, now=now)
            assert found == await separately(runtime, secret, now), case
        found = await runtime.keys.find_with_owner(secret_hash=rotated.record.secret_hash, now=now)
        assert found is not None
        key, _, owner_group = found
        assert dict(key.period_usage) == {"daily:2026-11-23": 30}  # the latest period of the kind only
        assert owner_group is not None and dict(owner_group.period_usage) == {"monthly:2026-11-01": 70}
        # Past the grace, or deleted: not found, as by the separate reads.
        later = now + timedelta(seconds=61)
        assert await runtime.keys.find_with_owner(secret_hash=grouped.record.secret_hash, now=later) is None
        await runtime.key_service.revoke(record=alone.record, actor=TEST_ACTOR)
        assert await runtime.keys.find_with_owner(secret_hash=alone.record.secret_hash, now=now) is None
    finally:
        await runtime.close()
