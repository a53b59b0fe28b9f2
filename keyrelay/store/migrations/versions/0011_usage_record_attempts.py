"""usage records: the upstream attempts of a request that met a failure (issue 10, routing and failover)

A request may try several channels (failover) before one serves it, or none does. The record keeps the list
of its attempts as JSON text: ``[{"provider", "credential", "status", "failure_class", "latency_ms"}, ...]``
in the order made. It is NULL for a request whose one attempt succeeded (the record's own provider and status
say it all), so the common case writes nothing more.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("attempts", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("attempts")
