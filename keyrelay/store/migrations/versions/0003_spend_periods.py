"""spend ledger: one row per key or group and calendar period, replacing the period_start/period_usage pair

A key's or group's period spend was one (period_start, period_usage_micros) pair that a usage record of
another period restarted: a record admitted at 23:59:59 but written after the new day's first records
overwrote the new day's spend. Each period now has its own row, only ever added to.

The current pairs become rows (the reset kind of a key is its effective one: its own when it has its own
limit, else its group's default). Downgrading keeps each key's and group's latest row as the pair.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY_PAIRS = """
INSERT INTO spend_periods (scope, ident, reset, period_start, usage_micros)
SELECT 'key', pairs.hash, pairs.kind, pairs.period_start, pairs.period_usage_micros
FROM (
    SELECT k.hash AS hash, k.period_start AS period_start, k.period_usage_micros AS period_usage_micros,
           CASE WHEN k.limit_micros IS NOT NULL THEN k.limit_reset ELSE g.default_limit_reset END AS kind
    FROM keys k
    JOIN accounts a ON a.id = k.account_id
    LEFT JOIN groups g ON g.id = a.group_id
    WHERE k.period_start IS NOT NULL
) AS pairs
WHERE pairs.kind IS NOT NULL
"""

_GROUP_PAIRS = """
INSERT INTO spend_periods (scope, ident, reset, period_start, usage_micros)
SELECT 'group', CAST(g.id AS VARCHAR(64)), g.quota_reset, g.period_start, g.period_usage_micros
FROM groups g
WHERE g.period_start IS NOT NULL AND g.quota_reset IS NOT NULL
"""


def upgrade() -> None:
    op.create_table(
        "spend_periods",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("ident", sa.String(length=64), nullable=False),
        sa.Column("reset", sa.String(length=16), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("usage_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "ident", "reset", "period_start", name=op.f("pk_spend_periods")),
    )
    op.execute(_KEY_PAIRS)
    op.execute(_GROUP_PAIRS)
    for table in ("keys", "groups"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("period_start")
            batch.drop_column("period_usage_micros")


def _latest(ident: str, scope: str, column: str) -> str:
    return (
        f"(SELECT s.{column} FROM spend_periods s WHERE s.scope = '{scope}' AND s.ident = {ident} "
        f"ORDER BY s.period_start DESC LIMIT 1)"
    )


def downgrade() -> None:
    for table, ident, scope in (("keys", "keys.hash", "key"), ("groups", "CAST(groups.id AS VARCHAR(64))", "group")):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("period_usage_micros", sa.BigInteger(), nullable=False, server_default="0"))
            batch.add_column(sa.Column("period_start", sa.DateTime(timezone=True), nullable=True))
        op.execute(
            f"UPDATE {table} SET period_start = {_latest(ident, scope, 'period_start')}, "
            f"period_usage_micros = COALESCE({_latest(ident, scope, 'usage_micros')}, 0)"
        )
    op.drop_table("spend_periods")
