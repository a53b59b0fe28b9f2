"""The Anthropic wire as clients speak it: judging, translation to canonical, answers, streams and errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.anthropic import (
    anthropic_to_canonical,
    canonical_to_anthropic_response,
    credential,
    decode_request,
    encode_error,
)
from keyrelay.protocols.anthropic_stream import AnthropicStreamEncoder
from keyrelay.protocols.base import InboundRequest, Operation, ProtocolName
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    Finish,
    ImagePart,
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
    ToolArgumentsDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.sse import parse_blocks
from keyrelay.providers.anthropic import canonical_to_anthropic_request

DATA = Path(__file__).resolve().parents[2] / "data" / "anthropic"
PNG = "iVBORw0KGgo="


def golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def judged(body: dict[str, Any], operation: Operation = Operation.CHAT) -> InboundRequest:
    return decode_request(operation, orjson.dumps(body))


def refused(call: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    return caught.value


# A request using every translatable field.
FULL: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "system", "content": "Answer in English."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather and this picture?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": "sig=="},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C", "is_error": False},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather for a place",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "stop_sequences": ["END"],
    "temperature": 1,
    "top_k": 5,
    "top_p": 0.9,
    "metadata": {"user_id": "u-42"},
    "stream": True,
}


# --- credential and judging -----------------------------------------------------------------------


def test_credential_reads_x_api_key_first_then_bearer() -> None:
    assert credential([(b"x-api-key", b"kr_live_a"), (b"authorization", b"Bearer kr_live_b")], b"") == "kr_live_a"
    assert credential([(b"authorization", b"Bearer kr_live_b")], b"") == "kr_live_b"
    assert credential([(b"authorization", b"Basic abc")], b"") is None
    assert credential([(b"x-api-key", b"  ")], b"") is None
    assert credential([], b"key=kr_live_c") is None  # Anthropic takes no query credential


def test_plain_request_is_judged() -> None:
    request = decode_request(Operation.CHAT, golden("plain.request.json"))
    assert (request.model, request.stream, request.max_output_tokens) == ("claude-3-7-sonnet-20250219", False, 1024)
    assert request.protocol is ProtocolName.ANTHROPIC
    assert request.client_wants_usage  # an Anthropic stream always carries usage
    assert request.images == 0


@pytest.mark.parametrize("value", [None, 0, -3, "100", True, 1.5])
def test_max_tokens_is_a_required_positive_integer_for_chat(value: object) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if value is not None:
        body["max_tokens"] = value
    assert refused(judged, body).field == "max_tokens"


def test_count_tokens_takes_no_max_tokens() -> None:
    request = judged({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, Operation.COUNT_TOKENS)
    assert request.max_output_tokens == 0
    assert request.operation is Operation.COUNT_TOKENS


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[]", "body"),
        (b'{"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "max_tokens": 5, "messages": []}', "messages"),
        (b'{"model": "m", "max_tokens": 5, "messages": {}}', "messages"),
        (b'{"model": "m", "max_tokens": 5, "messages": [1], "stream": "yes"}', "stream"),
        (b'{"model": "a", "model": "b", "max_tokens": 5, "messages": [1]}', "model"),
        (b'{"model": "a", "mod\\u0065l": "b", "max_tokens": 5, "messages": [1]}', "model"),
        (b'{"model": "a", "max_tokens": 5, "max_tokens": 9000, "messages": [1]}', "max_tokens"),
        (b'{"model": "a", "max_tokens": 5, "messages": [1], "stream": false, "stream": true}', "stream"),
    ],
)
def test_malformed_bodies_are_refused_naming_the_field(body: bytes, field: str) -> None:
    assert refused(decode_request, Operation.CHAT, body).field == field


def test_a_repeated_key_inside_a_message_is_not_a_duplicate() -> None:
    body = (
        b'{"model": "m", "max_tokens": 5,'
        b' "messages": [{"role": "user", "content": [{"type": "text", "text": "model", "model": 1}]}]}'
    )
    assert decode_request(Operation.CHAT, body).model == "m"


def test_image_and_document_blocks_raise_the_prompt_bound() -> None:
    content = [
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}},
    ]
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    assert judged(body).images == 3
    escaped = orjson.dumps(body).replace(b'"image"', b'"im\\u0061ge"')
    assert decode_request(Operation.CHAT, escaped).images == 3
    assert decode_request(Operation.CHAT, escaped).prompt_token_bound > len(escaped)


# --- request → canonical --------------------------------------------------------------------------


def test_full_request_translates_every_field() -> None:
    chat = anthropic_to_canonical(judged(FULL))
    assert [p.text for p in chat.system] == ["You are terse.", "Answer in English."]  # system messages hoisted
    assert [m.role for m in chat.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.USER]
    assert chat.messages[0].parts[1:] == [
        ImagePart(media_type="image/png", data=PNG),
        ImagePart(url="https://example.com/a.jpg"),
    ]
    assert chat.messages[1].parts == [
        ThinkingPart("Call the tool.", "sig=="),
        ThinkingPart("", redacted="opaque"),
        TextPart("Checking."),
        ToolCallPart("toolu_1", "get_weather", '{"location":"Paris"}'),
    ]
    assert chat.messages[2].parts == [ToolResultPart("toolu_1", (TextPart("18C"),), "get_weather", False)]
    assert chat.messages[3].parts == [TextPart("And tomorrow?")]
    assert chat.tools[0].name == "get_weather" and chat.tools[0].parameters == FULL["tools"][0]["input_schema"]
    assert chat.tool_choice == ToolChoice("auto", None, False)
    assert chat.reasoning == Reasoning(budget_tokens=1024)
    assert (chat.max_tokens, chat.stop, chat.temperature, chat.top_p, chat.top_k) == (2048, ["END"], 1.0, 0.9, 5)
    assert (chat.user, chat.stream) == ("u-42", True)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, ToolChoice("auto")),
        ({"type": "any"}, ToolChoice("required")),
        ({"type": "none"}, ToolChoice("none")),
        ({"type": "tool", "name": "f", "disable_parallel_tool_use": False}, ToolChoice("tool", "f", True)),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: ToolChoice) -> None:
    body = {**FULL, "tool_choice": choice}
    assert anthropic_to_canonical(judged(body)).tool_choice == expected


def test_thinking_disabled_is_no_reasoning() -> None:
    assert anthropic_to_canonical(judged({**FULL, "thinking": {"type": "disabled"}})).reasoning is None


def with_block(block: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {**FULL, "messages": [{"role": role, "content": [block]}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            with_block({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}),
            "messages[0].content[0]",
        ),
        (with_block({"type": "image", "source": {"type": "file", "file_id": "f"}}), "messages[0].content[0].source"),
        (with_block({"type": "text", "text": "t", "citations": [{"type": "x"}]}), "messages[0].content[0].citations"),
        (with_block({"type": "tool_use", "id": "a", "name": "f", "input": {}}), "messages[0].content[0]"),
        (with_block({"type": "search_result", "content": []}), "messages[0].content[0]"),
        (
            with_block({"type": "server_tool_use", "id": "a", "name": "web_search", "input": {}}, "assistant"),
            "messages[0].content[0]",
        ),
        ({**FULL, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({**FULL, "tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0]"),
        ({**FULL, "tools": [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}, "tools[0]"),
        ({**FULL, "tools": [{**FULL["tools"][0], "strict": True}]}, "tools[0].strict"),
        ({**FULL, "service_tier": "auto"}, "service_tier"),
        ({**FULL, "container": "c"}, "container"),
        ({**FULL, "mcp_servers": []}, "mcp_servers"),
        ({**FULL, "thinking": {"type": "adaptive"}}, "thinking.type"),
        ({**FULL, "metadata": {"user_id": "u", "other": 1}}, "metadata.other"),
        ({**FULL, "tool_choice": {"type": "function"}}, "tool_choice.type"),
        ({**FULL, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_untranslatable_fields_are_refused_by_name(body: dict[str, Any], field: str) -> None:
    assert refused(anthropic_to_canonical, judged(body)).field == field


# --- round trip through the outbound translator ---------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else copy.deepcopy(content)
    for block in blocks:
        block.pop("cache_control", None)
        if block.get("type") == "tool_result":
            block["content"] = _blocks(block.get("content", []))
            if not block.get("is_error"):
                block.pop("is_error", None)
    return blocks


def normalised(body: dict[str, Any]) -> dict[str, Any]:
    """What an Anthropic request means, in the form the outbound translator writes it."""
    out = {k: v for k, v in body.items() if k not in ("system", "messages", "tools", "thinking")}
    system = [] if body.get("system") is None else _blocks(body["system"])
    turns: list[dict[str, Any]] = []
    for message in body["messages"]:
        if message["role"] == "system":
            system.extend(_blocks(message["content"]))
            continue
        blocks = _blocks(message["content"])
        if turns and turns[-1]["role"] == message["role"]:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message["role"], "content": blocks})
    out["messages"] = turns
    if system := [b for b in system if b["text"]]:
        out["system"] = system
    if body.get("tools"):
        out["tools"] = [{k: v for k, v in t.items() if k != "cache_control"} for t in body["tools"]]
    if body.get("thinking", {}).get("type") == "enabled":
        out["thinking"] = body["thinking"]
    if not out.get("stream"):
        out.pop("stream", None)
    if not out.get("stop_sequences"):
        out.pop("stop_sequences", None)
    return out


def round_trip(body: dict[str, Any]) -> dict[str, Any]:
    chat = anthropic_to_canonical(judged(body))
    result: dict[str, Any] = orjson.loads(canonical_to_anthropic_request(chat, body["model"]))
    return result


def test_full_request_round_trips() -> None:
    assert round_trip(FULL) == normalised(FULL)


def test_golden_requests_round_trip() -> None:
    for name in ("plain.request.json", "tool_use.request.json"):
        body = json.loads(golden(name))
        assert round_trip(body) == normalised(body)


texts = st.text(max_size=8)
text_block = st.builds(lambda t: {"type": "text", "text": t}, texts)
image_block = st.sampled_from(
    [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/i.png"}},
    ]
)
INTS = st.integers(-(2**63), 2**63 - 1)
json_objects = st.dictionaries(st.text(max_size=4), INTS | st.text(max_size=4) | st.booleans(), max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Alternating user/assistant turns; tool results answer the previous turn's tool uses."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn in range(draw(st.integers(1, 5))):
        if turn % 2 == 0:
            results = [
                {
                    "type": "tool_result",
                    "tool_use_id": call,
                    "content": draw(st.lists(text_block | image_block, max_size=2)),
                    "is_error": draw(st.booleans()),
                }
                for call in pending
            ]
            rest = draw(st.lists(text_block | image_block, min_size=0 if results else 1, max_size=3))
            content: Any = results + rest
            if not results and len(rest) == 1 and rest[0]["type"] == "text" and draw(st.booleans()):
                content = rest[0]["text"]
            messages.append({"role": "user", "content": content})
            pending = []
        else:
            blocks: list[dict[str, Any]] = []
            if draw(st.booleans()):
                blocks.append({"type": "thinking", "thinking": draw(texts), "signature": "s" + draw(texts)})
            blocks += draw(st.lists(text_block, max_size=2))
            for k in range(draw(st.integers(0, 2))):
                pending.append(f"toolu_{turn}_{k}")
                blocks.append({"type": "tool_use", "id": pending[-1], "name": "f", "input": draw(json_objects)})
            messages.append({"role": "assistant", "content": blocks or [{"type": "text", "text": "ok"}]})
    return messages


@settings(max_examples=150, deadline=None)
@given(
    messages=conversations(),
    system=st.none() | texts | st.lists(text_block, max_size=2),
    choice=st.none() | st.sampled_from([{"type": "auto"}, {"type": "any", "disable_parallel_tool_use": True}]),
    temperature=st.none() | st.floats(0, 1),
    stops=st.lists(texts, max_size=2),
)
def test_any_translatable_request_round_trips(
    messages: list[dict[str, Any]], system: Any, choice: Any, temperature: float | None, stops: list[str]
) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 4096, "messages": messages, "stop_sequences": stops}
    for name, value in (("system", system), ("tool_choice", choice), ("temperature", temperature)):
        if value is not None:
            body[name] = value
    assert round_trip(body) == normalised(body)


# --- any JSON anywhere: a translation or a 400 ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


FULL_PATHS = _paths(FULL)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FULL_PATHS), value=json_values)
def test_any_json_in_any_field_translates_or_is_refused(path: tuple[Any, ...], value: Any) -> None:
    body = copy.deepcopy(FULL)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        chat = anthropic_to_canonical(decode_request(Operation.CHAT, orjson.dumps(body)))
        canonical_to_anthropic_request(chat, "m")
    except GatewayError as err:
        assert err.error_type is ErrorType.INVALID_REQUEST
        assert err.field


# --- canonical → response -------------------------------------------------------------------------

REQUEST = ChatRequest(model="claude-client-name", messages=[])


def test_response_body_is_an_anthropic_message() -> None:
    resp = ChatResponse(
        id="chatcmpl-1",
        model="gpt-x",
        parts=[
            ThinkingPart("hmm", "sig"),
            TextPart("Hi"),
            ToolCallPart("call_1", "f", '{"a": 1}'),
        ],
        stop_reason=StopReason.TOOL_CALLS,
        usage=Usage(prompt_tokens=100, completion_tokens=7, cache_read_tokens=60, cache_write_tokens=10),
    )
    body = orjson.loads(canonical_to_anthropic_response(resp, REQUEST))
    message = anthropic.types.Message.model_validate(body)
    assert message.id == "msg_chatcmpl-1" and message.model == "claude-client-name"
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert body["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
    ]
    # input_tokens excludes the cache: 100 - 60 read - 10 written
    assert body["usage"] == {
        "input_tokens": 30,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 60,
        "output_tokens": 7,
    }


@pytest.mark.parametrize(
    ("reason", "wire"),
    [
        (StopReason.STOP, "end_turn"),
        (StopReason.STOP_SEQUENCE, "stop_sequence"),
        (StopReason.LENGTH, "max_tokens"),
        (StopReason.TOOL_CALLS, "tool_use"),
        (StopReason.CONTENT_FILTER, "refusal"),
        (StopReason.OTHER, "end_turn"),
        (None, "end_turn"),
    ],
)
def test_stop_reason_table(reason: StopReason | None, wire: str) -> None:
    resp = ChatResponse("msg_1", "m", [TextPart("x")], reason, None, "END")
    body = orjson.loads(canonical_to_anthropic_response(resp, REQUEST))
    assert body["stop_reason"] == wire
    assert body["stop_sequence"] == ("END" if wire == "stop_sequence" else None)


@pytest.mark.parametrize(
    "part", [ImagePart(url="https://x/y.png"), ToolCallPart("c", "f", "[1]"), ToolCallPart("c", "f", "{nope")]
)
def test_an_answer_anthropic_cannot_carry_is_an_upstream_error(part: Any) -> None:
    resp = ChatResponse("msg_1", "m", [part], StopReason.STOP)
    with pytest.raises(GatewayError) as caught:
        canonical_to_anthropic_response(resp, REQUEST)
    assert caught.value.error_type is ErrorType.UPSTREAM_ERROR


# --- stream encoder -------------------------------------------------------------------------------


def frames(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events, _ = parse_blocks(data)
    return [(e.event, json.loads(e.data)) for e in events]


def sdk_client(handler: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="kr_live_test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def final_message(stream: bytes) -> anthropic.types.Message:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    with sdk_client(handler).messages.stream(
        model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream_manager:
        return stream_manager.get_final_message()


def test_encoder_holds_finish_for_late_usage_and_closes_the_stream() -> None:
    encoder = AnthropicStreamEncoder(REQUEST, "abc", input_tokens_estimate=12)
    out = encoder.events([MessageStart("abc", "up"), BlockStart(0, TextPart("")), TextDelta(0, "Hel")])
    out += encoder.events([TextDelta(0, "lo"), BlockStop(0), Finish(StopReason.LENGTH)])
    out += encoder.events([UsageUpdate(Usage(50, 9, cache_read_tokens=20))])
    out += encoder.end(None)
    events = frames(out)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 12  # the estimate: no usage at the start
    assert events[0][1]["message"]["id"] == "msg_abc"
    assert events[5][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[5][1]["usage"] == {
        "input_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
        "output_tokens": 9,
    }
    message = final_message(out)
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert message.usage.input_tokens == 30 and message.usage.output_tokens == 9


def test_encoder_closes_open_blocks_and_starts_a_message_when_the_upstream_did_not() -> None:
    encoder = AnthropicStreamEncoder(REQUEST, "msg_x", 3)
    out = encoder.events([BlockStart(0, ToolCallPart("t1", "f", "")), ToolArgumentsDelta(0, '{"a"')])
    out += encoder.events([ToolArgumentsDelta(0, ": 2}")]) + encoder.end(Usage(3, 4))
    message = final_message(out)
    assert message.content[0].type == "tool_use" and message.content[0].input == {"a": 2}
    assert message.stop_reason == "end_turn"


def test_encoder_error_frame_is_an_sdk_error() -> None:
    encoder = AnthropicStreamEncoder(REQUEST, "msg_x", 3)
    out = encoder.events([MessageStart("m", "m"), BlockStart(0, TextPart("")), TextDelta(0, "partial")])
    out += encoder.error(GatewayError(ErrorType.UPSTREAM_ERROR, "The upstream went away."))
    assert encoder.end(None) == b""  # nothing follows the error
    assert frames(out)[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "The upstream went away.",
                "keyrelay": {"type": "UPSTREAM_ERROR", "code": "upstream_error"},
            },
            "request_id": None,
        },
    )
    with pytest.raises(anthropic.APIStatusError, match="The upstream went away"):
        final_message(out)


def test_a_stream_error_event_becomes_an_error_frame() -> None:
    encoder = AnthropicStreamEncoder(REQUEST, "msg_x", 3)
    out = encoder.events([MessageStart("m", "m"), StreamError("overloaded"), TextDelta(0, "late")])
    assert [name for name, _ in frames(out)] == ["message_start", "error"]


@st.composite
def canonical_streams(draw: st.DrawFn) -> list[StreamEvent]:
    """A valid canonical event sequence: blocks in order, deltas matching their kind, usage anywhere."""
    events: list[StreamEvent] = [MessageStart("id", "model", draw(st.none() | st.just(Usage(10, 0))))]
    for index in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "thinking", "redacted", "tool"]))
        if kind == "text":
            events.append(BlockStart(index, TextPart("")))
            events += [TextDelta(index, t) for t in draw(st.lists(st.text(max_size=5), max_size=3))]
        elif kind == "thinking":
            events.append(BlockStart(index, ThinkingPart("")))
            events += [ThinkingDelta(index, t) for t in draw(st.lists(st.text(max_size=5), max_size=3))]
            events.append(SignatureDelta(index, "sig"))
        elif kind == "redacted":
            events.append(BlockStart(index, ThinkingPart("", redacted="opaque")))
        else:
            events.append(BlockStart(index, ToolCallPart(f"t{index}", "f", "")))
            text = orjson.dumps(draw(json_objects)).decode()
            cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            events += [ToolArgumentsDelta(index, p) for p in pieces]
        events.append(BlockStop(index))
        if draw(st.booleans()):
            events.append(UsageUpdate(Usage(10, index + 1)))
    events.append(Finish(draw(st.sampled_from(list(StopReason))), None))
    if draw(st.booleans()):
        events.append(UsageUpdate(Usage(11, 99, cache_write_tokens=1)))
    return events


@settings(max_examples=100, deadline=None)
@given(events=canonical_streams(), batch=st.integers(1, 4))
def test_encoder_output_is_accepted_by_the_sdk_accumulator(events: list[StreamEvent], batch: int) -> None:
    encoder = AnthropicStreamEncoder(REQUEST, "x", 7)
    out = b"".join(encoder.events(events[i : i + batch]) for i in range(0, len(events), batch))
    out += encoder.end(None)
    message = final_message(out)
    starts = [e.part for e in events if isinstance(e, BlockStart)]
    assert [b.type for b in message.content] == [
        "text"
        if isinstance(p, TextPart)
        else "tool_use"
        if isinstance(p, ToolCallPart)
        else "redacted_thinking"
        if p.redacted
        else "thinking"
        for p in starts
    ]
    usage = [e.usage for e in events if isinstance(e, UsageUpdate)]
    if usage:
        assert message.usage.output_tokens == usage[-1].completion_tokens


# --- error bodies ---------------------------------------------------------------------------------

ERROR_ROWS = [
    (ErrorType.INVALID_REQUEST, None, "invalid_request_error", anthropic.BadRequestError),
    (ErrorType.INVALID_API_KEY, None, "authentication_error", anthropic.AuthenticationError),
    (ErrorType.INSUFFICIENT_BALANCE, None, "billing_error", anthropic.PaymentRequiredError),
    (ErrorType.ACCESS_DENIED, None, "permission_error", anthropic.PermissionDeniedError),
    (ErrorType.MODEL_NOT_FOUND, None, "not_found_error", anthropic.NotFoundError),
    (ErrorType.METHOD_NOT_ALLOWED, None, "invalid_request_error", anthropic.APIStatusError),
    (ErrorType.CONFLICT, None, "conflict_error", anthropic.ConflictError),
    (ErrorType.PAYLOAD_TOO_LARGE, None, "request_too_large", anthropic.ContentTooLargeError),
    (ErrorType.RATE_LIMIT_EXCEEDED, None, "rate_limit_error", anthropic.RateLimitError),
    (ErrorType.INTERNAL_ERROR, None, "api_error", anthropic.InternalServerError),
    (ErrorType.UPSTREAM_ERROR, None, "api_error", anthropic.InternalServerError),
    (ErrorType.UPSTREAM_ERROR, 503, "overloaded_error", anthropic.ServiceUnavailableError),
    (ErrorType.SERVICE_UNAVAILABLE, None, "overloaded_error", anthropic.ServiceUnavailableError),
    (ErrorType.UPSTREAM_TIMEOUT, None, "timeout_error", anthropic.GatewayTimeoutError),
]


@pytest.mark.parametrize(("error_type", "status", "wire_type", "sdk_error"), ERROR_ROWS)
def test_error_body_per_status_raises_the_matching_sdk_error(
    error_type: ErrorType, status: int | None, wire_type: str, sdk_error: type[Exception]
) -> None:
    err = GatewayError(error_type, "Something is wrong.", field="messages[0]", limit_source="key", status=status)
    body = encode_error(err, "req_1")
    assert orjson.loads(body) == {
        "type": "error",
        "error": {
            "type": wire_type,
            "message": "Something is wrong.",
            "keyrelay": {
                "type": error_type.name,
                "code": error_type.code,
                "param": "messages[0]",
                "limit_source": "key",
            },
        },
        "request_id": "req_1",
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(err.status, headers={"content-type": "application/json"}, content=body)

    with pytest.raises(sdk_error) as caught:
        sdk_client(handler).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert type(caught.value) is sdk_error
    assert isinstance(caught.value, anthropic.APIStatusError) and caught.value.status_code == err.status
    assert "Something is wrong." in str(caught.value)


def test_encoder_emits_content_a_block_start_already_holds() -> None:
    encoder = AnthropicStreamEncoder(REQUEST, "x", 1)
    out = encoder.events(
        [
            BlockStart(0, ThinkingPart("pondered", "sig")),
            BlockStop(0),
            BlockStart(1, TextPart("Hi")),
            BlockStop(1),
            BlockStart(2, ToolCallPart("t", "f", '{"k": true}')),
            BlockStop(2),
        ]
    )
    message = final_message(out + encoder.end(None))
    assert message.content[0].type == "thinking"
    assert (message.content[0].thinking, message.content[0].signature) == ("pondered", "sig")
    assert message.content[1].type == "text" and message.content[1].text == "Hi"
    assert message.content[2].type == "tool_use" and message.content[2].input == {"k": True}
