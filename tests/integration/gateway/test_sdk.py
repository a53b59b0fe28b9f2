"""The official openai SDK against keyrelay against the mock upstream."""

from __future__ import annotations

import openai
import pytest

from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key


@pytest.fixture
async def sdk(server: RunningServer) -> openai.AsyncOpenAI:
    key = await make_api_key(server, "sdk@example.com", name="sdk-test")
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


async def test_chat_plain(sdk: openai.AsyncOpenAI) -> None:
    r = await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.prompt_tokens > 0
    await sdk.close()


async def test_chat_stream(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="mock/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts).startswith("This is a mock reply")
    await sdk.close()
