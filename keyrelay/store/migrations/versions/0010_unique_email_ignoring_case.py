"""accounts: an email is unique whatever its letter case (a unique index on lower(email))

Until now emails were unique as typed, and the case-insensitive check ran in code: two sign-ups racing with
``Ann@example.com`` and ``ann@example.com`` could both succeed. The index makes the database refuse the
second, and it serves the look-ups by email of sign-in and sign-up (``lower(email) = ?``), which read the
whole table before.

A database that already holds two such emails cannot take the index: the upgrade stops and names them, so
that an operator merges or renames one (``PATCH /api/v1/accounts/{id}`` cannot change an email; the SQL is
``UPDATE accounts SET email = ... WHERE id = ...``) before upgrading again.

The index folds with the database's ``lower()`` (SQLite: ASCII letters only; PostgreSQL: every letter its
collation knows), and so do the look-ups (``store/text_match.py``), so the two always agree.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ux_accounts_email_lower"


def upgrade() -> None:
    clashes = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT lower(email) AS folded, count(*) AS n FROM accounts GROUP BY lower(email) HAVING count(*) > 1"
            )
        )
        .all()
    )
    if clashes:
        names = ", ".join(row.folded for row in clashes[:10])
        raise RuntimeError(
            f"{len(clashes)} email(s) belong to more than one account when letter case is ignored ({names}). "
            "Give each account a distinct email (UPDATE accounts SET email = ... WHERE id = ...), then upgrade again."
        )
    op.create_index(_INDEX, "accounts", [sa.text("lower(email)")], unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="accounts")
