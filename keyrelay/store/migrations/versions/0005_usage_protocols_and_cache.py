"""usage records: inbound protocol, upstream kind, cache-read, cache-write and reasoning tokens

Issue 8: keyrelay speaks OpenAI, Anthropic and Gemini inbound and outbound; a record says which wire the
client spoke and which kind of upstream served it, and the prompt-cache and reasoning parts of its tokens
(``prompt_tokens`` still counts every input token, cached ones included; ``completion_tokens`` every
output token, reasoning included). Existing rows were OpenAI in and out with no cache counts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOKENS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("protocol", sa.String(16), nullable=False, server_default="openai"))
        batch.add_column(sa.Column("upstream_kind", sa.String(32), nullable=True))
        for name in _TOKENS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for name in reversed(_TOKENS):
            batch.drop_column(name)
        batch.drop_column("upstream_kind")
        batch.drop_column("protocol")
