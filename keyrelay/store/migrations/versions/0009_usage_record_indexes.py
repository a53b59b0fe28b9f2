"""usage records: indexes for the request log (keyset over (created_at, id), failures, key within account)

The request log (``GET /api/v1/usage/records``, the portal's ``/logs``) reads records newest first by
``(created_at, id)`` and resumes after a cursor with one row comparison. The indexes
``(key_hash, created_at)``, ``(account_id, created_at)`` and ``(created_at)`` are replaced by the same
indexes with ``id`` appended, which PostgreSQL uses both for the cursor bound and for the order (no sort),
and which still serve every aggregate's (scope, time range) scan. Two small partial indexes hold the
failed requests only, for the log filtered to failures. On PostgreSQL, a statistics object tells the
planner that a key's records are all one account's: without it, "account_id = ? AND key_hash = ?" is
estimated at 1/200 of the key's rows, and the planner intersects two indexes and sorts instead of reading
one index in order. docs/benchmarks.md has the measurements with 10 million records.

The indexes are created with IF NOT EXISTS and the old ones dropped with IF EXISTS: a large PostgreSQL
installation may build the new ones beforehand with CREATE INDEX CONCURRENTLY under the same names (and
drop the old ones CONCURRENTLY), so that this migration holds no long lock on the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEW = {
    "ix_usage_key_created_id": ["key_hash", "created_at", "id"],
    "ix_usage_account_created_id": ["account_id", "created_at", "id"],
    "ix_usage_created_id": ["created_at", "id"],
}
_FAILED = {
    "ix_usage_errors_account_created_id": ["account_id", "created_at", "id"],
    "ix_usage_errors_created_id": ["created_at", "id"],
}
_OLD = {
    "ix_usage_key_created": ["key_hash", "created_at"],
    "ix_usage_account_created": ["account_id", "created_at"],
    "ix_usage_created": ["created_at"],
}
_STATISTICS = "st_usage_account_key"


def upgrade() -> None:
    for name, columns in _NEW.items():
        op.create_index(name, "usage_records", columns, if_not_exists=True)
    failed = sa.text("status >= 400")
    for name, columns in _FAILED.items():
        op.create_index(
            name, "usage_records", columns, if_not_exists=True, postgresql_where=failed, sqlite_where=failed
        )
    for name in _OLD:
        op.drop_index(name, table_name="usage_records", if_exists=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE STATISTICS IF NOT EXISTS {_STATISTICS} (dependencies) ON account_id, key_hash FROM usage_records"
        )
        # Gather it now (a sample: about half a second with 10 million rows) rather than at the next autoanalyze.
        op.execute("ANALYZE usage_records")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {_STATISTICS}")
    for name, columns in _OLD.items():
        op.create_index(name, "usage_records", columns, if_not_exists=True)
    for name in [*_NEW, *_FAILED]:
        op.drop_index(name, table_name="usage_records", if_exists=True)
