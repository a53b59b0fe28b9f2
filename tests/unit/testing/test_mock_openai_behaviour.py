"""The mock's OpenAI wire: tool calls and results, reasoning, cache and stop sequences, through the ``openai`` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]
TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}, "n": {"type": "number"}, "deep": {"type": "boolean"}},
            "required": ["q", "n", "deep"],
        },
    },
}
OTHER: ChatCompletionToolParam = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}


@pytest_asyncio.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with MockUpstream() as mock, openai.AsyncOpenAI(base_url=mock.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_call_then_result(client: openai.AsyncOpenAI, streamed: bool) -> None:
    if streamed:
        stream = client.chat.completions.stream(model="gpt-x", messages=HI, tools=[TOOL])
        async with stream as events:
            done = await events.get_final_completion()
    else:
        done = await client.chat.completions.create(model="gpt-x", messages=HI, tools=[TOOL])  # type: ignore[assignment]
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "lookup" and call.function.arguments == '{"q":"x","n":1,"deep":true}'  # type: ignore[union-attr]
    follow: list[Any] = [
        *HI,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "42"},
    ]
    answer = await client.chat.completions.create(model="gpt-x", messages=follow, tools=[TOOL])
    assert answer.choices[0].message.content == "The tool returned: 42"


async def test_argument_deltas_come_in_pieces(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-parallel", messages=HI, tools=[TOOL, OTHER], stream=True)
    pieces: dict[int, list[str]] = {}
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            pieces.setdefault(delta.index, []).append(delta.function.arguments or "")  # type: ignore[union-attr]
    assert len(pieces[0]) > 2 and "".join(pieces[0]) == '{"q":"x","n":1,"deep":true}'
    assert "".join(pieces[1]) == "{}"


async def test_forced_and_disabled_tools(client: openai.AsyncOpenAI) -> None:
    forced = await client.chat.completions.create(
        model="gpt-x", messages=HI, tools=[TOOL, OTHER], tool_choice={"type": "function", "function": {"name": "other"}}
    )
    assert [c.function.name for c in forced.choices[0].message.tool_calls or []] == ["other"]  # type: ignore[union-attr]
    none = await client.chat.completions.create(model="gpt-x", messages=HI, tools=[TOOL], tool_choice="none")
    assert none.choices[0].finish_reason == "stop" and none.choices[0].message.tool_calls is None


async def test_reasoning_cache_and_stop(client: openai.AsyncOpenAI) -> None:
    reasoned = await client.chat.completions.create(model="gpt-cache-hit", messages=HI, reasoning_effort="low")
    usage = reasoned.usage
    assert usage is not None and usage.completion_tokens_details is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == len(THINKING_TEXT.split(" "))
    assert (
        usage.completion_tokens == 9 + len(THINKING_TEXT.split(" ")) and usage.prompt_tokens_details.cached_tokens == 3
    )
    stopped = await client.chat.completions.create(model="gpt-x", messages=HI, stop=["mock"])
    assert stopped.choices[0].message.content == "This is a " and stopped.choices[0].finish_reason == "stop"


async def test_faults(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.chat.completions.create(model="gpt-prompt-too-long", messages=HI)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-fail-404", messages=HI)
    with pytest.raises(openai.APIError, match="keyrelay mock fault injection"):
        async for _ in await client.chat.completions.create(model="gpt-stream-error", messages=HI, stream=True):
            pass
    filtered = await client.chat.completions.create(model="gpt-safety", messages=HI)
    assert filtered.choices[0].finish_reason == "content_filter" and filtered.choices[0].message.content is None
