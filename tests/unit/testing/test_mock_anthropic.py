"""The mock's Anthropic Messages wire, judged by the official ``anthropic`` SDK (and raw bytes for the framing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
import pytest_asyncio
from anthropic.types import MessageParam, ToolParam

from keyrelay.testing.mock_upstream import REPLY_TEXT, MockOptions, MockUpstream
from keyrelay.testing.mock_upstream.anthropic import PROMPT_TOO_LONG_MESSAGE
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT

KEY = "sk-ant-mock"
HI: list[MessageParam] = [{"role": "user", "content": "Hello there"}]  # 11 bytes -> ceil(11/4) + 3 = 6 tokens
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "days", "unit"],
    },
}
TIME: ToolParam = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockOptions(expected_key=KEY)) as upstream:
        yield upstream


@pytest_asyncio.fixture
async def client(mock: MockUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=mock.origin, api_key=KEY, max_retries=0) as sdk:
        yield sdk


async def test_plain_message(client: anthropic.AsyncAnthropic, mock: MockUpstream) -> None:
    message = await client.messages.create(model="claude-x", max_tokens=100, messages=HI)
    assert message.content[0].type == "text" and message.content[0].text == REPLY_TEXT
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 9)
    assert message.id.startswith("msg_") and message.model == "claude-x"
    count = await client.messages.count_tokens(model="claude-x", messages=HI)
    assert count.input_tokens == 6
    assert mock.requests[0].headers["authorization"] == f"Bearer {KEY}"  # the SDK 2.x form of the key
    assert "anthropic-version" in mock.requests[0].headers


async def test_stream_accumulates_to_the_same_message(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(model="claude-x", max_tokens=100, messages=HI) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) == 9 and "".join(texts) == REPLY_TEXT
    assert final.content[0].type == "text" and final.content[0].text == REPLY_TEXT
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 9 and final.usage.input_tokens == 6


async def test_max_tokens_and_stop_sequences(client: anthropic.AsyncAnthropic) -> None:
    cut = await client.messages.create(model="claude-x", max_tokens=3, messages=HI)
    assert cut.stop_reason == "max_tokens" and cut.content[0].type == "text" and cut.content[0].text == "This is a"
    stopped = await client.messages.create(model="claude-x", max_tokens=99, messages=HI, stop_sequences=["mock"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "mock"
    assert stopped.content[0].type == "text" and stopped.content[0].text == "This is a "
    async with client.messages.stream(model="c", max_tokens=99, messages=HI, stop_sequences=["mock"]) as stream:
        final = await stream.get_final_message()
    assert final.stop_sequence == "mock" and final.content[0].text == "This is a "  # type: ignore[union-attr]


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_call_then_tool_result(client: anthropic.AsyncAnthropic, streamed: bool) -> None:
    if streamed:
        async with client.messages.stream(model="claude-x", max_tokens=99, messages=HI, tools=[WEATHER]) as stream:
            message = await stream.get_final_message()
    else:
        message = await client.messages.create(model="claude-x", max_tokens=99, messages=HI, tools=[WEATHER])
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    assert call.input == {"city": "x", "days": 1, "unit": "c"}
    follow_up: list[MessageParam] = [
        *HI,
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},  # type: ignore[list-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ]
    answer = await client.messages.create(model="claude-x", max_tokens=99, messages=follow_up, tools=[WEATHER])
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text" and answer.content[0].text == "The tool returned: sunny"


async def test_forced_and_parallel_tool_calls(client: anthropic.AsyncAnthropic) -> None:
    forced = await client.messages.create(
        model="claude-x",
        max_tokens=99,
        messages=HI,
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_time"},
    )
    assert [b.name for b in forced.content if b.type == "tool_use"] == ["get_time"]
    async with client.messages.stream(model="claude-parallel", max_tokens=99, messages=HI, tools=[WEATHER, TIME]) as s:
        both = await s.get_final_message()
    assert [(b.name, b.input) for b in both.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "x", "days": 1, "unit": "c"}),
        ("get_time", {}),
    ]
    none = await client.messages.create(
        model="claude-x", max_tokens=99, messages=HI, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert none.stop_reason == "end_turn"


async def test_thinking_block_with_signature(client: anthropic.AsyncAnthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    async with client.messages.stream(model="claude-x", max_tokens=2048, messages=HI, thinking=thinking) as stream:
        final = await stream.get_final_message()
    block, text = final.content
    assert block.type == "thinking" and block.thinking == THINKING_TEXT and block.signature
    assert text.type == "text" and text.text == REPLY_TEXT
    plain = await client.messages.create(model="claude-x", max_tokens=2048, messages=HI, thinking=thinking)
    assert [b.to_dict() for b in plain.content] == [
        {k: v for k, v in b.to_dict().items() if k != "parsed_output"} for b in final.content
    ]
    assert final.usage.output_tokens == 9 + len(THINKING_TEXT.split(" "))


async def test_cache_tokens(client: anthropic.AsyncAnthropic) -> None:
    long: list[MessageParam] = [{"role": "user", "content": "y" * 400}]  # 100 + 3 tokens
    hit = await client.messages.create(model="claude-cache-hit", max_tokens=9, messages=long)
    assert (hit.usage.input_tokens, hit.usage.cache_read_input_tokens, hit.usage.cache_creation_input_tokens) == (
        52,
        51,
        0,
    )
    async with client.messages.stream(model="claude-cache-write", max_tokens=9, messages=long) as stream:
        written = await stream.get_final_message()
    assert (written.usage.input_tokens, written.usage.cache_creation_input_tokens) == (52, 51)


async def test_errors_raise_the_sdk_classes(client: anthropic.AsyncAnthropic, mock: MockUpstream) -> None:
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model="claude-fail-429", max_tokens=9, messages=HI)
    assert limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": limited.value.body["error"]["message"]},  # type: ignore[index]
        "request_id": limited.value.request_id,
    }
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await client.messages.create(model="claude-fail-529", max_tokens=9, messages=HI)
    assert overloaded.value.status_code == 529
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        await client.messages.create(model="claude-prompt-too-long", max_tokens=9, messages=HI)
    with pytest.raises(anthropic.AuthenticationError):
        await client.with_options(api_key="wrong").messages.create(model="claude-x", max_tokens=9, messages=HI)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async with client.messages.stream(model="claude-stream-error", max_tokens=99, messages=HI) as stream:
            await stream.get_final_message()
    assert PROMPT_TOO_LONG_MESSAGE == "prompt is too long: 200001 tokens > 200000 maximum"


async def test_version_header_required_and_beta_recorded(mock: MockUpstream) -> None:
    body = {"model": "claude-x", "max_tokens": 9, "messages": HI}
    async with httpx.AsyncClient(base_url=mock.origin) as http:
        r = await http.post("/v1/messages", json=body, headers={"x-api-key": KEY})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "a-1, b-2"}
        r = await http.post("/v1/messages", json=body, headers=headers)
        assert r.status_code == 200
        listed = (await http.get("/v1/models", headers=headers)).json()
    assert mock.requests[1].anthropic_beta == ("a-1", "b-2")
    assert listed["data"][0]["type"] == "model" and listed["has_more"] is False


async def test_models_list_through_the_sdk(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == list(MockOptions().models)


async def test_raw_sse_framing(mock: MockUpstream) -> None:
    body = {"model": "claude-x", "max_tokens": 2, "messages": HI, "stream": True}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=mock.origin) as http:
        raw = (await http.post("/v1/messages", json=body, headers=headers)).content
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    names = [e.split(b"\n")[0] for e in events[:-1]]
    assert names == [
        b"event: message_start",
        b"event: content_block_start",
        b"event: ping",
        b"event: content_block_delta",
        b"event: content_block_delta",
        b"event: content_block_stop",
        b"event: message_delta",
        b"event: message_stop",
    ]
    assert events[2] == b'event: ping\ndata: {"type": "ping"}'
    delta = orjson.loads(events[6].split(b"\ndata: ", 1)[1])
    assert delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {
            "input_tokens": 6,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 2,
        },
    }
    assert events[3] == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"This "}}'
    )
