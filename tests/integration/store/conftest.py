"""Fixtures of the store tests: a runtime on the fresh database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyrelay.config import Settings
from keyrelay.runtime import Runtime, open_runtime


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    """A runtime (store, services) on the test's fresh database, closed afterwards."""
    rt = await open_runtime(Settings(database_url=database_url))
    try:
        yield rt
    finally:
        await rt.close()
