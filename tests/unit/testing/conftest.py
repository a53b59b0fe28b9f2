"""Fixtures shared by the mock upstream's tests: the mock (slow-ttfb at 100 ms), the official SDK and raw HTTP on it.

``no_server_errors`` runs for every test here: the mock must stay quiet, no aiohttp/asyncio warnings or errors,
even when faults abort connections. A module may define its own ``mock`` (other options) over this one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
import pytest_asyncio

from keyrelay.testing.mock_upstream import MockOptions, MockUpstream


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose mock logged an aiohttp or asyncio warning or error."""
    caplog.set_level(logging.WARNING)
    yield
    noisy = [r for r in caplog.records if r.name.startswith(("aiohttp", "asyncio")) and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    """A running mock upstream (``slow-ttfb`` waits 100 ms)."""
    async with MockUpstream(MockOptions(slow_ms=100)) as upstream:
        yield upstream


@pytest_asyncio.fixture
async def client(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official openai SDK on the mock."""
    async with openai.AsyncOpenAI(base_url=mock.base_url, api_key="x", max_retries=0, timeout=5.0) as sdk:
        yield sdk


@pytest_asyncio.fixture
async def http(mock: MockUpstream) -> AsyncIterator[httpx.AsyncClient]:
    """Raw HTTP on the mock's origin."""
    async with httpx.AsyncClient(base_url=mock.origin, timeout=5.0) as raw:
        yield raw
