"""Apply the Alembic migrations: at start-up, from ``keyrelay migrate`` and in tests.

When the database is already at the newest revision (the normal start-up), this answers from one
query without importing Alembic at all: Alembic and Mako cost some 10 MB of resident memory that a
running gateway would otherwise keep for nothing.

On PostgreSQL a migration runs under a transaction-scoped advisory lock (``MIGRATION_LOCK``), so that
many gateways starting together on a new or upgraded database migrate it once: the others wait for the
lock, then find the schema at the revision asked for and change nothing. (SQLite serialises writers
itself: its migration transaction holds the database's write lock.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The key of the PostgreSQL advisory lock held while migrating: "keyrelay" in ASCII, as a signed 64-bit integer.
MIGRATION_LOCK = int.from_bytes(b"keyrelay", "big", signed=True)


def head_revision() -> str:
    """The newest revision id; by convention each file is named ``<revision>_<slug>.py``."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def alembic_config(url: str = "") -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def _current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
    except SQLAlchemyError:
        return None  # no alembic_version table yet: a new database


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision on the given engine."""
    if await _current_revision(engine) == head_revision():
        return
    await migrate_to(engine, "head")


async def migrate_to(engine: AsyncEngine, revision: str, *, downgrade: bool = False) -> None:
    """Upgrade (or downgrade) the schema to ``revision`` ("head", "0002", ...) in one transaction.

    Raises:
        RuntimeError: On SQLite, the migration left rows whose foreign keys point nowhere (rolled back).
        sqlalchemy.exc.SQLAlchemyError: The store failed (rolled back).
    """

    def _run(connection: Connection) -> None:
        from alembic import command

        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(cfg, revision)

    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            # Held to the end of this transaction. Alembic reads the current revision after it is taken, so a
            # process that waited here sees what the one before it committed and has nothing left to do.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            await conn.run_sync(_run)
        return
    # SQLite changes a column by copying the table, and dropping the old copy of a table that other
    # rows reference (groups) fails while foreign keys are enforced. Alembic's recipe: switch them off
    # for the migration (only possible outside a transaction), check them before committing, and
    # switch them back on for the pooled connection.
    async with engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            await conn.run_sync(_run)
            broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if broken:
                raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")
            await conn.commit()
        finally:
            await conn.rollback()
            await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            await conn.commit()
