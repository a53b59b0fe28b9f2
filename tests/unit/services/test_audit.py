"""What an audit entry records of a change: public fields only, old and new values, the right target."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from keyrelay.services.audit import SECRET_FIELDS, Actor, changes_between, entry_values
from keyrelay.store.logins import Login
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY = KeyRecord(
    hash="a" * 64,
    secret_hash="a" * 64,
    prev_secret_hash=None,
    prev_secret_expires_at=None,
    display="kr_live_...abcd",
    key_type="regular",
    is_admin=False,
    name="ci",
    account_id=7,
    disabled=False,
    created_at=NOW,
    updated_at=NOW,
    expires_at=None,
    deleted_at=None,
    limit_micros=None,
    limit_reset=None,
    rpm=None,
    per_5h=None,
    per_1d=None,
    per_7d=None,
    tpm=None,
    max_concurrent=None,
    allowed_models=("gpt-4o",),
    allowed_providers=None,
    ip_allowlist=None,
    ip_denylist=None,
    region=None,
    usage_micros=0,
    period_usage={},
    last_used_at=None,
    last_used_ip=None,
)


def test_a_create_records_the_public_fields_and_no_secret_or_bookkeeping() -> None:
    changes = changes_between(None, KEY)
    assert changes["name"] == "ci" and changes["allowed_models"] == ["gpt-4o"] and changes["account_id"] == 7
    hidden = SECRET_FIELDS | {"hash", "created_at", "updated_at", "version", "usage_micros", "period_usage"}
    assert not hidden & set(changes)


def test_an_update_records_only_what_changed_as_old_and_new() -> None:
    later = NOW + timedelta(minutes=1)
    rotated = replace(
        KEY,
        secret_hash="b" * 64,
        prev_secret_hash="a" * 64,
        prev_secret_expires_at=later,
        display="kr_live_...wxyz",
        updated_at=later,
        version=2,
        usage_micros=5,
    )
    assert changes_between(KEY, rotated) == {
        "display": ["kr_live_...abcd", "kr_live_...wxyz"],
        "prev_secret_expires_at": [None, later.isoformat()],
    }
    assert changes_between(KEY, replace(KEY, updated_at=later)) == {}


def test_a_password_change_shows_no_hash() -> None:
    before = Login(
        id=3,
        email="a@example.com",
        status="active",
        password_hash=None,
        email_verified_at=None,
        is_admin=False,
        session_epoch=0,
    )
    after = replace(before, password_hash="$argon2id$v=19$...", email_verified_at=NOW, session_epoch=1)
    assert changes_between(before, after) == {"email_verified_at": [None, NOW.isoformat()]}


def test_entries_name_their_target_and_actor() -> None:
    actor = Actor.management_key(replace(KEY, name="ops", key_type="management", account_id=1), ip="192.0.2.1")
    assert (actor.type, actor.label, actor.account_id, actor.ip) == (
        "management_key",
        "ops (kr_live_...abcd)",
        1,
        "192.0.2.1",
    )
    key = entry_values(actor=actor, action="key.revoke", before=KEY, after=replace(KEY, deleted_at=NOW), at=NOW)
    assert (key["target_type"], key["target_id"], key["target_account_id"]) == ("key", "a" * 64, 7)
    assert key["changes"] == {"deleted_at": [None, NOW.isoformat()]} and key["ip"] == "192.0.2.1"
    account = AccountRecord(
        id=9,
        email="b@example.com",
        status="active",
        balance_micros=None,
        spent_micros=0,
        group_id=None,
        created_at=NOW,
        updated_at=NOW,
    )
    made = entry_values(actor=Actor.cli(), action="account.create", before=None, after=account, at=NOW)
    assert (made["target_type"], made["target_id"], made["target_account_id"]) == ("account", "9", 9)
    assert (made["actor_type"], made["actor"], made["actor_account_id"], made["ip"]) == ("cli", "cli", None, None)
    group = GroupRecord(
        id=4,
        name="team",
        description=None,
        price_multiplier_ppm=1_000_000,
        default_limit_micros=None,
        default_limit_reset=None,
        default_rpm=None,
        default_per_5h=None,
        default_per_1d=None,
        default_per_7d=None,
        default_tpm=None,
        default_max_concurrent=None,
        allowed_models=None,
        allowed_providers=None,
        quota_micros=None,
        quota_reset=None,
        usage_micros=0,
        period_usage={},
        created_at=NOW,
        updated_at=NOW,
    )
    gone = entry_values(actor=Actor.system("demo"), action="group.delete", before=group, after=None, at=NOW)
    assert (gone["target_type"], gone["target_id"], gone["target_account_id"]) == ("group", "4", None)
    assert gone["changes"]["name"] == "team"
