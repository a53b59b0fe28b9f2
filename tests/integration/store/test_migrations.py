"""The migrations build exactly the tables of store/schema.py, and the row-version migration keeps existing rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from keyrelay.store.engine import create_engine
from keyrelay.store.migrate import alembic_config, upgrade_to_head
from keyrelay.store.schema import metadata


def _migrate(connection: Connection, direction: str, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    getattr(command, direction)(cfg, revision)


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_build_the_declared_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_row_versions_start_at_one_for_existing_rows_and_migrate_both_ways(database_url: str) -> None:
    engine = create_engine(database_url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade", "0002")
            await conn.execute(
                text("INSERT INTO groups (name, price_multiplier_ppm, created_at, updated_at) VALUES ('g', 1, :t, :t)"),
                {"t": now},
            )
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT version FROM groups"))).scalar_one() == 1
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "downgrade", "0002")
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT name, version FROM groups"))).one() == ("g", 1)
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()
