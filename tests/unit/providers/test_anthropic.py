"""keyrelay → an Anthropic upstream: request bodies, answers, streams at any slicing, usage and error bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Finish,
    ImagePart,
    Message,
    MessageStart,
    Reasoning,
    Role,
    SignatureDelta,
    StopReason,
    StreamError,
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
from keyrelay.providers.anthropic import (
    AnthropicStreamDecoder,
    anthropic_response_to_canonical,
    anthropic_usage,
    canonical_to_anthropic_request,
    upstream_error,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "anthropic"


def golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def body_for(req: ChatRequest, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(canonical_to_anthropic_request(req, "claude-up", **kwargs))
    return result


def refused(req: ChatRequest) -> str | None:
    with pytest.raises(GatewayError) as caught:
        canonical_to_anthropic_request(req, "claude-up")
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    return caught.value.field


def user(*parts: Any) -> Message:
    return Message(Role.USER, list(parts))


# --- request --------------------------------------------------------------------------------------


def test_openai_shaped_conversation_becomes_alternating_turns() -> None:
    req = ChatRequest(
        model="gpt-client",
        system=[TextPart("Be brief."), TextPart("Be kind.")],
        messages=[
            user(TextPart("Hi"), ImagePart(url="data:image/png;base64,AAAA", detail="high")),
            user(ImagePart(url="https://x/y.png")),
            Message(Role.ASSISTANT, [ThinkingPart("unsigned"), TextPart("Let me look."), ToolCallPart("c1", "f", "")]),
            Message(Role.ASSISTANT, [ToolCallPart("c2", "g", '{"q": 1}')]),
            Message(Role.TOOL, [ToolResultPart("c1", (TextPart("one"),))]),
            Message(Role.TOOL, [ToolResultPart("c2", (TextPart("two"),), is_error=True)]),
            user(TextPart("Thanks")),
        ],
        tools=[Tool("f", "does f", {"type": "object", "properties": {}}), Tool("g")],
        tool_choice=ToolChoice("required", parallel=False),
        stop=["X"],
        temperature=0.5,
        user="u1",
        stream=True,
    )
    body = body_for(req)
    assert body["model"] == "claude-up" and body["max_tokens"] == 4096 and body["stream"] is True
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [  # the unsigned thinking part is dropped: Anthropic refuses thinking without a signature
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
                {"type": "tool_use", "id": "c2", "name": "g", "input": {"q": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "one"}]},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": [{"type": "text", "text": "two"}],
                    "is_error": True,
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "f", "description": "does f", "input_schema": {"type": "object", "properties": {}}},
        {"name": "g", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["stop_sequences"], body["temperature"], body["metadata"]) == (["X"], 0.5, {"user_id": "u1"})


def test_signed_and_redacted_thinking_are_kept() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            user(TextPart("q")),
            Message(Role.ASSISTANT, [ThinkingPart("t", "sig"), ThinkingPart("", redacted="r")]),
        ],
    )
    assert body_for(req)["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "t", "signature": "sig"},
        {"type": "redacted_thinking", "data": "r"},
    ]


@pytest.mark.parametrize(
    ("reasoning", "max_tokens", "thinking"),
    [
        (Reasoning(effort="low"), 8000, {"type": "enabled", "budget_tokens": 1024}),
        (Reasoning(effort="medium"), 8000, {"type": "enabled", "budget_tokens": 4000}),
        (Reasoning(effort="medium"), 9000, {"type": "enabled", "budget_tokens": 4096}),
        (Reasoning(effort="high"), 8000, {"type": "enabled", "budget_tokens": 4000}),  # half of max_tokens at most
        (Reasoning(effort="high"), None, {"type": "enabled", "budget_tokens": 2048}),
        (Reasoning(effort="low"), 1500, {"type": "enabled", "budget_tokens": 1024}),  # Anthropic's minimum
        (Reasoning(effort="minimal"), 8000, None),
        (Reasoning(budget_tokens=2000), 8000, {"type": "enabled", "budget_tokens": 2000}),
        (None, 8000, None),
    ],
)
def test_reasoning_becomes_a_thinking_budget(
    reasoning: Reasoning | None, max_tokens: int | None, thinking: dict[str, Any] | None
) -> None:
    req = ChatRequest(model="m", messages=[user(TextPart("q"))], reasoning=reasoning, max_tokens=max_tokens)
    assert body_for(req).get("thinking") == thinking


def test_default_max_tokens_is_used_when_the_client_gave_none() -> None:
    req = ChatRequest(model="m", messages=[user(TextPart("q"))])
    assert body_for(req, default_max_tokens=321)["max_tokens"] == 321
    assert body_for(ChatRequest(model="m", messages=[user(TextPart("q"))], max_tokens=77))["max_tokens"] == 77


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"temperature": 1.5}, "temperature"),
        ({"reasoning": Reasoning(effort="extreme")}, "reasoning"),
        ({"reasoning": Reasoning(budget_tokens=500)}, "reasoning"),
        ({"reasoning": Reasoning(budget_tokens=5000), "max_tokens": 5000}, "reasoning"),
        ({"reasoning": Reasoning(effort="low"), "max_tokens": 1000}, "reasoning"),
        ({"messages": [user(ImagePart(data="AAAA"))]}, "messages[0].content[0]"),
        ({"messages": [user(ImagePart(url="data:image/png,AAAA"))]}, "messages[0].content[0]"),
        ({"messages": [user(ImagePart())]}, "messages[0].content[0]"),
        ({"messages": [Message(Role.ASSISTANT, [ToolCallPart("c", "f", "[1, 2]")])]}, "messages[0].content[0]"),
        ({"messages": [user(ToolCallPart("c", "f", "{}"))]}, "messages[0].content[0]"),
    ],
)
def test_what_anthropic_cannot_take_is_refused_by_name(changes: dict[str, Any], field: str) -> None:
    req = ChatRequest(model="m", messages=[user(TextPart("q"))])
    for name, value in changes.items():
        setattr(req, name, value)
    assert refused(req) == field


# --- response, usage and errors -------------------------------------------------------------------


def test_plain_response() -> None:
    resp = anthropic_response_to_canonical(golden("plain.response.json"))
    assert (resp.id, resp.model, resp.parts) == (
        "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "claude-3-7-sonnet-20250219",
        [TextPart("Hi! My name is Claude.")],
    )
    assert resp.stop_reason is StopReason.STOP
    assert resp.usage == Usage(prompt_tokens=2095, completion_tokens=503)


def test_tool_use_response() -> None:
    resp = anthropic_response_to_canonical(golden("tool_use.response.json"))
    assert resp.parts[1] == ToolCallPart(
        "toolu_01A09q90qw90lq917835lq9", "get_weather", '{"location":"San Francisco, CA","unit":"celsius"}'
    )
    assert resp.stop_reason is StopReason.TOOL_CALLS


def test_usage_counts_cached_tokens_once_in_the_prompt() -> None:
    usage = anthropic_usage(
        {
            "input_tokens": 10,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 3000,
            "output_tokens": 50,
            "output_tokens_details": {"thinking_tokens": 20},
        }
    )
    assert usage == Usage(3210, 50, cache_read_tokens=3000, cache_write_tokens=200, reasoning_tokens=20)
    assert usage is not None and usage.uncached_prompt_tokens == 10
    assert anthropic_usage(None) is None and anthropic_usage({"foo": 1}) is None


def test_upstream_error_body() -> None:
    assert upstream_error(golden("error.response.json")) == (
        "The requested resource could not be found.",
        "not_found_error",
    )
    assert upstream_error(b"<html>bad gateway</html>") == ("<html>bad gateway</html>", None)
    assert len(upstream_error(orjson.dumps({"error": {"type": "x", "message": "m" * 900}}))[0]) == 500


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        b'{"content": 1}',
        b'{"content": [1]}',
        b'{"content": [{"type": "text"}]}',
        b'{"content": [{"type": "tool_use", "id": "a", "name": "f", "input": []}]}',
    ],
)
def test_a_body_that_is_not_a_message_is_an_upstream_error(body: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        anthropic_response_to_canonical(body)
    assert caught.value.error_type is ErrorType.UPSTREAM_ERROR


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["type", "text", "id", "x"]), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(content=st.lists(json_values, max_size=3), extra=st.dictionaries(st.text(max_size=12), json_values, max_size=3))
def test_any_response_body_decodes_or_is_an_upstream_error(content: list[Any], extra: dict[str, Any]) -> None:
    try:
        anthropic_response_to_canonical(orjson.dumps({**extra, "content": content}))
    except GatewayError as err:
        assert err.error_type is ErrorType.UPSTREAM_ERROR


# --- stream ---------------------------------------------------------------------------------------


def decode(stream: bytes, cuts: list[int] | None = None) -> tuple[list[StreamEvent], AnthropicStreamDecoder]:
    decoder = AnthropicStreamDecoder()
    points = sorted(set(cuts or []))
    events: list[StreamEvent] = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        events += decoder.feed(stream[a:b])
    return events + decoder.end(), decoder


def test_text_stream() -> None:
    events, decoder = decode(golden("text.sse"))
    assert events == [
        MessageStart("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "claude-opus-4-6", Usage(25, 1)),
        BlockStart(0, TextPart("")),
        TextDelta(0, "Hello"),
        TextDelta(0, "!"),
        BlockStop(0),
        Finish(StopReason.STOP),
        UsageUpdate(Usage(25, 15)),
    ]
    assert decoder.complete and decoder.usage == Usage(25, 15) and decoder.output_bytes == 6


def test_tool_use_stream_arguments_concatenate_to_the_input() -> None:
    events, decoder = decode(golden("tool_use.sse"))
    assert events[-3:] == [BlockStop(1), Finish(StopReason.TOOL_CALLS), UsageUpdate(Usage(472, 89))]
    assert BlockStart(1, ToolCallPart("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", "")) in events
    arguments = "".join(e.partial_json for e in events if isinstance(e, ToolArgumentsDelta))
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    assert decoder.complete


def test_thinking_stream_carries_the_signature() -> None:
    events, decoder = decode(golden("thinking.sse"))
    assert events[0] == MessageStart("msg_01...", "claude-opus-4-6", None)
    assert events[1] == BlockStart(0, ThinkingPart(""))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    assert thinking.endswith("So GCD(1071, 462) = 21")
    assert SignatureDelta(0, "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...") in events
    assert events[-1] == Finish(StopReason.STOP)
    assert decoder.usage is None and decoder.complete


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["text.sse", "tool_use.sse", "thinking.sse"]), data=st.data())
def test_any_slicing_gives_the_same_events(name: str, data: st.DataObject) -> None:
    stream = golden(name)
    if data.draw(st.booleans()):
        stream = stream.replace(b"\n", b"\r\n")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    whole, _ = decode(golden(name))
    assert decode(stream, cuts)[0] == whole


def test_errors_pings_unknown_events_and_server_tool_blocks() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c",'
        b'"usage":{"input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: future_thing\ndata: {"type":"future_thing"}\n\n'
        b'event: ping\ndata: {"type": "ping"}\n\n'
        b"event: content_block_delta\ndata: {not json}\n\n"
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1}\n\n'
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"pause_turn"},'
        b'"usage":{"output_tokens":3}}'  # no blank line: delivered by end()
    )
    events, decoder = decode(stream)
    assert events[0] == MessageStart("m", "c", Usage(105, 1, cache_read_tokens=100))
    assert events[1] == BlockStart(0, TextPart(""))  # the server tool block is not carried; indices renumbered
    assert [type(e) for e in events[2:5]] == [StreamError, StreamError, StreamError]
    assert events[4] == StreamError("Overloaded")
    assert events[5:] == [Finish(StopReason.OTHER), UsageUpdate(Usage(105, 3, cache_read_tokens=100))]
    assert not decoder.complete


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    [
                        "message_start",
                        "content_block_start",
                        "content_block_delta",
                        "content_block_stop",
                        "message_delta",
                        "error",
                    ]
                )
            },
            optional={
                "index": json_values,
                "delta": json_values,
                "content_block": json_values,
                "message": json_values,
                "usage": json_values,
                "error": json_values,
            },
        ),
        max_size=6,
    )
)
def test_any_event_payload_decodes_without_raising(events: list[dict[str, Any]]) -> None:
    stream = b"".join(b"event: x\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    decode(stream)
