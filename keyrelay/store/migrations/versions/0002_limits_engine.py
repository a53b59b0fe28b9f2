"""limits engine: group quotas, tpm and in-flight caps, account spend tracked apart from credit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 17:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("default_tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("default_max_concurrent", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quota_micros", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("quota_reset", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("usage_micros", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("period_usage_micros", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("period_start", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("spent_micros", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("max_concurrent")
        batch.drop_column("tpm")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("spent_micros")
    with op.batch_alter_table("groups") as batch:
        for name in (
            "period_start",
            "period_usage_micros",
            "usage_micros",
            "quota_reset",
            "quota_micros",
            "default_max_concurrent",
            "default_tpm",
        ):
            batch.drop_column(name)
