"""A Responses stream from a ``kind: openai`` upstream that fails before any content: whose fault decides.

Two ``kind: openai`` channels serve one model (the first by priority), both answered by a scripted upstream
that replays exact Responses events. A ``response.failed`` whose ``error.code`` blames the upstream
(``server_error``) before any content fails over to the next channel, as any early failure does; one that blames
the request (``context_length_exceeded``, which Codex CLI answers by compacting its context) is the client's to
see: relayed as it came, never retried elsewhere, and recorded as the client's 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.scripted_upstream import Script, ScriptedUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import auth, usage_rows
from tests.responses_golden import golden, sse_events


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def settings(database_url: str, upstream: ScriptedUpstream) -> Settings:
    def channel(name: str, priority: int) -> ProviderConfig:
        return ProviderConfig(
            name=name,
            kind="openai",
            base_url=upstream.base_url,
            api_key=SecretStr("sk-test-upstream"),
            models=(ModelConfig(id="gpt-x", input_per_mtok="1", output_per_mtok="2"),),  # type: ignore[arg-type]
            priority=priority,
        )

    return Settings(
        database_url=database_url,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(channel("first", 1), channel("second", 0)),
    )


def failed(code: str) -> bytes:
    created = {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "status": "in_progress"}}
    failure = {
        "type": "response.failed",
        "sequence_number": 1,
        "response": {"id": "resp_1", "status": "failed", "error": {"code": code, "message": f"{code} (scripted)"}},
    }
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in (created, failure)
    )


async def post(server: RunningServer, key: str) -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-x", "input": "hello", "stream": True}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return await http.post("/v1/responses", json=body, headers=auth(key))


async def test_an_upstream_fault_before_content_fails_over(server: RunningServer, upstream: ScriptedUpstream) -> None:
    key = await make_api_key(server, "failover@example.com")
    upstream.queue(Script([failed("server_error")]), Script([golden("text.sse")]))
    answer = await post(server, key)
    assert answer.status_code == 200
    assert [data["type"] for _, data in sse_events(answer.content)][-1] == "response.completed"
    assert [r.path for r in upstream.received] == ["/v1/responses", "/v1/responses"]
    (row,) = await usage_rows(server, answer.headers["x-request-id"])
    assert (row["status"], row["provider"]) == (200, "second")


async def test_a_fault_of_the_request_is_relayed_not_failed_over(
    server: RunningServer, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "caller@example.com")
    upstream.queue(Script([failed("context_length_exceeded")]), Script([golden("text.sse")]))
    answer = await post(server, key)
    assert answer.status_code == 200
    assert answer.content == failed("context_length_exceeded")  # the upstream's events, as they came
    assert len(upstream.received) == 1
    (row,) = await usage_rows(server, answer.headers["x-request-id"])
    assert (row["status"], row["error_type"], row["provider"]) == (400, "INVALID_REQUEST", "first")
