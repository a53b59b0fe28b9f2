"""A client that hangs up mid-stream: the upstream call is cancelled and what was produced is billed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import MockOptions, MockUpstream
from keyrelay.testing.poll import poll_until
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import all_usage_rows, auth


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    # 400 paced words: the test holds the stream at its own pause (see below).
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
    upstream_cancelled = asyncio.Event()
    pauses = 0

    async def pause(_seconds: float) -> None:
        # The mock writes 5 chunks, then waits here for good: only the gateway dropping the upstream call ends it.
        nonlocal pauses
        pauses += 1
        if pauses <= 5:
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            upstream_cancelled.set()
            raise

    mock.options.sleep = pause
    body = {"model": "gpt-4o-mini-paced", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    received = b""
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(key)) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            received += chunk
            if received.count(b"data: ") >= 5:
                break  # hang up after a few events
    # The gateway notices the hang-up and drops the upstream call (the stream would never end by itself).
    async with asyncio.timeout(10):
        await upstream_cancelled.wait()
    rows = await poll_until(lambda: all_usage_rows(server), what="the usage record of the abandoned stream")
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status"] == 499 and row["error_type"] == "CLIENT_DISCONNECTED"
    assert row["streamed"] is True or row["streamed"] == 1
    # No usage chunk ever arrived: the words relayed so far are estimated and billed, never $0.
    assert row["usage_estimated"] in (True, 1)
    completion = row["completion_tokens"]
    assert isinstance(completion, int) and 0 < completion < 400
    cost = row["cost_micros"]
    assert isinstance(cost, int) and cost > 0
