"""The legacy ``POST /v1/completions`` through keyrelay, with the official ``openai`` SDK.

Passed through to ``openai`` and ``openai-compatible`` upstreams (the mock's ``/v1/completions``), plain and
streamed, accounted like chat (a usage record with the upstream's token counts); a model whose provider speaks
another wire is refused with a 400 naming ``model``, before admission: nothing is charged or sent upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from tests.integration.gateway.helpers import all_usage_rows, usage_rows

PROMPT = "def fibonacci(n):"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: this is about the wire, not the store."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@pytest.fixture
async def client(server: RunningServer, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


@pytest.mark.parametrize("model", ["oa-model", "oc-model"])
async def test_completion(client: openai.AsyncOpenAI, server: RunningServer, mock: MockUpstream, model: str) -> None:
    raw = await client.completions.with_raw_response.create(model=model, prompt=PROMPT, max_tokens=5, suffix="\n")
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text and completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert mock.state.requests[-1].path == "/v1/completions"
    assert mock.state.requests[-1].body["suffix"] == "\n"  # the client's body, passed through
    (row,) = await usage_rows(server, raw.headers["x-request-id"])
    assert (row["protocol"], row["status"], row["model"]) == ("openai", 200, model)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row["cost_micros"] > 0


@pytest.mark.parametrize("model", ["oa-model", "oc-model"])
async def test_streamed_completion(client: openai.AsyncOpenAI, server: RunningServer, model: str) -> None:
    stream = await client.completions.create(model=model, prompt=PROMPT, stream=True)
    request_id = stream.response.headers["x-request-id"]
    chunks = [chunk async for chunk in stream]
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text
    # The client did not ask for the usage chunk: keyrelay asked the upstream, read it, and hid it.
    assert all(chunk.usage is None for chunk in chunks)
    (row,) = await usage_rows(server, request_id)
    assert row["status"] == 200 and row["completion_tokens"] == len(text.split(" ")) and not row["usage_estimated"]


async def test_other_wires_are_refused(client: openai.AsyncOpenAI, server: RunningServer, mock: MockUpstream) -> None:
    before = len(mock.state.requests)
    for model in ("an-model", "ge-model"):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.completions.create(model=model, prompt=PROMPT)
        error = caught.value.body
        assert isinstance(error, dict) and error["param"] == "model"
        assert "does not offer the legacy /v1/completions" in error["message"]
    assert len(mock.state.requests) == before
    assert await all_usage_rows(server) == []  # refused before admission: nothing charged


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "oa-model"}, "prompt"),
        ({"model": "oa-model", "prompt": [1, "x"]}, "prompt"),
        ({"prompt": "x"}, "model"),
    ],
)
async def test_bad_bodies(client: openai.AsyncOpenAI, body: dict[str, object], field: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/completions", body=body, cast_to=object)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == field


async def test_the_default_bound_is_sent_upstream(client: openai.AsyncOpenAI, mock: MockUpstream) -> None:
    """keyrelay bounds a completion without max_tokens by 16 tokens, so the upstream is told 16 too."""
    await client.completions.create(model="oc-model", prompt=PROMPT)
    assert mock.state.requests[-1].body["max_tokens"] == 16
    await client.completions.create(model="oc-model", prompt=PROMPT, max_tokens=7)
    assert mock.state.requests[-1].body["max_tokens"] == 7


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_output_is_estimated_without_usage(
    client: openai.AsyncOpenAI, server: RunningServer, stream: bool
) -> None:
    """An upstream that reports no usage: the completion's text is what the output estimate counts."""
    raw = await client.completions.with_raw_response.create(model="oa-model-no-usage", prompt=PROMPT, stream=stream)
    if stream:
        async for _ in raw.parse():
            pass
    (row,) = await usage_rows(server, raw.headers["x-request-id"])
    assert row["usage_estimated"] and row["completion_tokens"] > 0
