"""a key's running figures (lifetime spend, last use) in a narrow table by key number, ``key_usage``

Every usage flush charged each key it saw by updating the key's row: with keys in rotation (many keys, each used
rarely) one key row per record, and the key row is wide (its policy, limits, lists: seven rows a page in SQLite), so
each such update wrote a page of its own. Measured with the bench's database (docs/benchmarks.md, "2026-12-07,
evening"): 18.0 µs a key in SQLite against 1.5 in a table of the three figures by key number, 19.6 against 9.1 on
PostgreSQL. The flush now upserts ``key_usage (key_id, usage_micros, last_used_at, last_used_ip)`` instead, looking
the key's number up from its hash in the statement (``usage/writer.py``).

Nothing is moved: ``keys.usage_micros``, ``keys.last_used_at`` and ``keys.last_used_ip`` keep what was charged before,
and every reader adds ``key_usage``'s figures to them (the later last use wins: ``store/keys.py``). So a process of
the earlier release, still charging the key rows during a rolling upgrade, loses nothing either, and the upgrade
writes no row.

Downgrade: each key's ``key_usage`` figures folded back into its row, then the table dropped. Stop this release's
processes first; on PostgreSQL the table is locked before the fold, so a flush still running fails (its records
stay queued) rather than commit a charge between the fold and the drop.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# key_usage's last use replaces the row's when it is the later one (the same rule as the readers'). UPDATE ... FROM
# needs SQLite 3.33, as 0013's upgrade did.
_LATER = "ku.last_used_at IS NOT NULL AND (keys.last_used_at IS NULL OR ku.last_used_at > keys.last_used_at)"
_FOLD = (
    "UPDATE keys SET usage_micros = keys.usage_micros + ku.usage_micros, "
    f"last_used_at = CASE WHEN {_LATER} THEN ku.last_used_at ELSE keys.last_used_at END, "
    f"last_used_ip = CASE WHEN {_LATER} THEN ku.last_used_ip ELSE keys.last_used_ip END "
    "FROM key_usage AS ku WHERE ku.key_id = keys.id"
)


def upgrade() -> None:
    op.create_table(
        "key_usage",
        sa.Column("key_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
        sa.Column("usage_micros", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_ip", sa.String(length=45), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_key_usage"),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE key_usage IN ACCESS EXCLUSIVE MODE")  # SQLite: the migration holds the write lock
    op.execute(_FOLD)
    op.drop_table("key_usage")
