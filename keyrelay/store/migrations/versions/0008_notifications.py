"""notifications: what each account wants to be told by email, and what was sent

Issue 9: accounts gain three switches (spend limits, low balance, expiring keys; all on), and
``notifications_sent`` records each notification once per kind, subject and period.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 21:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SWITCHES = ("notify_spend", "notify_balance", "notify_expiry")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        for name in _SWITCHES:
            batch.add_column(sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table(
        "notifications_sent",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("period", sa.String(40), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_notifications_sent_account_id_accounts"),
        sa.PrimaryKeyConstraint("kind", "subject", "period", name="pk_notifications_sent"),
    )


def downgrade() -> None:
    op.drop_table("notifications_sent")
    with op.batch_alter_table("accounts") as batch:
        for name in reversed(_SWITCHES):
            batch.drop_column(name)
