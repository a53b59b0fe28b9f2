"""SQLAlchemy Core tables: the single source of column truth.

Money is integer micro-dollars (``*_micros``); the group price multiplier is parts per million.
Timestamps are timezone-aware UTC (SQLite stores them naive; the repositories re-attach UTC).
Period spend of keys and groups lives in ``spend_periods``, one row per period (see there).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
    text,
    true,
)

# The largest value of an ``Integer`` column on PostgreSQL (INTEGER is 32-bit): the bound of every row
# id and count a client may send (``keyrelay.fields``).
INT32_MAX = 2**31 - 1

# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, nullable: bool = True) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _version() -> Column[object]:
    # Bumped by every write through a repository's ``update`` (never by usage bookkeeping): the cache
    # poller compares it with the version of a cached entry, so it evicts only what is really stale.
    return Column("version", Integer, nullable=False, default=1, server_default="1")


groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", String(500), nullable=True),
    Column("price_multiplier_ppm", BigInteger, nullable=False, default=1_000_000),
    Column("default_limit_micros", BigInteger, nullable=True),
    Column("default_limit_reset", String(16), nullable=True),
    Column("default_rpm", Integer, nullable=True),
    Column("default_per_5h", Integer, nullable=True),
    Column("default_per_1d", Integer, nullable=True),
    Column("default_per_7d", Integer, nullable=True),
    Column("default_tpm", Integer, nullable=True),
    Column("default_max_concurrent", Integer, nullable=True),
    Column("allowed_models", JSON, nullable=True),
    Column("allowed_providers", JSON, nullable=True),
    Column("quota_micros", BigInteger, nullable=True),
    Column("quota_reset", String(16), nullable=True),
    Column("usage_micros", BigInteger, nullable=False, default=0, server_default="0"),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _version(),
    Index("ix_groups_updated_at", "updated_at"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("status", String(16), nullable=False, default="active"),
    # Credit granted (None = unlimited); what is left is balance_micros - spent_micros. Usage never
    # rewrites the credit, so a top-up and concurrent charges cannot overwrite each other.
    Column("balance_micros", BigInteger, nullable=True),
    Column("spent_micros", BigInteger, nullable=False, default=0, server_default="0"),
    Column("group_id", Integer, ForeignKey("groups.id"), nullable=True),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _version(),
    # Portal sign-in (store/logins.py; never read by the gateway): an argon2id hash (None = no password,
    # cannot sign in), when the email was verified, and whether the account's sessions act as an admin.
    Column("password_hash", String(255), nullable=True),
    _ts("email_verified_at"),
    Column("is_admin", Boolean, nullable=False, default=False, server_default=false()),
    # Bumped when the password changes or the account is deactivated: a session made before is void.
    Column("session_epoch", Integer, nullable=False, default=0, server_default="0"),
    # Email notifications the account wants (services/notifications.py).
    Column("notify_spend", Boolean, nullable=False, default=True, server_default=true()),
    Column("notify_balance", Boolean, nullable=False, default=True, server_default=true()),
    Column("notify_expiry", Boolean, nullable=False, default=True, server_default=true()),
    Index("ix_accounts_updated_at", "updated_at"),
)
# An email is unique whatever its letter case; look-ups by email use it (store/text_match.py, migration 0010).
Index("ux_accounts_email_lower", func.lower(accounts.c.email), unique=True)

# Portal sessions, server-side: the cookie holds a random id, the table only its SHA-256. A session ends
# at ``expires_at`` (absolute lifetime) or after the idle lifetime since ``last_seen_at``, whichever first.
portal_sessions = Table(
    "portal_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    _ts("created_at", nullable=False),
    _ts("last_seen_at", nullable=False),
    _ts("expires_at", nullable=False),
    Column("ip", String(45), nullable=True),
    Column("user_agent", String(300), nullable=True),
    Column("session_epoch", Integer, nullable=False),  # the account's session_epoch when it was opened
    Index("ix_portal_sessions_account", "account_id"),
)

# Single-use tokens sent by email (verify an email, reset a password), stored as their SHA-256.
account_tokens = Table(
    "account_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("purpose", String(16), nullable=False),  # "verify" | "reset"
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    _ts("created_at", nullable=False),
    _ts("expires_at", nullable=False),
    _ts("used_at"),
    Index("ix_account_tokens_account", "account_id", "purpose"),
)

# Failed sign-ins, for throttling per email and per client IP across every instance sharing the store.
signin_failures = Table(
    "signin_failures",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),  # lower-cased as typed; the account may not exist
    Column("ip", String(45), nullable=False),
    _ts("created_at", nullable=False),
    Index("ix_signin_failures_email_created", "email", "created_at"),
    Index("ix_signin_failures_ip_created", "ip", "created_at"),
)

keys = Table(
    "keys",
    metadata,
    Column("hash", String(64), primary_key=True),
    # A key's number: what its usage records refer to (``usage_records.key_id``), an 8-byte integer where the hash
    # is 64 characters, given in creation order, never reused. PostgreSQL draws it from the column's identity
    # sequence; SQLite, which has no sequences, from the trigger ``tr_keys_id`` (migration 0013): the next after the
    # largest, in the inserting transaction (SQLite has one writer at a time). Unique (``ux_keys_id``).
    Column("id", BigInteger, Identity(), nullable=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("prev_secret_hash", String(64), nullable=True),
    _ts("prev_secret_expires_at"),
    Column("display", String(32), nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("name", String(100), nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _version(),
    _ts("expires_at"),
    _ts("deleted_at"),
    Column("limit_micros", BigInteger, nullable=True),
    Column("limit_reset", String(16), nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("per_5h", Integer, nullable=True),
    Column("per_1d", Integer, nullable=True),
    Column("per_7d", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Column("allowed_models", JSON, nullable=True),
    Column("allowed_providers", JSON, nullable=True),
    Column("ip_allowlist", JSON, nullable=True),
    Column("ip_denylist", JSON, nullable=True),
    Column("region", String(32), nullable=True),
    # A key's running figures live in ``key_usage`` (below). These three hold what was charged before migration 0014
    # and what a process of an earlier release charges during a rolling upgrade: every reader adds the two
    # (``store/keys.py``), so neither is ever moved or lost.
    Column("usage_micros", BigInteger, nullable=False, default=0),
    _ts("last_used_at"),
    Column("last_used_ip", String(45), nullable=True),
    Index("ix_keys_account_created", "account_id", "created_at"),
    Index("ix_keys_prev_secret_hash", "prev_secret_hash"),
    Index("ix_keys_updated_at", "updated_at"),
    Index("ux_keys_id", "id", unique=True),
)

# A key's running figures, by key number (``keys.id``): lifetime spend and last use, charged by every usage flush
# (``usage/writer.py``). Apart from the key row so that a flush writes a row of four narrow columns, many to a page,
# rather than the key's wide row: in SQLite 18.0 µs a key against 1.5, on PostgreSQL 19.6 against 9.1, measured with
# keys in rotation (docs/benchmarks.md, "2026-12-07, evening"). No row until a key's first flush. Readers add
# ``keys.usage_micros`` (see there). On SQLite ``key_id`` is INTEGER PRIMARY KEY: the table's rowid itself. No
# foreign key (a check per charge): key rows are never deleted (a deleted key is marked), so no row is orphaned.
key_usage = Table(
    "key_usage",
    metadata,
    Column("key_id", BigIntId, primary_key=True, autoincrement=False),
    Column("usage_micros", BigInteger, nullable=False),
    _ts("last_used_at"),
    Column("last_used_ip", String(45), nullable=True),
)

# The spend ledger: what each key and group spent in each calendar period (daily, weekly, monthly), in the
# period its requests were admitted in. Rows are only ever added to, so a late usage record can never
# rewrite a newer period. Lifetime usage stays on the groups rows and in ``key_usage`` (``usage_micros``).
spend_periods = Table(
    "spend_periods",
    metadata,
    Column("scope", String(8), primary_key=True),  # "key" | "group"
    Column("ident", String(64), primary_key=True),  # key hash | group id
    Column("reset", String(16), primary_key=True),  # "daily" | "weekly" | "monthly"
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("usage_micros", BigInteger, nullable=False),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    _ts("created_at", nullable=False),
    Column("key_hash", String(64), nullable=False),
    # The key's number (``keys.id``): the one the record carries from the key cache, else looked up from ``key_hash``
    # by the insert itself (``usage/writer.py``): the index by key holds 8 bytes a record rather than 64 characters
    # (migration 0013). NULL only for a record of a key the store does not hold.
    Column("key_id", BigInteger, nullable=True),
    Column("key_name", String(100), nullable=False),
    Column("account_id", Integer, nullable=False),
    Column("model", String(200), nullable=True),
    Column("provider", String(64), nullable=True),
    Column("streamed", Boolean, nullable=False, default=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cache_read_tokens", Integer, nullable=False, default=0, server_default="0"),  # part of prompt_tokens
    Column("cache_write_tokens", Integer, nullable=False, default=0, server_default="0"),  # part of prompt_tokens
    Column("reasoning_tokens", Integer, nullable=False, default=0, server_default="0"),  # part of completion_tokens
    Column("protocol", String(16), nullable=False, default="openai", server_default="openai"),  # the client's wire
    Column("upstream_kind", String(32), nullable=True),  # the provider kind that served it
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("usage_estimated", Boolean, nullable=False, default=False),
    Column("status", Integer, nullable=False),
    Column("error_type", String(40), nullable=True),
    Column("latency_ms", Integer, nullable=True),
    Column("ttft_ms", Integer, nullable=True),
    Column("client_ip", String(45), nullable=True),
    Column("attempts", Text, nullable=True),  # JSON list of the upstream attempts, when one failed (0011)
    # ``id`` closes each index so the request log's keyset (newest first by (created_at, id)) is one index
    # range from the cursor on; the aggregates use the same indexes as (scope, created_at) ranges. The two
    # partial indexes hold failed requests only (a few percent of the rows): the log filtered to failures
    # reads them instead of every record until it finds a page. On PostgreSQL, migration 0013 also creates
    # the statistics object ``st_usage_account_key_id`` (a key's records are all one account's), without which
    # the planner misjudges "account_id = ? AND key_id = ?" (docs/benchmarks.md, 2026-12-05).
    Index("ux_usage_request_id", "request_id", unique=True),  # a replayed record is recognised (0012)
    Index("ix_usage_key_id_created_id", "key_id", "created_at", "id"),
    Index("ix_usage_account_created_id", "account_id", "created_at", "id"),
    Index("ix_usage_created_id", "created_at", "id"),
    Index(
        "ix_usage_errors_account_created_id",
        "account_id",
        "created_at",
        "id",
        postgresql_where=text("status >= 400"),
        sqlite_where=text("status >= 400"),
    ),
    Index(
        "ix_usage_errors_created_id",
        "created_at",
        "id",
        postgresql_where=text("status >= 400"),
        sqlite_where=text("status >= 400"),
    ),
)

# The audit log: one row per change to a key, account or group, only ever appended (in the change's own
# transaction: services/audit.py). ``id`` orders the log and is its page cursor. No foreign keys: an entry
# outlives what it names (a deleted group). ``changes`` never holds a secret or a hash of one.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    _ts("created_at", nullable=False),
    Column("actor_type", String(16), nullable=False),  # "management_key" | "account" | "cli" | "system"
    Column("actor", String(400), nullable=False),  # "ops (kr_mgmt_...wxyz)", an account's email, "cli"
    Column("actor_account_id", Integer, nullable=True),
    Column("ip", String(45), nullable=True),
    Column("action", String(48), nullable=False),  # "key.create", "account.update", "group.delete", ...
    Column("target_type", String(16), nullable=False),  # "key" | "account" | "group"
    Column("target_id", String(64), nullable=False),  # key hash | account id | group id
    Column("target_account_id", Integer, nullable=True),  # the account the target belongs to (none for groups)
    Column("changes", JSON, nullable=False),
    Index("ix_audit_log_created_id", "created_at", "id"),
    Index("ix_audit_log_target", "target_type", "target_id", "id"),
    Index("ix_audit_log_actor", "actor", "id"),
    Index("ix_audit_log_target_account", "target_account_id", "id"),
)

# Notifications sent (services/notifications.py): one row per kind, subject and period, so each is sent once
# even with several instances checking (the insert is the claim).
notifications_sent = Table(
    "notifications_sent",
    metadata,
    Column("kind", String(16), primary_key=True),  # "spend80" | "spend100" | "balance" | "expiry"
    Column("subject", String(64), primary_key=True),  # key hash | account id
    Column("period", String(40), primary_key=True),  # period start | "lifetime" | credit granted | expiry time
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    _ts("sent_at", nullable=False),
)
