"""usage records: one record per request id (a unique index), so that a replayed record is never counted twice

Usage records are journaled before a response completes and replayed after a crash (``usage/journal.py``);
a record the store already holds must be recognised and skipped, charges included. The unique index makes
that exact under any race, and serves the look-up of a request id.

Request ids are drawn per process with 48 random bits (``asgi.new_request_id``): two records of one id are not
expected. A database that holds some anyway cannot take the index: the upgrade stops and names them, for an
operator to remove the duplicates (``DELETE FROM usage_records WHERE id = ...``) before upgrading again.

On a large PostgreSQL table the index can be built beforehand without blocking the writers, under the same
name (``CREATE UNIQUE INDEX CONCURRENTLY ux_usage_request_id ON usage_records (request_id)``): the migration
then finds it and does nothing.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ux_usage_request_id"


def upgrade() -> None:
    bind = op.get_bind()
    if any(index["name"] == _INDEX for index in sa.inspect(bind).get_indexes("usage_records")):
        return  # built beforehand (CREATE UNIQUE INDEX CONCURRENTLY on a large table): nothing to do
    clashes = (
        op.get_bind()
        .execute(sa.text("SELECT request_id, count(*) AS n FROM usage_records GROUP BY request_id HAVING count(*) > 1"))
        .all()
    )
    if clashes:
        names = ", ".join(row.request_id for row in clashes[:10])
        raise RuntimeError(
            f"{len(clashes)} request id(s) have more than one usage record ({names}). Remove the duplicates "
            "(DELETE FROM usage_records WHERE id = ...), then upgrade again."
        )
    op.create_index(_INDEX, "usage_records", ["request_id"], unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="usage_records")
