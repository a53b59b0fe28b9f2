"""A client that hangs up mid-stream: the upstream call is cancelled and what was produced is billed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import MockOptions, MockUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import all_usage_rows, auth


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    # 400 paced words: 20 ms to the first chunk, then one every 5 ms, about 2 s in all.
    async with MockUpstream(MockOptions(reply_words=400)) as upstream:
        yield upstream


@pytest.fixture
def settings(database_url: str, mock: MockUpstream) -> Settings:
    model = ModelConfig(id="gpt-4o-mini-paced", input_per_mtok="0.15", output_per_mtok="0.60")  # type: ignore[arg-type]
    provider = ProviderConfig(name="mock", base_url=mock.base_url, models=(model,))
    return Settings(database_url=database_url, usage_flush_interval_s=0.1, log_level="warning", providers=(provider,))


async def test_client_disconnect_cancels_upstream_and_bills_partial(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
) -> None:
    key = await make_api_key(server, "hangup@example.com")
    body = {"model": "gpt-4o-mini-paced", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    received = b""
    loop = asyncio.get_running_loop()
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(key)) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            received += chunk
            if received.count(b"data: ") >= 5:
                break  # hang up after a few events
    hung_up = loop.time()
    # The gateway notices within its watcher delay and drops the upstream call long before the 2 s stream ends.
    rows: list[dict[str, object]] = []
    while loop.time() - hung_up < 1.5:
        rows = await all_usage_rows(server)
        if rows:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 1, "no usage record for the abandoned stream"
    row = rows[0]
    assert row["status"] == 499 and row["error_type"] == "CLIENT_DISCONNECTED"
    assert row["streamed"] is True or row["streamed"] == 1
    # No usage chunk ever arrived: the words relayed so far are estimated and billed, never $0.
    assert row["usage_estimated"] in (True, 1)
    completion = row["completion_tokens"]
    assert isinstance(completion, int) and 0 < completion < 400
    cost = row["cost_micros"]
    assert isinstance(cost, int) and cost > 0
    assert loop.time() - hung_up < 1.5
