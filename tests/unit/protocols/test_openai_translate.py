"""OpenAI client of another wire: request → canonical (with its refusals), canonical → body and stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import InboundRequest, Operation
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    Finish,
    ImagePart,
    Message,
    MessageStart,
    Reasoning,
    Role,
    SignatureDelta,
    StopReason,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    Tool,
    ToolArgumentsDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.openai import decode_request
from keyrelay.protocols.openai_encode import OpenAIStreamEncoder, canonical_to_openai_response, encode_error
from keyrelay.protocols.openai_translate import openai_to_canonical

DATA = Path(__file__).resolve().parents[2] / "data" / "openai"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def _inbound(body: dict[str, Any]) -> InboundRequest:
    raw = orjson.dumps(body)
    return InboundRequest(Operation.CHAT, str(body.get("model", "m")), False, False, None, raw, body)


def _translate(**fields: Any) -> ChatRequest:
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return openai_to_canonical(_inbound(body))


def _refused(field: str, **fields: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        _translate(**fields)
    assert info.value.error_type is ErrorType.INVALID_REQUEST
    assert info.value.field == field, info.value.message
    return info.value


# --- requests -------------------------------------------------------------------------------------


def test_golden_plain_request() -> None:
    req = openai_to_canonical(decode_request(Operation.CHAT, (DATA / "plain.request.json").read_bytes()))
    assert req.model == "gpt-4.1"
    assert req.system == [TextPart("You are a helpful assistant.")]
    assert req.messages == [Message(Role.USER, [TextPart("Hello!")])]
    assert not req.stream and req.max_tokens is None and req.tools == []


def test_golden_tool_request() -> None:
    req = openai_to_canonical(decode_request(Operation.CHAT, (DATA / "tool_calls.request.json").read_bytes()))
    assert [tool.name for tool in req.tools] == ["get_current_weather"]
    assert req.tools[0].parameters is not None and req.tools[0].parameters["required"] == ["location"]
    assert req.tool_choice == ToolChoice("auto")


def test_full_conversation() -> None:
    req = _translate(
        messages=[
            {"role": "system", "content": "Sys."},
            {"role": "developer", "content": [{"type": "text", "text": "Dev."}]},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "reasoning_content": "hmm",
                "content": "Calling.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "Thanks"},
        ],
        max_tokens=100,
        max_completion_tokens=300,
        temperature=0,
        top_p=1,
        stop="END",
        stream=True,
        stream_options={"include_usage": True},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
        reasoning_effort="low",
        response_format={"type": "json_object"},
        user="u",
        n=1,
        seed=None,
        logprobs=False,
        presence_penalty=0.0,
        store=False,
        prompt_cache_key="k",
    )
    assert req.system == [TextPart("Sys."), TextPart("Dev.")]
    assert req.messages == [
        Message(
            Role.USER,
            [
                TextPart("Look"),
                ImagePart(media_type="image/png", data=PNG, detail="high"),
                ImagePart(url="https://example.com/cat.jpg"),
            ],
            "ann",
        ),
        Message(
            Role.ASSISTANT,
            [
                ThinkingPart("hmm"),
                TextPart("Calling."),
                ToolCallPart("c1", "f", "{}"),
                ToolCallPart("c2", "g", '{"a":1}'),
            ],
        ),
        Message(
            Role.TOOL,
            [ToolResultPart("c1", (TextPart("one"),), "f"), ToolResultPart("c2", (TextPart("two"),), "g")],
        ),
        Message(Role.USER, [TextPart("Thanks")]),
    ]
    assert (req.max_tokens, req.temperature, req.top_p, req.stop) == (300, 0.0, 1.0, ["END"])
    assert req.stream and req.include_usage
    assert req.tools == [Tool("f", None, {"type": "object"})]
    assert req.tool_choice == ToolChoice("tool", "f", parallel=False)
    assert req.reasoning == Reasoning(effort="low")
    assert req.response_format == {"type": "json_object"} and req.user == "u"


def test_parallel_tool_calls_without_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert _translate(tools=tools, parallel_tool_calls=False).tool_choice == ToolChoice("auto", parallel=False)
    assert _translate(tools=tools).tool_choice is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"seed": 7}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"store": True}, "store"),
        ({"metadata": {"a": "b"}}, "metadata"),
        ({"verbosity": "low"}, "verbosity"),
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"some_extension": 1}, "some_extension"),
        ({"logprobs": 0}, "logprobs"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": ["a", 1]}, "stop[1]"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]},
            "messages[0].function_call",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "x", "input": ""}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}]},
            "messages[0].cache_control",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_refusals_name_the_field(fields: dict[str, Any], field: str) -> None:
    _refused(field, **fields)


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png,iVBORw0KGgo=",  # not base64
        "data:;base64,iVBORw0KGgo=",  # no media type
        "data:image/png;base64,iVBOR w0KGgo=",
        "data:image/png;base64,iVBORw0KGgo",  # not padded
        "data:image/png;base64,%69VBORw0KGgo=",
        "data:image/png;base64",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
    ],
)
def test_image_urls_are_parsed_strictly(url: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    err = _refused("messages[0].content[0].image_url.url", messages=[{"role": "user", "content": [part]}])
    assert "content[0]" in err.message


def test_data_url_with_parameters() -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:Image/PNG;name=a.png;base64,{PNG}"}}
    req = _translate(messages=[{"role": "user", "content": [part]}])
    assert req.messages[0].parts == [ImagePart(media_type="image/png", data=PNG)]


def _json() -> st.SearchStrategy[object]:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
        max_leaves=10,
    )


_FIELDS = [
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "stream",
    "stream_options", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "response_format",
    "n", "user", "seed", "logprobs", "metadata", "service_tier", "modalities",
]  # fmt: skip
_MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "reasoning_content", "refusal", "tool_call_id"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_FIELDS), _json())
def test_any_json_in_a_request_field_is_a_translation_or_a_400(field: str, value: object) -> None:
    try:
        _translate(**{field: value})
    except GatewayError as err:
        assert err.error_type is ErrorType.INVALID_REQUEST and err.field


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["user", "assistant", "tool", "system"]), st.sampled_from(_MESSAGE_FIELDS), _json(), _json())
def test_any_json_in_a_message_field_is_a_translation_or_a_400(
    role: str, field: str, value: object, part: object
) -> None:
    message = {"role": role, "content": [{"type": "text", "text": "x"}, part], "tool_call_id": "c", field: value}
    try:
        _translate(messages=[message])
    except GatewayError as err:
        assert err.error_type is ErrorType.INVALID_REQUEST and err.field


# --- response body --------------------------------------------------------------------------------


def test_response_body_is_a_chat_completion() -> None:
    resp = ChatResponse(
        "msg_01",
        "claude-upstream",
        [
            ThinkingPart("why", signature="s"),
            TextPart("Hi "),
            TextPart("there"),
            ToolCallPart("toolu_1", "f", '{"a":1}'),
        ],
        StopReason.TOOL_CALLS,
        Usage(100, 20, cache_read_tokens=80, cache_write_tokens=10, reasoning_tokens=5),
        created=1700000000,
    )
    body = orjson.loads(canonical_to_openai_response(resp, ChatRequest("client-model", [])))
    completion = ChatCompletion.model_validate(body)
    assert completion.id == "chatcmpl-msg_01" and completion.model == "client-model"
    message = body["choices"][0]["message"]
    assert message["content"] == "Hi there" and message["reasoning_content"] == "why" and message["refusal"] is None
    assert message["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        (StopReason.STOP, "stop"),
        (StopReason.STOP_SEQUENCE, "stop"),
        (StopReason.LENGTH, "length"),
        (StopReason.TOOL_CALLS, "tool_calls"),
        (StopReason.CONTENT_FILTER, "content_filter"),
        (StopReason.OTHER, "stop"),
        (None, "stop"),
    ],
)
def test_finish_reason_table(reason: StopReason | None, finish: str) -> None:
    body = orjson.loads(canonical_to_openai_response(ChatResponse("x", "m", [], reason), ChatRequest("m", [])))
    assert body["choices"][0]["finish_reason"] == finish and body["choices"][0]["message"]["content"] == ""


def test_only_tool_calls_give_null_content() -> None:
    resp = ChatResponse("x", "m", [ToolCallPart("c", "f", "{}")], StopReason.TOOL_CALLS)
    assert (
        orjson.loads(canonical_to_openai_response(resp, ChatRequest("m", [])))["choices"][0]["message"]["content"]
        is None
    )


def test_error_body() -> None:
    err = GatewayError(ErrorType.INVALID_REQUEST, "seed is not supported.", field="seed")
    assert orjson.loads(encode_error(err, "req_1")) == {
        "error": {
            "message": "seed is not supported.",
            "type": "INVALID_REQUEST",
            "code": "invalid_request",
            "param": "seed",
            "request_id": "req_1",
        }
    }


# --- stream ---------------------------------------------------------------------------------------


def _frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    frames = raw[:-2].split(b"\n\n")
    assert all(f.startswith(b"data: ") for f in frames)
    return [f[6:] for f in frames]


def _sdk_final(raw: bytes) -> tuple[ChatCompletion, list[dict[str, Any]]]:
    """The SDK's own accumulation of the stream (its final parse refuses length and content_filter answers)."""
    frames = _frames(raw)
    assert frames[-1] == b"[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk)))
    snapshot = state.current_completion_snapshot
    if snapshot.choices[0].finish_reason in ("length", "content_filter"):
        return ChatCompletion.model_validate(snapshot.model_dump()), chunks
    return state.get_final_completion(), chunks


