"""Redis unreachable: 503 LIMITS_UNAVAILABLE by default (fail closed), local limits with fail-open."""

from __future__ import annotations

from pathlib import Path

import httpx

from keyrelay.config import Settings
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import running_server
from tests.conftest import make_api_key, make_management_key
from tests.integration.gateway.conftest import provider_for

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _settings(tmp_path: Path, mock: MockUpstream, fail_open: bool) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}",
        redis_url=DEAD_REDIS,
        limits_fail_open=fail_open,
        log_level="error",
        providers=(provider_for(mock),),
    )


async def test_fail_closed(tmp_path: Path, mock: MockUpstream) -> None:
    async with running_server(_settings(tmp_path, mock, fail_open=False)) as server:
        key = await make_api_key(server, "down@example.com", rate_limits={"rpm": 100})
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "LIMITS_UNAVAILABLE"
            assert len(mock.requests) == 0  # refused before anything went upstream
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] == "unreachable"
            # A key's state cannot be compared with the marks in Redis: refused like an admission...
            models = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert models.status_code == 503 and models.json()["error"]["type"] == "LIMITS_UNAVAILABLE"
            # ...except on the management API, which stays usable to administrators (on the cached key state).
            mgmt = await make_management_key(server, "down@example.com")
            listing = await client.get("/api/v1/keys", headers={"Authorization": f"Bearer {mgmt}"})
            assert listing.status_code == 200


async def test_fail_open_uses_local_limits(tmp_path: Path, mock: MockUpstream) -> None:
    async with running_server(_settings(tmp_path, mock, fail_open=True)) as server:
        key = await make_api_key(server, "open@example.com", rate_limits={"rpm": 2})
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            headers = {"Authorization": f"Bearer {key}"}
            statuses = [
                (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code for _ in range(3)
            ]
            # Still limited, by this process's own counters.
            assert statuses == [200, 200, 429]


async def test_readyz_stays_up_when_failing_open(tmp_path: Path, mock: MockUpstream) -> None:
    async with (
        running_server(_settings(tmp_path, mock, fail_open=True)) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
    ):
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {
            "status": "degraded",
            "store": "ok",
            "redis": "unreachable",
        }
