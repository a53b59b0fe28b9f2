"""The mock's Gemini wire, judged by the official ``google-genai`` SDK (and raw bytes for the framing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from google import genai
from google.genai import errors, types

from keyrelay.testing.mock_upstream import REPLY_TEXT, MockOptions, MockUpstream
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT

KEY = "AIza-mock"
HI = "Hello there"  # 11 bytes -> ceil(11/4) + 3 = 6 tokens
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={"city": types.Schema(type=types.Type.STRING), "days": types.Schema(type=types.Type.INTEGER)},
        required=["city", "days"],
    ),
)
TIME = types.FunctionDeclaration(name="get_time", parameters_json_schema={"type": "object", "properties": {}})


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockOptions(expected_key=KEY)) as upstream:
        yield upstream


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as transport:
        yield transport


def sdk(mock: MockUpstream, http: httpx.AsyncClient, key: str = KEY, api_version: str | None = None) -> genai.Client:
    # httpx: the SDK's aiohttp session class subclasses ClientSession, which aiohttp warns about (an error here).
    options = types.HttpOptions(base_url=mock.origin, api_version=api_version, httpx_async_client=http)
    return genai.Client(api_key=key, http_options=options)


@pytest.fixture
def client(mock: MockUpstream, http: httpx.AsyncClient) -> genai.Client:
    return sdk(mock, http)


def config(**fields: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(**fields)


async def test_plain_and_count_tokens(client: genai.Client, mock: MockUpstream) -> None:
    response = await client.aio.models.generate_content(model="gemini-x", contents=HI)
    assert response.text == REPLY_TEXT
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.STOP and candidate.content.role == "model"  # type: ignore[union-attr]
    usage = response.usage_metadata
    assert usage is not None and (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (
        6,
        9,
        15,
    )
    assert response.model_version == "gemini-x" and response.response_id
    count = await client.aio.models.count_tokens(model="gemini-x", contents=HI)
    assert count.total_tokens == 6
    assert mock.requests[0].path == "/v1/models/gemini-x:generateContent"  # the SDK 3.x default version
    assert mock.requests[0].headers["x-goog-api-key"] == KEY


async def test_stream(client: genai.Client, mock: MockUpstream) -> None:
    chunks = [c async for c in await client.aio.models.generate_content_stream(model="gemini-x", contents=HI)]
    assert len(chunks) == 9 and "".join(c.text or "" for c in chunks) == REPLY_TEXT
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert [c.usage_metadata.candidates_token_count for c in chunks] == list(range(1, 10))  # type: ignore[union-attr]
    assert mock.requests[0].query == {"alt": "sse"}


async def test_limit_and_stop_sequences(client: genai.Client) -> None:
    cut = await client.aio.models.generate_content(model="g", contents=HI, config=config(max_output_tokens=3))
    assert cut.text == "This is a" and cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS  # type: ignore[index]
    stopped = await client.aio.models.generate_content(model="g", contents=HI, config=config(stop_sequences=["mock"]))
    assert stopped.text == "This is a " and stopped.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]


@pytest.mark.parametrize("streamed", [False, True])
async def test_function_call_then_response(client: genai.Client, streamed: bool) -> None:
    tools = config(tools=[types.Tool(function_declarations=[WEATHER, TIME])])
    if streamed:
        stream = await client.aio.models.generate_content_stream(model="g", contents=HI, config=tools)
        calls = [call async for chunk in stream for call in chunk.function_calls or []]
    else:
        calls = (await client.aio.models.generate_content(model="g", contents=HI, config=tools)).function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "x", "days": 1})]
    contents: list[Any] = [
        types.Content(role="user", parts=[types.Part(text=HI)]),
        types.Content(role="model", parts=[types.Part(function_call=calls[0])]),
        types.Content(
            role="user", parts=[types.Part.from_function_response(name="get_weather", response={"sky": "sunny"})]
        ),
    ]
    answer = await client.aio.models.generate_content(model="g", contents=contents, config=tools)
    assert answer.text == 'The tool returned: {"sky":"sunny"}'


async def test_forced_and_parallel_function_calls(client: genai.Client) -> None:
    forced = config(
        tools=[types.Tool(function_declarations=[WEATHER, TIME])],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"]
            )
        ),
    )
    response = await client.aio.models.generate_content(model="g", contents=HI, config=forced)
    assert [c.name for c in response.function_calls or []] == ["get_time"]
    both = config(tools=[types.Tool(function_declarations=[WEATHER, TIME])])
    response = await client.aio.models.generate_content(model="g-parallel", contents=HI, config=both)
    assert [c.name for c in response.function_calls or []] == ["get_weather", "get_time"]


async def test_thoughts(client: genai.Client) -> None:
    thinking = config(thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024))
    response = await client.aio.models.generate_content(model="g", contents=HI, config=thinking)
    thought, answer = response.candidates[0].content.parts  # type: ignore[index,union-attr,misc]
    assert thought.thought is True and thought.text == THINKING_TEXT
    assert answer.text == REPLY_TEXT and answer.thought_signature
    assert response.usage_metadata.thoughts_token_count == len(THINKING_TEXT.split(" "))  # type: ignore[union-attr]
    stream = await client.aio.models.generate_content_stream(model="g", contents=HI, config=thinking)
    parts = [p async for c in stream for p in c.candidates[0].content.parts]  # type: ignore[index,union-attr]
    assert parts[0].thought is True and parts[1].thought_signature == answer.thought_signature


async def test_cache_hit(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(model="g-cache-hit", contents="y" * 400)
    usage = response.usage_metadata
    assert usage is not None and (usage.prompt_token_count, usage.cached_content_token_count) == (103, 51)


async def test_safety_blocks(client: genai.Client) -> None:
    blocked = await client.aio.models.generate_content(model="g-safety", contents=HI)
    candidate = blocked.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.SAFETY and candidate.content is None and blocked.text is None
    prompt = await client.aio.models.generate_content(model="g-blocked-prompt", contents=HI)
    assert prompt.candidates is None and prompt.prompt_feedback.block_reason == types.BlockedReason.SAFETY  # type: ignore[union-attr]


async def test_errors_raise_the_sdk_classes(client: genai.Client, mock: MockUpstream, http: httpx.AsyncClient) -> None:
    with pytest.raises(errors.ClientError) as limited:
        await client.aio.models.generate_content(model="g-fail-429", contents=HI)
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(errors.ServerError) as unavailable:
        await client.aio.models.generate_content(model="g-fail-503", contents=HI)
    assert unavailable.value.status == "UNAVAILABLE"
    with pytest.raises(errors.ServerError):
        stream = await client.aio.models.generate_content_stream(model="g-stream-error", contents=HI)
        async for _ in stream:
            pass
    wrong = sdk(mock, http, key="wrong")
    with pytest.raises(errors.ClientError) as invalid:
        await wrong.aio.models.generate_content(model="g", contents=HI)
    assert invalid.value.status == "INVALID_ARGUMENT"


async def test_v1beta_and_model_list(mock: MockUpstream, http: httpx.AsyncClient) -> None:
    client = sdk(mock, http, api_version="v1beta")
    response = await client.aio.models.generate_content(model="g", contents=HI)
    assert response.text == REPLY_TEXT and mock.requests[-1].path == "/v1beta/models/g:generateContent"
    names = [m.name async for m in await client.aio.models.list()]
    assert names == [f"models/{m}" for m in MockOptions().models]


async def test_raw_framing(mock: MockUpstream) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": HI}]}], "generationConfig": {"maxOutputTokens": 2}}
    async with httpx.AsyncClient(base_url=mock.origin, headers={"x-goog-api-key": KEY}) as raw:
        sse = (await raw.post("/v1beta/models/g:streamGenerateContent?alt=sse", json=body)).content
        array = (await raw.post("/v1beta/models/g:streamGenerateContent", json=body)).content
        listed = (await raw.get("/v1beta/models")).json()
    events = sse.split(b"\r\n\r\n")
    assert events[-1] == b"" and len(events) == 3 and all(e.startswith(b"data: {") for e in events[:-1])
    last = orjson.loads(events[1][6:])
    assert last["candidates"][0] == {
        "content": {"parts": [{"text": "is"}], "role": "model"},
        "finishReason": "MAX_TOKENS",
        "index": 0,
    }
    assert array.startswith(b"[{\n  ") and array.endswith(b"\n]") and array.count(b"\n,\r\n{") == 1
    assert [e["candidates"][0]["content"]["parts"] for e in orjson.loads(array)] == [
        [{"text": "This "}],
        [{"text": "is"}],
    ]
    assert listed["models"][0]["supportedGenerationMethods"] == [
        "generateContent",
        "countTokens",
        "streamGenerateContent",
    ]