def _request(include_usage: bool = True) -> ChatRequest:
    return ChatRequest("client-model", [], stream=True, include_usage=include_usage)


def test_stream_text_thinking_and_two_tool_calls() -> None:
    encoder = OpenAIStreamEncoder(_request(), created=1700000000)
    events: list[StreamEvent] = [
        MessageStart("msg_1", "upstream"),
        BlockStart(0, ThinkingPart("")),
        ThinkingDelta(0, "Let me see"),
        SignatureDelta(0, "sig"),
        BlockStop(0),
        BlockStart(1, TextPart("")),
        TextDelta(1, "Sure."),
        BlockStop(1),
        BlockStart(2, ToolCallPart("toolu_a", "get_weather", "")),
        ToolArgumentsDelta(2, '{"location":'),
        ToolArgumentsDelta(2, '"Paris"}'),
        BlockStop(2),
        BlockStart(3, ToolCallPart("toolu_b", "get_time", "")),
        ToolArgumentsDelta(3, "{}"),
        BlockStop(3),
        Finish(StopReason.TOOL_CALLS),
        UsageUpdate(Usage(10, 5)),
    ]
    raw = encoder.events(events[:9]) + encoder.events(events[9:]) + encoder.end(None)
    completion, chunks = _sdk_final(raw)
    assert completion.id == "chatcmpl-msg_1" and completion.model == "client-model"
    message = completion.choices[0].message
    assert message.content == "Sure."
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("toolu_a", "get_weather", '{"location":"Paris"}'),
        ("toolu_b", "get_time", "{}"),
    ]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.total_tokens == 15
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert {"reasoning_content": "Let me see"} in deltas
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["index"] for c in calls] == [0, 0, 0, 1, 1]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert calls[1] == {"index": 0, "function": {"arguments": '{"location":'}}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 10


