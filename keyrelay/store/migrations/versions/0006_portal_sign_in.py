"""portal sign-in: account passwords, verified emails and the admin flag; sessions, emailed tokens, failures

Issue 9: accounts sign in to the portal. ``accounts`` gains an argon2id ``password_hash`` (none for existing
accounts: they cannot sign in until one is set, e.g. with ``keyrelay admin set-password``),
``email_verified_at``, ``is_admin`` and ``session_epoch`` (bumped by a password change or a deactivation,
voiding every session opened before). Sessions, single-use emailed tokens and failed sign-ins get tables.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(255), nullable=True))
        batch.add_column(_ts("email_verified_at"))
        batch.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "portal_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("last_seen_at", nullable=False),
        _ts("expires_at", nullable=False),
        sa.Column("ip", sa.String(45), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.Column("session_epoch", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_portal_sessions_account_id_accounts"),
        sa.PrimaryKeyConstraint("id_hash", name="pk_portal_sessions"),
    )
    op.create_index("ix_portal_sessions_account", "portal_sessions", ["account_id"])
    op.create_table(
        "account_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("used_at"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_account_tokens_account_id_accounts"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_account_tokens"),
    )
    op.create_index("ix_account_tokens_account", "account_tokens", ["account_id", "purpose"])
    op.create_table(
        "signin_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("ip", sa.String(45), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_signin_failures"),
    )
    op.create_index("ix_signin_failures_email_created", "signin_failures", ["email", "created_at"])
    op.create_index("ix_signin_failures_ip_created", "signin_failures", ["ip", "created_at"])


def downgrade() -> None:
    op.drop_table("signin_failures")
    op.drop_table("account_tokens")
    op.drop_table("portal_sessions")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("session_epoch")
        batch.drop_column("is_admin")
        batch.drop_column("email_verified_at")
        batch.drop_column("password_hash")
