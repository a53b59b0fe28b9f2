"""The OpenAI Responses API through keyrelay, with the official ``openai`` SDK, to every upstream kind.

``oa-model`` (``kind: openai``) is a passthrough to the mock's own ``/v1/responses``; ``an-model``, ``ge-model``
and ``oc-model`` (``openai-compatible``) are translated through the canonical types to Messages, Gemini and Chat
Completions. Each kind runs plain text, a stream (read by the SDK's ``responses.stream`` helper, which checks
the events' order and rebuilds the response from them), a function tool then its ``function_call_output`` turn
(whole and streamed), a ``custom`` tool, and ``text.format`` JSON schema; each answer is checked for its usage
and its usage record. The stateless rules (``previous_response_id``, stored-response paths) and the errors a
translation gives are checked once.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keyrelay.testing.mock_upstream import REPLY_TEXT, MockUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import usage_rows
from tests.integration.gateway.test_strange_input import ODD_VALUES, RAW_BODIES
from tests.responses_golden import event_shape, golden, json_shape, sse_events

KINDS = {"oa": "openai", "an": "anthropic", "ge": "gemini", "oc": "openai-compatible"}
PROMPT = "Say hello"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city for some days.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch to the working tree.",
    "format": {"type": "text"},
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
    "required": ["city", "temperature"],
    "additionalProperties": False,
}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: this is about the wire, not the store."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@pytest.fixture
async def client(server: RunningServer, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


def model_of(short: str) -> str:
    return f"{short}-model"


def output_types(response: Any) -> list[str]:
    return [item.type for item in response.output]


async def create(client: openai.AsyncOpenAI, *, stream: bool, **params: Any) -> tuple[Any, str, list[str]]:
    """The final response, the request id and (streamed) the event types, through the SDK."""
    if not stream:
        raw = await client.responses.with_raw_response.create(**params)
        return raw.parse(), raw.headers["x-request-id"], []
    types: list[str] = []
    async with client.responses.stream(**params) as events:
        async for event in events:
            types.append(event.type)
            assert event.sequence_number == len(types) - 1
        final = await events.get_final_response()
        # The helper keeps the HTTP response on its raw stream; it has no public accessor for the headers.
        request_id = events._raw_stream.response.headers["x-request-id"]
    return final, request_id, types


@pytest.mark.parametrize("short", list(KINDS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_plain_text(
    client: openai.AsyncOpenAI, server: RunningServer, mock: MockUpstream, short: str, stream: bool
) -> None:
    response, request_id, types = await create(
        client, stream=stream, model=model_of(short), input=PROMPT, instructions="Be brief.", store=False
    )
    assert response.output_text == REPLY_TEXT
    assert response.status == "completed"
    # A passthrough's bytes are the upstream's own (its model id); a translation names the client's model.
    assert response.model == ("gpt-4o-mini" if short == "oa" else model_of(short))
    assert output_types(response) == ["message"]
    usage = response.usage
    assert usage is not None and usage.output_tokens == len(REPLY_TEXT.split(" "))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    if stream:
        assert types[:2] == ["response.created", "response.in_progress"]
        assert types[-1] == "response.completed"
        assert "response.output_text.delta" in types
    (row,) = await usage_rows(server, request_id)
    assert row["protocol"] == "responses"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    upstream = mock.state.requests[-1]
    expected_path = "/v1/responses" if short == "oa" else None
    if expected_path is not None:
        assert upstream.path == expected_path


@pytest.mark.parametrize("short", list(KINDS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_function_tool_then_its_output(
    client: openai.AsyncOpenAI, server: RunningServer, short: str, stream: bool
) -> None:
    model = model_of(short)
    history: list[Any] = [{"role": "user", "content": "What is the weather in x?"}]
    first, _, _ = await create(client, stream=stream, model=model, input=history, tools=[WEATHER], store=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "x", "days": 1}
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny in x"})
    second, request_id, _ = await create(
        client, stream=stream, model=model, input=history, tools=[WEATHER], store=False
    )
    # Gemini's functionResponse wraps a result as {"output": ...}, which its mock quotes as it is.
    assert second.output_text.startswith("The tool returned: ") and "sunny in x" in second.output_text
    assert second.status == "completed"
    (row,) = await usage_rows(server, request_id)
    assert row["status"] == 200


@pytest.mark.parametrize("short", list(KINDS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_custom_tool(client: openai.AsyncOpenAI, short: str, stream: bool) -> None:
    model = model_of(short)
    history: list[Any] = [{"role": "user", "content": "Fix the bug."}]
    first, _, types = await create(
        client, stream=stream, model=model, input=history, tools=[APPLY_PATCH], tool_choice="required", store=False
    )
    (call,) = [item for item in first.output if item.type == "custom_tool_call"]
    assert call.name == "apply_patch"
    assert isinstance(call.input, str) and call.input
    if stream:
        assert "response.custom_tool_call_input.done" in types
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"})
    second, _, _ = await create(client, stream=stream, model=model, input=history, tools=[APPLY_PATCH], store=False)
    assert second.output_text.startswith("The tool returned: ") and "Done!" in second.output_text


@pytest.mark.parametrize("short", list(KINDS))
async def test_text_format_json_schema(client: openai.AsyncOpenAI, server: RunningServer, short: str) -> None:
    text_format = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    response, _, _ = await create(client, stream=False, model=model_of(short), input=PROMPT, text=text_format)
    assert json.loads(response.output_text) == {"city": "x", "temperature": 1}
    assert response.text is not None and response.text.format.type == "json_schema"


@pytest.mark.parametrize("short", ["an", "ge", "oc"])  # OpenAI refuses a limit below 16 (the mock too)
async def test_cut_by_the_output_limit_is_incomplete(client: openai.AsyncOpenAI, short: str) -> None:
    params: dict[str, Any] = {"model": model_of(short), "input": PROMPT, "max_output_tokens": 3}
    response, _, _ = await create(client, stream=False, **params)
    events = [event async for event in await client.responses.create(**params, stream=True)]
    assert events[-1].type == "response.incomplete"
    for final in (response, events[-1].response):
        assert final.status == "incomplete"
        assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
        assert final.output_text == " ".join(REPLY_TEXT.split(" ")[:3])


async def test_failure_mid_stream_ends_with_response_failed(client: openai.AsyncOpenAI) -> None:
    for short in ("oa", "an"):
        events = await client.responses.create(model=f"{short}-model-stream-error", input=PROMPT, stream=True)
        seen = [event async for event in events]
        assert seen[-1].type == "response.failed", short
        failed = seen[-1].response
        assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
        assert [e.sequence_number for e in seen] == list(range(len(seen)))


async def test_stateless(client: openai.AsyncOpenAI, server: RunningServer, key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="oa-model", input=PROMPT, previous_response_id="resp_123")
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "previous_response_id"
    assert "does not store responses" in error["message"]
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="an-model", input=PROMPT, background=True)
    for model in ("oa-model", "an-model"):  # a reference to a stored item, even toward OpenAI itself
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model=model, input=[{"type": "item_reference", "id": "msg_1"}])
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "input[0].type"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.retrieve("resp_123")
    assert "does not store responses" in str(caught.value)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.delete("/v1/responses/resp_123", headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"truncation": "auto"}, "truncation"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": []}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
async def test_translation_refuses_what_it_cannot_express(
    client: openai.AsyncOpenAI, params: dict[str, Any], field: str
) -> None:
    body = {"model": "an-model", "input": PROMPT, **params}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(**body)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == field, error


async def test_prompt_tokens_match_the_mock(client: openai.AsyncOpenAI) -> None:
    response, _, _ = await create(client, stream=False, model="an-model", input=PROMPT)
    assert response.usage is not None
    assert response.usage.input_tokens == math.ceil(len(PROMPT.encode()) / 4) + 3


# --- the event sequences, against the official ones ---------------------------------------------------------------

ADD = {
    "type": "function",
    "description": "Add two numbers together.",
    "name": "add",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
    "strict": True,
}
CODE_EXEC = {
    "type": "custom",
    "description": "Executes arbitrary Python code.",
    "format": {"type": "text"},
    "name": "code_exec",
}
GOLDEN_CASES = {
    "text.sse": ({}, ["oa", "an", "ge", "oc"]),
    "function_call.sse": ({"tools": [ADD]}, ["oa", "an", "ge", "oc"]),
    "reasoning.sse": ({"reasoning": {"effort": "low", "summary": "auto"}}, ["oa", "an", "ge"]),
    "custom_tool_call.sse": ({"tools": [CODE_EXEC], "reasoning": {"effort": "low"}}, ["oa", "an", "ge"]),
    "incomplete.sse": ({"max_output_tokens": 3}, ["an", "ge", "oc"]),
}


async def raw_stream(server: RunningServer, key: str, body: dict[str, Any]) -> bytes:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    return answer.content


@pytest.mark.parametrize(
    ("name", "short"), [(name, short) for name, (_, kinds) in GOLDEN_CASES.items() for short in kinds]
)
async def test_stream_matches_the_official_events(server: RunningServer, key: str, name: str, short: str) -> None:
    params, _ = GOLDEN_CASES[name]
    body = {"model": model_of(short), "input": PROMPT, "stream": True, **params}
    assert event_shape(await raw_stream(server, key, body)) == event_shape(golden(name))


@pytest.mark.parametrize("short", ["oa", "an"])
async def test_failed_stream_matches_the_official_events(server: RunningServer, key: str, short: str) -> None:
    body = {"model": f"{short}-model-stream-error", "input": PROMPT, "stream": True}
    assert event_shape(await raw_stream(server, key, body)) == event_shape(golden("failed.sse"))


@pytest.mark.parametrize(("name", "tools"), [("text.response.json", []), ("function_call.response.json", [ADD])])
@pytest.mark.parametrize("short", list(KINDS))
async def test_response_object_matches_the_official_one(
    server: RunningServer, key: str, name: str, tools: list[Any], short: str
) -> None:
    body: dict[str, Any] = {"model": model_of(short), "input": PROMPT, **({"tools": tools} if tools else {})}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    official = json_shape(json.loads(golden(name)))
    assert isinstance(official, dict)
    official.pop("billing")  # OpenAI's account data: not keyrelay's to invent
    ours = json_shape(answer.json())
    assert isinstance(ours, dict)
    ours.pop("billing", None)
    assert ours == official


@pytest.mark.parametrize("short", ["oa", "an", "ge"])  # the openai-compatible provider has no fault variants
async def test_a_broken_stream_still_ends_with_response_failed(server: RunningServer, key: str, short: str) -> None:
    """The upstream's connection drops after three deltas: keyrelay closes the client's stream itself."""
    body = {"model": f"{short}-model-cut-stream", "input": PROMPT, "stream": True}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    events = [data for _, data in sse_events(answer.content)]
    assert events[-1]["type"] == "response.failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 3
    (row,) = await usage_rows(server, answer.headers["x-request-id"])
    assert row["status"] == 502 and row["completion_tokens"] > 0  # the partial answer is charged


RESPONSES_FIELDS = [
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "max_output_tokens",
    "temperature", "top_p", "text", "include", "metadata", "store", "stream", "stream_options", "user", "truncation",
]  # fmt: skip
ITEM_FIELDS = [
    "type",
    "role",
    "content",
    "call_id",
    "name",
    "arguments",
    "input",
    "output",
    "summary",
    "encrypted_content",
]


async def test_no_strange_body_is_a_server_error(server: RunningServer, key: str) -> None:
    """Every field of the request and of an input item with every odd value: a 4xx naming it, or an answer."""
    bodies: list[bytes] = list(RAW_BODIES)
    for model in ("an-model", "ge-model", "oc-model"):
        base: dict[str, Any] = {"model": model, "input": PROMPT}
        for field in RESPONSES_FIELDS:
            bodies += [json.dumps({**base, field: value}).encode() for value in ODD_VALUES]
        for item in (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": "kr1.e30="},
        ):
            for field in ITEM_FIELDS:
                for value in ODD_VALUES:
                    items = [{"role": "user", "content": PROMPT}, {**item, field: value}]
                    bodies.append(json.dumps({**base, "input": items}).encode())
        nested: list[tuple[str, Any]] = [
            ("reasoning", lambda v: {"effort": v}),
            ("reasoning", lambda v: {"summary": v}),
            ("text", lambda v: {"format": v}),
            ("text", lambda v: {"format": {"type": "json_schema", "name": v, "schema": v}}),
            ("tool_choice", lambda v: {"type": "allowed_tools", "mode": v, "tools": v}),
            ("tool_choice", lambda v: {"type": v, "name": v}),
            ("tools", lambda v: [{"type": "custom", "name": "c", "format": v, "description": v}]),
            ("tools", lambda v: [{"type": "function", "name": v, "parameters": v, "strict": v}]),
            ("stream_options", lambda v: {"include_obfuscation": v}),
        ]
        for field, wrap in nested:
            bodies += [json.dumps({**base, field: wrap(value)}).encode() for value in ODD_VALUES]
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for path in ("/v1/responses", "/v1/completions"):
            for body in bodies:
                answer = await http.post(path, content=body, headers=headers)
                if answer.status_code >= 400:
                    error = answer.json()["error"]
                    assert answer.status_code != 500 and error["type"] != "INTERNAL_ERROR", (path, body[:300], error)


async def test_keys_and_limits_hold_as_on_every_path(server: RunningServer) -> None:
    """A key's model whitelist and request window refuse a Responses request in OpenAI's error shape."""
    narrow = await make_api_key(server, "narrow@example.com", allowed_models=["oa-model"])
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=narrow, max_retries=0) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk.responses.create(model="an-model", input=PROMPT)
        assert isinstance(denied.value.body, dict) and denied.value.body["type"] == "ACCESS_DENIED"
    one = await make_api_key(server, "one@example.com", rate_limits={"rpm": 1})
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=one, max_retries=0) as sdk:
        await sdk.responses.create(model="an-model", input=PROMPT)
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.responses.create(model="an-model", input=PROMPT, stream=True)
        assert isinstance(limited.value.body, dict) and limited.value.body["type"] == "RATE_LIMIT_EXCEEDED"
        assert limited.value.response.headers["retry-after"]
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="kr_live_" + "x" * 43) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.responses.create(model="an-model", input=PROMPT)
