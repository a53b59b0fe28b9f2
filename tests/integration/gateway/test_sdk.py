"""The official openai SDK against keyrelay against the mock upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from keyrelay.testing.mock_upstream import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    MockUpstream,
    count_embedding_tokens,
    count_prompt_tokens,
    embedding_vector,
)
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import usage_rows

MESSAGES: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


@pytest.fixture
async def sdk(server: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    key = await make_api_key(server, "sdk@example.com", name="sdk-test")
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    yield client
    await client.close()  # again, if the test did not get that far (closing twice is harmless)


def sdk_for(server: RunningServer, key: str) -> openai.AsyncOpenAI:
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


async def test_chat_stream_with_usage(sdk: openai.AsyncOpenAI, server: RunningServer) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=5,
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is a mock reply"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    prompt = count_prompt_tokens(MESSAGES)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (prompt, 5, prompt + 5)
    assert all(c.usage is None for c in chunks[:-1])
    request_id = stream.response.headers["x-request-id"]
    [row] = await usage_rows(server, request_id)
    assert (row["streamed"], row["prompt_tokens"], row["completion_tokens"]) == (True, prompt, 5)
    await sdk.close()


@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_embeddings(sdk: openai.AsyncOpenAI, mock: MockUpstream, encoding: str) -> None:
    inputs = ["hello world", "keyrelay relays keys"]
    if encoding == "float":
        r = await sdk.embeddings.create(model="text-embedding-3-small", input=inputs, encoding_format="float")
    else:
        r = await sdk.embeddings.create(model="text-embedding-3-small", input=inputs)  # the SDK asks for base64
    assert mock.requests[-1].body["encoding_format"] == encoding
    assert [d.index for d in r.data] == [0, 1]
    for item, text in zip(r.data, inputs, strict=True):
        assert len(item.embedding) == DEFAULT_EMBEDDING_DIMENSIONS
        assert item.embedding == embedding_vector(text)
    assert r.usage.prompt_tokens == r.usage.total_tokens == count_embedding_tokens(inputs)
    assert r.model == "text-embedding-3-small"
    r = await sdk.embeddings.create(model="text-embedding-3-small", input="one", dimensions=3)
    assert r.data[0].embedding == embedding_vector("one", 3)
    await sdk.close()


async def test_models(server: RunningServer, sdk: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in sdk.models.list()]
    assert ids[:3] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"] and len(ids) == 11
    model = await sdk.models.retrieve("gpt-4o")
    assert (model.id, model.owned_by, model.object) == ("gpt-4o", "mock", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.models.retrieve("gpt-9")
    assert caught.value.body["type"] == "MODEL_NOT_FOUND"  # type: ignore[index]
    await sdk.close()
    scoped = sdk_for(server, await make_api_key(server, "sdk@example.com", allowed_models=["gpt-4o"]))
    try:
        assert [m.id async for m in scoped.models.list()] == ["gpt-4o"]
        with pytest.raises(openai.NotFoundError):
            await scoped.models.retrieve("gpt-4o-mini")
    finally:
        await scoped.close()


async def test_errors_as_the_sdk_sees_them(server: RunningServer, sdk: openai.AsyncOpenAI) -> None:
    async def call(client: openai.AsyncOpenAI, model: str = "gpt-4o-mini") -> None:
        await client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]

    cases: list[tuple[openai.AsyncOpenAI, str, type[openai.APIStatusError], int, str]] = [
        (sdk, "gpt-4o-mini-fail-500", openai.InternalServerError, 502, "UPSTREAM_ERROR"),
        (sdk, "gpt-4o-mini-fail-429", openai.RateLimitError, 429, "UPSTREAM_RATE_LIMITED"),
        (sdk, "gpt-4o-mini-fail-400", openai.BadRequestError, 400, "INVALID_REQUEST"),
        (sdk, "nope", openai.NotFoundError, 404, "MODEL_NOT_FOUND"),
    ]
    clients = [
        sdk_for(server, "kr_live_" + "0" * 43),
        sdk_for(server, await make_api_key(server, "sdk@example.com", ip_allowlist=["192.0.2.0/24"])),
        sdk_for(server, await make_api_key(server, "sdk@example.com", rate_limits={"rpm": 1})),
    ]
    cases += [
        (clients[0], "gpt-4o-mini", openai.AuthenticationError, 401, "INVALID_API_KEY"),
        (clients[1], "gpt-4o-mini", openai.PermissionDeniedError, 403, "ACCESS_DENIED"),
    ]
    try:
        await call(clients[2])
        cases.append((clients[2], "gpt-4o-mini", openai.RateLimitError, 429, "RATE_LIMIT_EXCEEDED"))
        for client, model, error, status, error_type in cases:
            with pytest.raises(error) as caught:
                await call(client, model)
            exc = caught.value
            assert exc.status_code == status
            assert exc.body["type"] == error_type  # type: ignore[index]
            assert exc.type == error_type
            assert exc.request_id is not None and exc.body["request_id"] == exc.request_id  # type: ignore[index]
    finally:
        for client in clients:
            await client.close()
        await sdk.close()
