"""The mock's OpenAI Responses wire, judged by the official ``openai`` SDK and by the golden streams of the real API.

Also the structured output (``json_schema``) of every wire: Chat Completions, Responses, Anthropic and Gemini.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import types
from openai.types.responses import CustomToolParam, FunctionToolParam, Response, ResponseInputParam
from pydantic import BaseModel

from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import (
    CUSTOM_TOOL_INPUT,
    REPLY_TEXT,
    MockOptions,
    MockUpstream,
    count_responses_tokens,
)
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT, Turn, plan_reply
from keyrelay.testing.mock_upstream.responses_render import OBFUSCATION_BLOCK, obfuscation
from keyrelay.testing.poll import wait_until
from tests.responses_golden import ANY, event_shape, event_types, golden, json_shape, sse_events

HI = "Hello there"  # 11 bytes -> ceil(11/4) + 3 = 6 tokens
THINKING_WORDS = len(THINKING_TEXT.split(" "))
LOOKUP: FunctionToolParam = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up.",
    "parameters": {
        "type": "object",
        "properties": {"q": {"type": "string"}, "n": {"type": "number"}, "deep": {"type": "boolean"}},
        "required": ["q", "n", "deep"],
        "additionalProperties": False,
    },
    "strict": True,
}
OTHER: FunctionToolParam = {"type": "function", "name": "other", "parameters": {"type": "object"}, "strict": False}
CODE_EXEC: CustomToolParam = {"type": "custom", "name": "code_exec", "description": "Executes arbitrary Python code."}
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
PERSON_JSON = '{"name":"x","age":1,"tags":[]}'


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


async def _stream(http: httpx.AsyncClient, body: dict[str, Any]) -> bytes:
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return b"".join([part async for part in response.aiter_bytes()])


def _data(sse: bytes) -> list[dict[str, Any]]:
    return [data for _, data in sse_events(sse)]


# ---------------------------------------------------------------------------------------------------------------------
# The official shapes
# ---------------------------------------------------------------------------------------------------------------------


GOLDEN_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("text.sse", {}, "gpt-x"),
    ("function_call.sse", {"tools": [LOOKUP]}, "gpt-x"),
    ("custom_tool_call.sse", {"tools": [CODE_EXEC], "reasoning": {"effort": "medium"}}, "gpt-x"),
    ("reasoning.sse", {"reasoning": {"effort": "low", "summary": "auto"}}, "gpt-x"),
    ("incomplete.sse", {"max_output_tokens": 16}, "gpt-x"),
    ("failed.sse", {}, "gpt-stream-error"),
]


@pytest.mark.parametrize(("name", "extra", "model"), GOLDEN_CASES, ids=[case[0] for case in GOLDEN_CASES])
async def test_streams_have_the_official_shape(
    mock: MockUpstream, http: httpx.AsyncClient, name: str, extra: dict[str, Any], model: str
) -> None:
    mock.options.reply_words = 20  # more than 16 words: max_output_tokens 16 cuts the reply
    sse = await _stream(http, {"model": model, "input": HI, **extra})
    assert event_shape(sse) == event_shape(golden(name))
    events = _data(sse)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [name for name, _ in sse_events(sse)] == [event["type"] for event in events]
    assert b"[DONE]" not in sse and sse.endswith(b"\n\n")


@pytest.mark.parametrize(
    ("name", "extra"), [("text.response.json", {}), ("function_call.response.json", {"tools": [LOOKUP]})]
)
async def test_objects_have_the_official_shape(http: httpx.AsyncClient, name: str, extra: dict[str, Any]) -> None:
    response = await http.post("/v1/responses", json={"model": "gpt-x", "input": HI, **extra})
    assert response.status_code == 200 and response.headers["x-request-id"].startswith("req_")
    assert json_shape(response.json()) == json_shape(orjson.loads(golden(name)))


def test_golden_files_are_well_formed() -> None:
    for name in ("text", "function_call", "custom_tool_call", "reasoning", "incomplete", "failed"):
        sse = golden(f"{name}.sse")
        events = _data(sse)
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        types_ = event_types(sse)
        assert types_[:2] == ["response.created", "response.in_progress"]
        terminals = [t for t in types_ if t in ("response.completed", "response.incomplete", "response.failed")]
        assert terminals == [types_[-1]]
        assert all("obfuscation" in e for e in events if e["type"].endswith(".delta"))


def test_the_shape_ignores_values_and_repetition_not_keys() -> None:
    one = b'event: a\ndata: {"type":"a","x":1,"l":[{"k":1},{"k":2}]}\n\n'
    other = (
        b'event: a\r\ndata: {"type":"a","x":"y","l":[{"k":3}]}\r\n\r\n'
        b'event: a\r\ndata: {"type":"a","x":2,"l":[]}\r\n\r\n'
    )
    assert event_shape(one) == [("a", {"type": None, "x": None, "l": [{"k": None}]})]
    assert event_shape(other) == [
        ("a", {"type": None, "x": None, "l": [{"k": None}]}),
        ("a", {"type": None, "x": None, "l": []}),
    ]
    assert json_shape({"metadata": {"who": "me"}, "a": {"b": None}}) == {"metadata": ANY, "a": {"b": None}}
    assert json_shape({"a": 1}) != json_shape({"a": {}})


# ---------------------------------------------------------------------------------------------------------------------
# Through the SDK
# ---------------------------------------------------------------------------------------------------------------------


async def test_plain_response(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt-x", input=HI, instructions="Be brief.", metadata={"k": "v"})
    assert response.output_text == REPLY_TEXT and response.status == "completed"
    assert response.id.startswith("resp_") and response.object == "response" and response.model == "gpt-x"
    (message,) = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"}
    assert response.usage is not None
    # "Be brief." (9 bytes) + "Hello there" (11 bytes): ceil(20 / 4) + 3 * 1 item.
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (8, 9, 17)
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.input_tokens_details.cached_tokens == 0
    recorded = mock.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", "/v1/responses") and recorded.body["input"] == HI


async def test_stream_accumulates_to_the_same_response(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model="gpt-x", input=HI) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert len(deltas) == 9 and "".join(deltas) == REPLY_TEXT
    assert final.output_text == REPLY_TEXT and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 9


@pytest.mark.parametrize("streamed", [False, True])
async def test_function_call_then_its_output(client: openai.AsyncOpenAI, streamed: bool) -> None:
    first: Response
    if streamed:
        async with client.responses.stream(model="gpt-x", input=HI, tools=[LOOKUP]) as stream:
            first = await stream.get_final_response()
    else:
        first = await client.responses.create(model="gpt-x", input=HI, tools=[LOOKUP])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "lookup" and call.status == "completed"
    assert call.arguments == '{"q":"x","n":1,"deep":true}'
    assert call.call_id.startswith("call_") and (call.id or "").startswith("fc_")
    follow: ResponseInputParam = [
        {"role": "user", "content": HI},
        call.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
    ]
    answer = await client.responses.create(model="gpt-x", input=follow, tools=[LOOKUP])
    assert answer.output_text == "The tool returned: 42"


async def test_custom_tool_call_then_its_output(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model="gpt-x", input=HI, tools=[CODE_EXEC]) as stream:
        inputs = [event.delta async for event in stream if event.type == "response.custom_tool_call_input.delta"]
        first = await stream.get_final_response()
    (call,) = first.output
    assert call.type == "custom_tool_call" and call.name == "code_exec" and call.input == CUSTOM_TOOL_INPUT
    assert inputs == [CUSTOM_TOOL_INPUT] and (call.id or "").startswith("ctc_")
    follow: ResponseInputParam = [
        {"role": "user", "content": HI},
        call.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": [{"type": "input_text", "text": "ok"}]},
    ]
    answer = await client.responses.create(model="gpt-x", input=follow, tools=[CODE_EXEC])
    assert answer.output_text == "The tool returned: ok"


async def test_forced_disabled_and_parallel_tools(client: openai.AsyncOpenAI) -> None:
    forced = await client.responses.create(
        model="gpt-x", input=HI, tools=[LOOKUP, OTHER], tool_choice={"type": "function", "name": "other"}
    )
    assert [item.type == "function_call" and item.name for item in forced.output] == ["other"]
    none = await client.responses.create(model="gpt-x", input=HI, tools=[LOOKUP], tool_choice="none")
    assert none.output_text == REPLY_TEXT and none.tool_choice == "none"
    both = await client.responses.create(model="gpt-parallel", input=HI, tools=[LOOKUP, OTHER])
    assert [getattr(item, "name", None) for item in both.output] == ["lookup", "other"]
    assert len({getattr(item, "call_id", None) for item in both.output}) == 2


async def test_reasoning_summary_and_encrypted_content(client: openai.AsyncOpenAI) -> None:
    shown = await client.responses.create(
        model="gpt-x",
        input=HI,
        reasoning={"effort": "high", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )
    reasoning, message = shown.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [part.text for part in reasoning.summary] == [THINKING_TEXT] and reasoning.encrypted_content
    assert message.type == "message" and shown.output_text == REPLY_TEXT
    assert shown.usage is not None and shown.usage.output_tokens_details.reasoning_tokens == THINKING_WORDS
    assert shown.usage.output_tokens == 9 + THINKING_WORDS
    assert shown.reasoning is not None and shown.reasoning.effort == "high"

    hidden = await client.responses.create(model="gpt-x", input=HI, reasoning={"effort": "low"})
    assert hidden.output[0].type == "reasoning" and hidden.output[0].summary == []
    assert hidden.output[0].encrypted_content is None
    for effort in ("minimal", "none"):
        quick = await client.responses.create(model="gpt-x", input=HI, reasoning={"effort": effort})
        assert [item.type for item in quick.output] == ["message"]

    async with client.responses.stream(
        model="gpt-x", input=HI, reasoning={"effort": "low", "summary": "concise"}
    ) as stream:
        summary = [e.delta async for e in stream if e.type == "response.reasoning_summary_text.delta"]
        final = await stream.get_final_response()
    assert "".join(summary) == THINKING_TEXT and len(summary) == THINKING_WORDS
    assert final.output[0].type == "reasoning" and final.output[0].summary[0].text == THINKING_TEXT


async def test_reasoning_items_in_the_input_are_accepted(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="gpt-x", input=HI, reasoning={"effort": "low", "summary": "auto"})
    items: Any = [
        {"role": "user", "content": HI},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And?"}]},
    ]
    again = await client.responses.create(model="gpt-x", input=items)
    assert again.output_text == REPLY_TEXT


async def test_max_output_tokens_makes_an_incomplete_response(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.options.reply_words = 20
    cut = await client.responses.create(model="gpt-x", input=HI, max_output_tokens=16)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens" and cut.max_output_tokens == 16
    assert len(cut.output_text.split(" ")) == 16 and cut.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert cut.usage is not None and cut.usage.output_tokens == 16
    # The thinking counts in the limit: 16 - 12 thinking tokens leave 4 words.
    thought = await client.responses.create(model="gpt-x", input=HI, max_output_tokens=16, reasoning={"effort": "low"})
    assert [item.type for item in thought.output] == ["reasoning", "message"]
    assert thought.output_text == "This is a mock" and thought.status == "incomplete"


async def test_structured_output_json_schema(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="gpt-x",
        input=HI,
        tools=[LOOKUP],
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA, "strict": True}},
    )
    assert response.output_text == PERSON_JSON and response.status == "completed"
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    parsed = await client.responses.parse(model="gpt-x", input=HI, text_format=Person)
    assert parsed.output_parsed == Person(name="x", age=1, tags=[])
    async with client.responses.stream(model="gpt-x", input=HI, text_format=Person) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == [PERSON_JSON] and final.output_parsed == Person(name="x", age=1, tags=[])


async def test_cache_hit_and_token_rule(client: openai.AsyncOpenAI) -> None:
    cached = await client.responses.create(model="gpt-cache-hit", input=HI)
    assert cached.usage is not None and cached.usage.input_tokens_details.cached_tokens == 3
    assert count_responses_tokens({"input": HI}) == 6
    items: list[Any] = [
        {"role": "system", "content": "Be brief."},  # 9 bytes
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": HI}, {"type": "input_image"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "ignored"}]},  # 0 bytes
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},  # 0 bytes
        {"type": "function_call_output", "call_id": "c1", "output": "12345"},  # 5 bytes
    ]
    # "abc" + "Be brief." + "Hello there" + "12345" = 28 bytes
    assert count_responses_tokens({"instructions": "abc", "input": items}) == 7 + 3 * 5
    response = await client.responses.create(model="gpt-x", instructions="abc", input=items)
    assert response.usage is not None and response.usage.input_tokens == 22
    assert response.output_text == "The tool returned: 12345"


async def test_safety_is_an_incomplete_response(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    filtered = await client.responses.create(model="gpt-safety", input=HI)
    assert filtered.status == "incomplete" and filtered.output == []
    assert filtered.incomplete_details is not None and filtered.incomplete_details.reason == "content_filter"
    sse = await _stream(http, {"model": "gpt-blocked-prompt", "input": HI})
    assert event_types(sse) == ["response.created", "response.in_progress", "response.incomplete"]


async def test_obfuscation(http: httpx.AsyncClient) -> None:
    on = _data(await _stream(http, {"model": "gpt-x", "input": HI, "tools": [LOOKUP]}))
    deltas = [e for e in on if e["type"].endswith(".delta")]
    assert deltas and all(len(e["delta"] + e["obfuscation"]) % OBFUSCATION_BLOCK == 0 for e in deltas)
    assert obfuscation("Why") == obfuscation("Why") and len(obfuscation("Why")) == 13 and obfuscation("Why").isalnum()
    off = _data(await _stream(http, {"model": "gpt-x", "input": HI, "stream_options": {"include_obfuscation": False}}))
    assert not any("obfuscation" in e for e in off)


async def test_echoed_settings(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    response = await client.responses.create(
        model="gpt-x",
        input=HI,
        temperature=0.5,
        top_p=0.9,
        store=False,
        parallel_tool_calls=False,
        prompt_cache_key="k1",
        previous_response_id="resp_earlier",
        text={"verbosity": "low"},
        tools=[LOOKUP, CODE_EXEC],
    )
    assert (response.temperature, response.top_p, response.to_dict()["store"]) == (0.5, 0.9, False)
    assert response.parallel_tool_calls is False and response.prompt_cache_key == "k1"
    assert response.previous_response_id == "resp_earlier" and response.service_tier == "default"
    assert response.text is not None and response.text.verbosity == "low"
    assert [tool.type for tool in response.tools] == ["function", "custom"]
    raw = (await http.post("/v1/responses", json={"model": "gpt-x", "input": HI, "tools": [CODE_EXEC]})).json()
    assert raw["tools"] == [{**CODE_EXEC, "format": {"type": "text"}}] and raw["billing"] == {"payer": "developer"}


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------

CALL = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
INVALID: list[tuple[dict[str, Any], str, str | None, str | None]] = [
    ({"input": HI}, "Missing required parameter: 'model'.", "model", "missing_required_parameter"),
    ({"model": "m"}, "Missing required parameter: 'input'.", "input", "missing_required_parameter"),
    ({"model": "m", "input": {"a": 1}}, "but got an object instead.", "input", "invalid_type"),
    ({"model": "m", "input": []}, "empty array", "input", "empty_array"),
    (
        {"model": "m", "input": HI, "max_output_tokens": 5},
        "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 5 instead.",
        "max_output_tokens",
        "integer_below_min_value",
    ),
    ({"model": "m", "input": HI, "max_output_tokens": "9"}, "expected an integer", "max_output_tokens", "invalid_type"),
    ({"model": "m", "input": HI, "temperature": 3}, "Expected a value <= 2, but got 3", "temperature", None),
    ({"model": "m", "input": HI, "top_p": -1}, "decimal below minimum value", "top_p", "decimal_below_min_value"),
    ({"model": "m", "input": [{"role": "bot", "content": "x"}]}, "Invalid value: 'bot'.", "input[0].role", None),
    ({"model": "m", "input": [{"role": "user"}]}, "'input[0].content'", "input[0].content", None),
    ({"model": "m", "input": [CALL]}, "No tool output found for function call call_1.", "input", None),
    (
        {"model": "m", "input": [OUTPUT]},
        "No tool call found for function call output with call_id call_1.",
        "input",
        None,
    ),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "call_id", "input[0].call_id", None),
    ({"model": "m", "input": HI, "tools": [{"type": "function"}]}, "'tools[0].name'", "tools[0].name", None),
    (
        {"model": "m", "input": HI, "tools": [LOOKUP], "tool_choice": {"type": "function", "name": "nope"}},
        "Tool choice 'nope' not found in 'tools' parameter.",
        "tool_choice",
        None,
    ),
    ({"model": "m", "input": HI, "tool_choice": "required"}, "'required'", "tool_choice", None),
    ({"model": "m", "input": HI, "tool_choice": "always"}, "Invalid value: 'always'.", "tool_choice", None),
    (
        {"model": "m", "input": HI, "text": {"format": {"type": "json_schema", "schema": {}}}},
        "Missing required parameter: 'text.format.name'.",
        "text.format.name",
        None,
    ),
    ({"model": "m", "input": HI, "text": {"format": {"type": "json_object"}}}, "word 'json'", "input", None),
    ({"model": "m", "input": HI, "text": {"format": {"type": "yaml"}}}, "'yaml'", "text.format.type", None),
    ({"model": "m", "input": HI, "reasoning": {"effort": "max!"}}, "'max!'", "reasoning.effort", "invalid_value"),
    ({"model": "m", "input": HI, "reasoning": {"summary": "all"}}, "'all'", "reasoning.summary", "invalid_value"),
    ({"model": "m", "input": HI, "stream_options": {}}, "only allowed when 'stream'", "stream_options", None),
]


@pytest.mark.parametrize(("body", "message", "param", "code"), INVALID)
async def test_validation_errors(
    http: httpx.AsyncClient, body: dict[str, Any], message: str, param: str | None, code: str | None
) -> None:
    response = await http.post("/v1/responses", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert message in error["message"] and error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_valid_requests_the_checks_let_through(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    # json_object with "json" somewhere, tool outputs answering calls of an earlier (stored) response.
    response = await client.responses.create(
        model="m", input="Answer in JSON.", text={"format": {"type": "json_object"}}
    )
    assert response.output_text == REPLY_TEXT
    stored = await http.post("/v1/responses", json={"model": "m", "input": [OUTPUT], "previous_response_id": "resp_1"})
    assert stored.status_code == 200 and stored.json()["output"][0]["content"][0]["text"] == "The tool returned: 42"
    not_json = await http.post("/v1/responses", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "could not parse the JSON body" in not_json.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------------------------


async def test_error_faults(mock: MockUpstream, client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model="gpt-fail-429", input=HI)
    assert limited.value.response.headers["retry-after"] == "1" and limited.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as failed:
        await client.responses.create(model="gpt-fail-503", input=HI, stream=True)
    assert failed.value.status_code == 503
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="gpt-fail-404", input=HI)
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.responses.create(model="gpt-prompt-too-long", input=HI)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "input"
    moved = await http.post("/v1/responses", json={"model": "gpt-redirect-301", "input": HI})
    assert moved.status_code == 301 and moved.headers["location"].startswith("https://")

    mock.options.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="gpt-x", input=HI)
    mock.options.fail_status = None
    mock.options.key_status = {"x": 429}
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="gpt-x", input=HI)
    mock.options.key_status = {}
    assert (await client.responses.create(model="gpt-x", input=HI)).output_text == REPLY_TEXT


async def test_expected_key() -> None:
    async with MockUpstream(MockOptions(expected_key="sk-good")) as upstream:
        async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-bad", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as caught:
                await bad.responses.create(model="gpt-x", input=HI)
            assert caught.value.code == "invalid_api_key"
        async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-good", max_retries=0) as good:
            assert (await good.responses.create(model="gpt-x", input=HI)).output_text == REPLY_TEXT


async def test_stream_error_and_its_early_form(http: httpx.AsyncClient, client: openai.AsyncOpenAI) -> None:
    sse = await _stream(http, {"model": "gpt-stream-error", "input": HI})
    assert event_types(sse) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.failed",
    ]
    failed = _data(sse)[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error" and failed["usage"] is None
    early = await _stream(http, {"model": "gpt-early-stream-error", "input": HI})
    assert event_types(early) == ["response.created", "response.in_progress", "response.failed"]
    stream = await client.responses.create(model="gpt-stream-error", input=HI, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "response.failed" and kinds.count("response.output_text.delta") == 3


async def test_cut_stream_and_its_early_form(client: openai.AsyncOpenAI) -> None:
    received: list[str] = []
    stream = await client.responses.create(model="gpt-cut-stream", input=HI, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            received.append(event.type)
    assert received.count("response.output_text.delta") == 3 and received[-1] == "response.output_text.delta"
    await stream.close()
    received.clear()
    stream = await client.responses.create(model="gpt-early-cut-stream", input=HI, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            received.append(event.type)
    assert received == ["response.created", "response.in_progress"]
    await stream.close()
    with pytest.raises(openai.APIConnectionError):
        await client.responses.create(model="gpt-cut-stream", input=HI)


async def test_no_usage(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    response = await client.responses.create(model="gpt-no-usage", input=HI)
    assert response.usage is None and response.output_text == REPLY_TEXT
    sse = await _stream(http, {"model": "gpt-no-usage", "input": HI})
    assert _data(sse)[-1]["response"]["usage"] is None


async def test_held_slow_and_paced(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    held = asyncio.ensure_future(client.responses.create(model="gpt-held", input=HI))
    await wait_until(lambda: len(mock.state.held) == 1, what="the held request arrived")
    assert not held.done()
    mock.state.release(0)
    assert (await held).output_text == REPLY_TEXT

    clock = FakeClock()
    mock.options.sleep = clock.sleep
    started = clock.monotonic()
    await client.responses.create(model="gpt-slow-ttfb", input=HI)
    assert clock.monotonic() - started == pytest.approx(0.1)

    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    mock.options.sleep = pause
    async with client.responses.stream(model="gpt-paced", input=HI) as stream:
        events = [event async for event in stream]
    # created, in_progress, item added, part added, 9 deltas, text done, part done, item done, completed: 17 events.
    assert len(events) == 17 and pauses == [0.02] + [0.005] * 16


async def test_framing_crlf(http: httpx.AsyncClient) -> None:
    sse = await _stream(http, {"model": "gpt-framing-crlf", "input": HI})
    assert b"\r\n\r\n" in sse and b"\n\n" not in sse.replace(b"\r\n", b"")
    assert event_shape(sse) == event_shape(golden("text.sse"))


# ---------------------------------------------------------------------------------------------------------------------
# Structured output on every wire
# ---------------------------------------------------------------------------------------------------------------------


def test_plan_for_a_json_schema() -> None:
    plan = plan_reply(Turn(model="m", prompt_tokens=6, json_schema=PERSON_SCHEMA, tools=(), stop=("x",)))
    assert (plan.pieces, plan.finish, plan.output_tokens, plan.tool_calls) == ([PERSON_JSON], "stop", 1, [])
    thought = plan_reply(Turn(model="m", prompt_tokens=6, json_schema=PERSON_SCHEMA, thinking=True, limit=100))
    assert thought.thinking == THINKING_TEXT and thought.pieces == [PERSON_JSON]
    used_up = plan_reply(Turn(model="m", prompt_tokens=6, json_schema=PERSON_SCHEMA, thinking=True, limit=12))
    assert used_up.pieces == [] and used_up.finish == "length"
    plain = plan_reply(Turn(model="m", prompt_tokens=6, json_schema="not a schema"))
    assert plain.text == REPLY_TEXT


async def test_json_schema_on_chat_completions(client: openai.AsyncOpenAI) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    completion = await client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": HI}], response_format=response_format, tools=[]
    )
    assert completion.choices[0].message.content == PERSON_JSON and completion.choices[0].finish_reason == "stop"
    parsed = await client.chat.completions.parse(
        model="gpt-x", messages=[{"role": "user", "content": HI}], response_format=Person
    )
    assert parsed.choices[0].message.parsed == Person(name="x", age=1, tags=[])
    plain = await client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": HI}], response_format={"type": "text"}
    )
    assert plain.choices[0].message.content == REPLY_TEXT


async def test_json_schema_on_anthropic(mock: MockUpstream) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock.origin, api_key="x", max_retries=0) as sdk:
        message = await sdk.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=[{"role": "user", "content": HI}],
            output_config={"format": {"type": "json_schema", "schema": PERSON_SCHEMA}},
        )
        assert message.content[0].type == "text" and message.content[0].text == PERSON_JSON
        assert message.stop_reason == "end_turn" and message.usage.output_tokens == 1
        async with sdk.messages.stream(
            model="claude-x",
            max_tokens=100,
            messages=[{"role": "user", "content": HI}],
            output_config={"format": {"type": "json_schema", "schema": PERSON_SCHEMA}},
        ) as stream:
            texts = [text async for text in stream.text_stream]
        assert texts == [PERSON_JSON]


async def test_json_schema_on_gemini(mock: MockUpstream) -> None:
    async with httpx.AsyncClient() as transport:
        options = types.HttpOptions(base_url=mock.origin, httpx_async_client=transport)
        client = genai.Client(api_key="x", http_options=options)
        by_json_schema = await client.aio.models.generate_content(
            model="gemini-x",
            contents=HI,
            config=types.GenerateContentConfig(
                response_mime_type="application/json", response_json_schema=PERSON_SCHEMA
            ),
        )
        assert by_json_schema.text == PERSON_JSON
        schema = types.Schema(
            type=types.Type.OBJECT,
            properties={"name": types.Schema(type=types.Type.STRING), "age": types.Schema(type=types.Type.INTEGER)},
            required=["name", "age"],
        )
        chunks = [
            chunk.text
            async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-x",
                contents=HI,
                config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=schema),
            )
        ]
        assert chunks == ['{"name":"x","age":1}']