def test_stream_without_usage_request_has_no_usage_chunk() -> None:
    encoder = OpenAIStreamEncoder(_request(include_usage=False))
    raw = encoder.events(
        [
            MessageStart("m", "u"),
            BlockStart(0, TextPart("")),
            TextDelta(0, "x"),
            BlockStop(0),
            Finish(StopReason.LENGTH),
        ]
    )
    raw += encoder.end(Usage(1, 1))
    completion, chunks = _sdk_final(raw)
    assert completion.choices[0].finish_reason == "length" and all(c["choices"] for c in chunks)


def test_stream_error_has_no_done() -> None:
    encoder = OpenAIStreamEncoder(_request())
    raw = encoder.events([MessageStart("m", "u"), BlockStart(0, TextPart("")), TextDelta(0, "x")])
    raw += encoder.error(GatewayError(ErrorType.UPSTREAM_ERROR, "The upstream failed."))
    frames = _frames(raw)
    assert b"[DONE]" not in frames
    assert orjson.loads(frames[-1]) == {
        "error": {"message": "The upstream failed.", "type": "UPSTREAM_ERROR", "code": "upstream_error"}
    }
    assert encoder.end(None) == b""


_TEXT = st.text(max_size=12)


@st.composite
def _event_sequences(draw: st.DrawFn) -> tuple[list[StreamEvent], str, list[tuple[str, str, str]]]:
    events: list[StreamEvent] = [MessageStart("msg", "up")]
    text: list[str] = []
    calls: list[tuple[str, str, str]] = []
    for index in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "thinking", "tool"]))
        pieces = draw(st.lists(_TEXT, max_size=4))
        if kind == "tool":
            call_id, name = f"call_{index}", draw(st.text(min_size=1, max_size=8))
            events.append(BlockStart(index, ToolCallPart(call_id, name, "")))
            events += [ToolArgumentsDelta(index, p) for p in pieces]
            calls.append((call_id, name, "".join(pieces)))
        elif kind == "text":
            events.append(BlockStart(index, TextPart("")))
            events += [TextDelta(index, p) for p in pieces]
            text.append("".join(pieces))
        else:
            events.append(BlockStart(index, ThinkingPart("")))
            events += [ThinkingDelta(index, p) for p in pieces]
        events.append(BlockStop(index))
    if draw(st.booleans()):
        events.append(UsageUpdate(Usage(3, 4)))
    events.append(Finish(draw(st.sampled_from(list(StopReason)))))
    return events, "".join(text), calls


@settings(max_examples=150, deadline=None)
@given(_event_sequences(), st.booleans(), st.data())
def test_sdk_accepts_any_encoded_stream(
    sequence: tuple[list[StreamEvent], str, list[tuple[str, str, str]]], include_usage: bool, data: st.DataObject
) -> None:
    events, text, calls = sequence
    encoder = OpenAIStreamEncoder(_request(include_usage))
    cut = data.draw(st.integers(0, len(events)))
    raw = encoder.events(events[:cut]) + encoder.events(events[cut:]) + encoder.end(None)
    completion, _ = _sdk_final(raw)
    message = completion.choices[0].message
    assert (message.content or "") == text
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == calls
