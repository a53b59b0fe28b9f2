"""A model served by channels of different kinds: a channel whose wire cannot express the request is passed over.

``mixed`` is served first by an ``anthropic`` channel and then by an ``openai`` one. A request that Anthropic
cannot take (a Responses ``truncation: "auto"``, a Chat Completions ``logprobs``) is refused by the translation
before anything is sent, and the OpenAI channel, for which it is a passthrough, serves it: the answer does not
depend on the channel drawn first. Only when no channel can take it does the client get the 400 naming the
field. Passing a channel over is not a failure: nothing counts toward its circuit breaker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from tests.integration.gateway.helpers import auth, usage_rows


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@pytest.fixture
def settings(database_url: str, mock: MockUpstream) -> Settings:
    def channel(name: str, kind: str, upstream: str, priority: int) -> ProviderConfig:
        model = ModelConfig(id="mixed", upstream_id=upstream, input_per_mtok="1", output_per_mtok="2")  # type: ignore[arg-type]
        return ProviderConfig(
            name=name, kind=kind, base_url=f"{mock.origin}/v1", models=(model,), priority=priority, timeout_s=5
        )

    return Settings(
        database_url=database_url,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(channel("an", "anthropic", "claude-x", 1), channel("oa", "openai", "gpt-x", 0)),
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "mixed", "input": "hi", "truncation": "auto"}),
        ("/v1/chat/completions", {"model": "mixed", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}),
    ],
)
async def test_a_channel_that_cannot_take_the_request_is_passed_over(
    server: RunningServer, key: str, mock: MockUpstream, path: str, body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post(path, json=body, headers=auth(key))
    assert answer.status_code == 200, answer.text
    assert [r.path for r in mock.state.requests] == [path]  # nothing was sent to the Anthropic channel
    (row,) = await usage_rows(server, answer.headers["x-request-id"])
    assert row["provider"] == "oa" and row["attempts"] is None  # one attempt: no failure to list
    assert server.app.gateway is not None
    report = {c["provider"]: c for c in server.app.gateway.channel_report()}
    assert report["an"]["state"] == "closed" and report["an"]["attempts_60s"] == 0


async def test_the_refusal_when_no_channel_can_take_it(server: RunningServer, key: str, mock: MockUpstream) -> None:
    """A Gemini client is translated for both channels, and neither Anthropic nor OpenAI takes two candidates."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"candidateCount": 2}}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post("/v1beta/models/mixed:generateContent", json=body, headers={"x-goog-api-key": key})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["error"]["details"][0]
    assert detail["reason"] == "INVALID_REQUEST" and detail["metadata"]["param"] == "n"
    assert mock.state.requests == []
