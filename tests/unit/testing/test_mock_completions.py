"""The mock's legacy text completions (``POST /v1/completions``), judged by the official ``openai`` SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import orjson
import pytest

from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import REPLY_TEXT, MockUpstream, count_completion_tokens

PROMPT = "Say this is a test"  # 18 bytes -> ceil(18/4) = 5 tokens


async def _frames(http: httpx.AsyncClient, body: dict[str, Any]) -> list[bytes]:
    async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        raw = b"".join([part async for part in response.aiter_bytes()])
    assert raw.endswith(b"\n\n") and all(frame.startswith(b"data: ") for frame in raw[:-2].split(b"\n\n"))
    return [frame[len(b"data: ") :] for frame in raw[:-2].split(b"\n\n")]


async def test_plain_completion(mock: MockUpstream, client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    # The mock's clock is fixed: on the wall clock, a second could pass between the reply and the check.
    mock.options.clock = FakeClock(datetime(2026, 3, 4, 5, 6, 7, 800_000, tzinfo=UTC))
    completion = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"
    assert completion.model == "gpt-3.5-turbo-instruct" and completion.created == 1772600767  # whole seconds
    (choice,) = completion.choices
    assert (choice.text, choice.index, choice.logprobs, choice.finish_reason) == (REPLY_TEXT, 0, None, "stop")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        5,
        9,
        14,
    )
    raw = (await http.post("/v1/completions", json={"model": "m", "prompt": PROMPT})).json()
    assert set(raw) == {"id", "object", "created", "model", "choices", "usage"}
    assert set(raw["choices"][0]) == {"text", "index", "logprobs", "finish_reason"}
    assert set(raw["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert mock.requests[-1].path == "/v1/completions"


async def test_max_tokens_defaults_to_16(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.options.reply_words = 30
    default = await client.completions.create(model="m", prompt=PROMPT)
    assert default.choices[0].finish_reason == "length" and len(default.choices[0].text.split(" ")) == 16
    short = await client.completions.create(model="m", prompt=PROMPT, max_tokens=3)
    assert short.choices[0].text == "This is a" and short.usage is not None and short.usage.completion_tokens == 3


async def test_stream_with_usage(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    stream = await client.completions.create(
        model="m", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(texts) == REPLY_TEXT and len(texts) == 10  # 9 pieces, then the finish chunk's ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 14
    frames = await _frames(http, {"model": "m", "prompt": PROMPT})
    assert frames[-1] == b"[DONE]"
    first = orjson.loads(frames[0])
    assert set(first) == {"id", "object", "created", "model", "choices"} and first["object"] == "text_completion"
    assert first["choices"] == [{"text": "This ", "index": 0, "logprobs": None, "finish_reason": None}]
    assert all("usage" not in orjson.loads(frame) for frame in frames[:-1])  # no usage chunk without include_usage


async def test_several_prompts_n_echo_and_stop(client: openai.AsyncOpenAI) -> None:
    many = await client.completions.create(model="m", prompt=["a", "bbbbb"], n=2, echo=True, stop=["mock"])
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert [c.text for c in many.choices] == ["aThis is a "] * 2 + ["bbbbbThis is a "] * 2
    assert {c.finish_reason for c in many.choices} == {"stop"}
    assert many.usage is not None and many.usage.prompt_tokens == 1 + 2 and many.usage.completion_tokens == 4 * 3
    tokens = await client.completions.create(model="m", prompt=[[1, 2, 3], [4]], echo=True)
    assert [c.text for c in tokens.choices] == [REPLY_TEXT, REPLY_TEXT]
    assert tokens.usage is not None and tokens.usage.prompt_tokens == 4
    stream = await client.completions.create(model="m", prompt=["a", "b"], stream=True, echo=True)
    by_index: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    assert by_index == {0: "a" + REPLY_TEXT, 1: "b" + REPLY_TEXT}


def test_token_counting_rule() -> None:
    assert count_completion_tokens(PROMPT) == 5 and count_completion_tokens([7, 8, 9]) == 3
    assert count_completion_tokens("") == 0


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"prompt": PROMPT}, "you must provide a model parameter", None),
        ({"model": "m"}, "Missing required parameter: 'prompt'.", "prompt"),
        ({"model": "m", "prompt": {"a": 1}}, "Invalid type for 'prompt'", "prompt"),
        ({"model": "m", "prompt": []}, "Invalid type for 'prompt'", "prompt"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "Expected a value >= 0, but got -1 instead.", "max_tokens"),
        ({"model": "m", "prompt": "x", "n": 0}, "Expected a value >= 1, but got 0 instead.", "n"),
        ({"model": "m", "prompt": "x", "n": 129}, "Expected a value <= 128", "n"),
        ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "maximum length 4", "stop"),
        ({"model": "m", "prompt": "x", "stop": 3}, "Invalid type for 'stop'", "stop"),
        ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "only allowed", "stream_options"),
    ],
)
async def test_validation_errors(
    http: httpx.AsyncClient, body: dict[str, Any], message: str, param: str | None
) -> None:
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert message in error["message"] and error["param"] == param


async def test_error_faults(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        await client.completions.create(model="m-fail-429", prompt=PROMPT)
    assert limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.completions.create(model="m-prompt-too-long", prompt=PROMPT)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "prompt"
    mock.options.fail_status = 503
    with pytest.raises(openai.InternalServerError):
        await client.completions.create(model="m", prompt=PROMPT)


async def test_stream_faults(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.APIError, match="keyrelay mock fault injection"):
        async for _ in await client.completions.create(model="m-stream-error", prompt=PROMPT, stream=True):
            pass
    frames = await _frames(http, {"model": "m-stream-error", "prompt": PROMPT})
    assert len(frames) == 4 and b"[DONE]" not in frames and b'"error"' in frames[-1]
    early = await _frames(http, {"model": "m-early-stream-error", "prompt": PROMPT})
    assert len(early) == 1 and b'"error"' in early[0]

    received: list[str] = []
    stream = await client.completions.create(model="m-cut-stream", prompt=PROMPT, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].text)
    assert received == ["This ", "is ", "a "]
    await stream.close()
    with pytest.raises(openai.APIConnectionError):
        await client.completions.create(model="m-cut-stream", prompt=PROMPT)


async def test_no_usage_and_safety(client: openai.AsyncOpenAI) -> None:
    bare = await client.completions.create(model="m-no-usage", prompt=PROMPT)
    assert bare.usage is None and bare.choices[0].text == REPLY_TEXT
    stream = await client.completions.create(
        model="m-no-usage", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)
    filtered = await client.completions.create(model="m-safety", prompt=PROMPT)
    assert filtered.choices[0].text == "" and filtered.choices[0].finish_reason == "content_filter"
