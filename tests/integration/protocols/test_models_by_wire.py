"""Model discovery in each wire's shape: Claude Code's /v1/models, google-genai's models.list and models.get."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import pytest
from google import genai
from google.genai import types

from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.protocols.session_helpers import sqlite_url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_anthropic_sdk_lists_the_models_the_key_may_call(server: RunningServer) -> None:
    key = await make_api_key(server, "models@example.com", allowed_models=["an-model", "ge-model"])
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=key, max_retries=0)
    page = await client.models.list()
    assert [m.id for m in page.data] == ["an-model", "ge-model"]
    assert all(m.type == "model" for m in page.data)
    one = await client.models.retrieve("ge-model")
    assert one.id == "ge-model"
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("oa-model")  # not on the whitelist
    await client.close()


async def test_genai_sdk_lists_and_gets_models(server: RunningServer, http: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "models@example.com", allowed_models=["ge-model", "oa-model"])
    options = types.HttpOptions(base_url=server.base_url, api_version="v1beta", httpx_async_client=http)
    client = genai.Client(api_key=key, http_options=options)
    names = [m.name async for m in await client.aio.models.list()]
    assert names == ["models/oa-model", "models/ge-model"]
    model = await client.aio.models.get(model="ge-model")
    assert model.name == "models/ge-model"
    assert model.supported_actions is not None and "generateContent" in model.supported_actions
    with pytest.raises(genai.errors.ClientError) as caught:
        await client.aio.models.get(model="an-model")
    assert caught.value.code == 404


async def test_the_same_listing_path_answers_in_the_wire_the_request_speaks(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    key = await make_api_key(server, "models@example.com", allowed_models=["an-model"])
    openai_shape = (await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})).json()
    assert openai_shape == {
        "object": "list",
        "data": [{"id": "an-model", "object": "model", "created": 0, "owned_by": "an"}],
    }
    anthropic_shape = await client.get("/v1/models", headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    assert anthropic_shape.json()["data"][0]["type"] == "model"
    gemini_shape = await client.get("/v1/models", params={"key": key})
    assert gemini_shape.json()["models"][0]["name"] == "models/an-model"
    # A key the Gemini wire does not know gets Gemini's error shape.
    refused = await client.get("/v1beta/models", params={"key": "kr_live_nope"})
    assert refused.status_code == 401
    assert refused.json()["error"]["details"][0]["reason"] == "INVALID_API_KEY"
