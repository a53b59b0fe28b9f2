"""The garbage-collector policy (freeze, young threshold) is set only by an app that owns its process."""

from __future__ import annotations

import gc
from pathlib import Path

from keyrelay.config import Settings
from keyrelay.testing.server import running_server


async def test_an_embedded_app_leaves_the_collector_alone(tmp_path: Path) -> None:
    # In-process servers (tests, an app mounted elsewhere) must not pin their objects in the permanent generation
    # or change the process's thresholds: the suite's process grew to 2.3 GB when every test server froze its own.
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", log_level="warning")
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with running_server(settings):
        assert gc.get_threshold() == threshold
        assert gc.get_freeze_count() == frozen
    assert gc.get_threshold() == threshold
