"""The migrations build exactly the tables of store/schema.py, and the row-version migration keeps existing rows."""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Identity, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from keyrelay.store.engine import create_engine
from keyrelay.store.migrate import alembic_config, head_revision, upgrade_to_head
from keyrelay.store.schema import metadata


def _migrate(connection: Connection, direction: str, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    getattr(command, direction)(cfg, revision)


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    with warnings.catch_warnings():
        # SQLAlchemy cannot reflect SQLite's expression indexes (lower(email)): it says so and leaves them out.
        # PostgreSQL's are reflected and compared; on SQLite, the email test below checks the index itself.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        differences = list(compare_metadata(context, metadata))
    if connection.dialect.name == "sqlite" and _has_trigger(connection, "tr_keys_id"):
        # SQLite has no identity columns: the trigger numbers new keys in place of keys.id's identity (0013).
        differences = [d for d in differences if not _is_identity_of_key_numbers(d)]
    return differences


def _has_trigger(connection: Connection, name: str) -> bool:
    found = connection.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = :n"), {"n": name})
    return found.first() is not None


def _is_identity_of_key_numbers(difference: Any) -> bool:
    # A column's change is a list of one tuple: (kind, schema, table, column, existing, reflected, declared).
    change = difference[0] if isinstance(difference, list) and len(difference) == 1 else difference
    return tuple(change[:4]) == ("modify_default", None, "keys", "id") and isinstance(change[6], Identity)


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


async def test_emails_that_differ_only_in_case_stop_the_upgrade_until_one_is_renamed(database_url: str) -> None:
    engine = create_engine(database_url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    insert = text("INSERT INTO accounts (email, status, created_at, updated_at) VALUES (:e, 'active', :t, :t)")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade", "0009")
            for email in ("Ann@example.com", "ann@example.com", "bob@example.com"):
                await conn.execute(insert, {"e": email, "t": now})
        with pytest.raises(RuntimeError, match=r"1 email\(s\) .* \(ann@example.com\)"):
            await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE accounts SET email = 'ann.old@example.com' WHERE email = 'Ann@example.com'")
            )
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            with pytest.raises(IntegrityError):
                await conn.execute(insert, {"e": "BOB@Example.com", "t": now})
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "downgrade", "0009")  # and back: the index goes
            await conn.execute(insert, {"e": "BOB@Example.com", "t": now})
            await conn.execute(text("DELETE FROM accounts WHERE email = 'BOB@Example.com'"))
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_gateways_starting_together_migrate_a_new_database_once(postgres_url: str) -> None:
    """Four processes' start-ups on one new PostgreSQL database: all succeed, the schema is built once."""
    engines = [create_engine(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(upgrade_to_head(engine) for engine in engines))
        async with engines[0].connect() as conn:
            assert await conn.run_sync(_differences) == []
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        assert versions == [head_revision()]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_duplicate_request_ids_stop_0012_until_removed_and_a_prebuilt_index_is_kept(database_url: str) -> None:
    engine = create_engine(database_url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    insert = text(
        "INSERT INTO usage_records (request_id, created_at, key_hash, key_name, account_id, streamed, "
        "prompt_tokens, completion_tokens, cost_micros, usage_estimated, status) "
        "VALUES (:r, :t, 'k', 'k', 1, false, 0, 0, 0, false, 200)"
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade", "0011")
            for request_id in ("req_a", "req_dup", "req_dup"):
                await conn.execute(insert, {"r": request_id, "t": now})
        with pytest.raises(RuntimeError, match="req_dup"):
            await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "DELETE FROM usage_records "
                    "WHERE id = (SELECT max(id) FROM usage_records WHERE request_id = 'req_dup')"
                )
            )
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
        # Built beforehand under its name (as CREATE UNIQUE INDEX CONCURRENTLY would): the upgrade leaves it.
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "downgrade", "0011")
            await conn.execute(text("CREATE UNIQUE INDEX ux_usage_request_id ON usage_records (request_id)"))
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()
