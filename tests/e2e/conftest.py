"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, and a portal on SQLite with real mail.

The portal, its settings and the SMTP inbox are those of the portal's HTTP tests (importing a fixture into a
conftest registers it). The browser is ``/usr/bin/chromium`` only, never one Playwright downloads: without it
the tests are skipped, and fail in CI (``CI=true``), like the PostgreSQL tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from keyrelay.testing.server import RunningServer
from tests.conftest import IN_CI
from tests.integration.portal.conftest import inbox, portal, portal_settings  # noqa: F401 (fixtures)

CHROMIUM = Path("/usr/bin/chromium")

# expect() waits up to 10 s (not 5): a loaded CI machine may take that long to hash a password and answer.
expect.set_options(timeout=10_000)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A brand-new SQLite file: the browser tests check pages, not stores (the HTTP tests cover PostgreSQL)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium (skipped without it, a failure in CI)."""
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def context(browser: Browser, portal: RunningServer) -> AsyncIterator[BrowserContext]:  # noqa: F811
    """A fresh browser profile (no cookies) whose relative URLs go to the portal."""
    ctx = await browser.new_context(base_url=portal.base_url)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    """A tab of ``context``."""
    return await context.new_page()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$KEYRELAY_SCREENSHOTS`` when set (to look at them), else the test's tmp_path."""
    wanted = os.environ.get("KEYRELAY_SCREENSHOTS")
    directory = Path(wanted) if wanted else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
