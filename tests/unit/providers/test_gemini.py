"""The Gemini upstream wire: canonical → request, answers and streams → canonical, usage, error bodies."""

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
    ChatResponse,
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
from keyrelay.providers.gemini import (
    SKIP_SIGNATURE,
    GeminiStreamDecoder,
    canonical_to_gemini_request,
    gemini_response_to_canonical,
    gemini_usage,
    upstream_error,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "gemini"


def body(req: ChatRequest, model: str = "gemini-2.5-flash") -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(canonical_to_gemini_request(req, model))
    return result


def chat(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages), **kw)


CALL = ToolCallPart("call_a", "get_weather", '{"city":"Paris"}')


def test_a_tool_loop_becomes_alternating_turns_with_names_from_the_calls() -> None:
    req = chat(
        Message(Role.USER, [TextPart("Weather in Paris?")]),
        Message(Role.ASSISTANT, [TextPart("Let me look."), CALL]),
        Message(Role.TOOL, [ToolResultPart("call_a", (TextPart('{"temp": 21}'),))]),
        Message(Role.USER, [TextPart("And tomorrow?")]),
        system=[TextPart("Be brief."), TextPart("Use Celsius.")],
        tools=[Tool("get_weather", "Weather now", {"type": "object", "properties": {"city": {"type": "string"}}})],
        tool_choice=ToolChoice("tool", "get_weather"),
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        stop=["END"],
        n=2,
        user="u-1",  # Gemini has no end-user field: not sent (documented)
    )
    assert body(req) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me look."},
                    {"functionCall": {"id": "call_a", "name": "get_weather", "args": {"city": "Paris"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "call_a", "name": "get_weather", "response": {"temp": 21}}},
                    {"text": "And tomorrow?"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use Celsius."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather now",
                        "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}},
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {
            "maxOutputTokens": 100,
            "temperature": 0.5,
            "topP": 0.9,
            "topK": 40,
            "stopSequences": ["END"],
            "candidateCount": 2,
        },
    }


@pytest.mark.parametrize(
    ("content", "is_error", "response"),
    [
        ("plain words", False, {"output": "plain words"}),
        ("plain words", True, {"error": "plain words"}),
        ('{"a": 1}', False, {"a": 1}),
        ('{"a": 1}', True, {"error": {"a": 1}}),
        ('{"error": "x"}', True, {"error": "x"}),
        ("[1, 2]", False, {"output": "[1, 2]"}),
    ],
)
def test_tool_results_become_response_objects(content: str, is_error: bool, response: dict[str, Any]) -> None:
    req = chat(
        Message(Role.ASSISTANT, [CALL]),
        Message(Role.TOOL, [ToolResultPart("call_a", (TextPart(content),), is_error=is_error)]),
    )
    assert body(req)["contents"][1]["parts"][0]["functionResponse"]["response"] == response


def test_signatures_go_back_where_gemini_put_them() -> None:
    req = chat(
        Message(
            Role.ASSISTANT,
            [ThinkingPart("plan", "s1"), ThinkingPart("", "s2"), CALL, ThinkingPart("", None, redacted="opaque")],
        ),
    )
    assert body(req)["contents"][0]["parts"] == [
        {"text": "plan", "thought": True, "thoughtSignature": "s1"},
        {"functionCall": {"id": "call_a", "name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "s2"},
    ]


def test_gemini_3_gets_the_documented_sentinel_on_an_unsigned_first_call_only() -> None:
    second = ToolCallPart("call_b", "get_weather", "{}")
    req = chat(Message(Role.ASSISTANT, [CALL, second]))
    parts = body(req, "gemini-3-pro-preview")["contents"][0]["parts"]
    assert parts[0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "thoughtSignature" not in parts[1]
    assert all("thoughtSignature" not in p for p in body(req, "gemini-2.5-pro")["contents"][0]["parts"])


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (ImagePart("image/png", data="iVBOR"), {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}),
        (ImagePart(url="data:image/jpeg;base64,/9j/4A"), {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4A"}}),
        (
            ImagePart("image/png", url="gs://b/cat.png"),
            {"fileData": {"fileUri": "gs://b/cat.png", "mimeType": "image/png"}},
        ),
    ],
)  # fmt: skip
def test_images(image: ImagePart, expected: dict[str, Any]) -> None:
    assert body(chat(Message(Role.USER, [image])))["contents"][0]["parts"] == [expected]


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (chat(Message(Role.USER, [ImagePart(url="https://example.com/cat.png")])), "messages[0].parts[0]"),
        (chat(Message(Role.USER, [ImagePart(data="iVBOR")])), "messages[0].parts[0]"),
        (chat(Message(Role.TOOL, [ToolResultPart("call_x", (TextPart("r"),), name="f")])), "messages[0].parts[0]"),
        (
            chat(Message(Role.ASSISTANT, [ToolCallPart("c", "f", "[1]")])),
            "messages[0].parts[0].arguments",
        ),
        (
            chat(
                Message(Role.ASSISTANT, [CALL]),
                Message(Role.TOOL, [ToolResultPart("call_a", (ImagePart("image/png", data="x"),))]),
            ),
            "messages[1].parts[0].content[0]",
        ),
        (chat(Message(Role.USER, [TextPart("x")]), response_format={"type": "grammar"}), "response_format"),
        (chat(Message(Role.USER, [TextPart("x")]), reasoning=Reasoning(effort="extreme")), "reasoning_effort"),
    ],
)
def test_refusals_name_the_field(req: ChatRequest, field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        canonical_to_gemini_request(req, "gemini-2.5-flash")
    assert caught.value.error_type is ErrorType.INVALID_REQUEST and caught.value.field == field


@pytest.mark.parametrize(
    ("reasoning", "model", "thinking"),
    [
        (Reasoning(budget_tokens=2048), "gemini-2.5-pro", {"includeThoughts": True, "thinkingBudget": 2048}),
        (
            Reasoning(effort="low", include_thoughts=False),
            "gemini-2.5-flash",
            {"includeThoughts": False, "thinkingBudget": 1024},
        ),
        (Reasoning(effort="high"), "gemini-3-pro-preview", {"includeThoughts": True, "thinkingLevel": "HIGH"}),
        (Reasoning(), "gemini-2.5-flash", {"includeThoughts": True}),
    ],
)  # fmt: skip
def test_reasoning_becomes_thinking_config(reasoning: Reasoning, model: str, thinking: dict[str, Any]) -> None:
    req = chat(Message(Role.USER, [TextPart("x")]), reasoning=reasoning)
    assert body(req, model)["generationConfig"]["thinkingConfig"] == thinking


def test_response_formats_and_tool_choices() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = chat(
        Message(Role.USER, [TextPart("x")]),
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        tool_choice=ToolChoice("required"),
    )
    out = body(req)
    assert out["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    req.response_format = {"type": "json_object"}
    req.tool_choice = ToolChoice("none")
    out = body(req)
    assert out["generationConfig"] == {"responseMimeType": "application/json"}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


# --- answers and streams: one fixture for both paths ----------------------------------------------------


def collect(events: list[StreamEvent]) -> tuple[list[Any], StopReason | None]:
    """The parts and stop reason a stream's events add up to (tool-call ids ignored)."""
    parts: list[Any] = []
    stop = None
    for ev in events:
        if isinstance(ev, BlockStart):
            parts.append(ev.part)
        elif isinstance(ev, TextDelta):
            parts[-1] = TextPart(parts[-1].text + ev.text)
        elif isinstance(ev, ThinkingDelta):
            parts[-1] = ThinkingPart(parts[-1].text + ev.text, parts[-1].signature)
        elif isinstance(ev, SignatureDelta):
            parts[-1] = ThinkingPart(parts[-1].text, ev.signature)
        elif isinstance(ev, ToolArgumentsDelta):
            parts[-1] = ToolCallPart("", parts[-1].name, parts[-1].arguments + ev.partial_json)
        elif isinstance(ev, Finish):
            stop = ev.stop_reason
    return parts, stop


def without_ids(parts: list[Any]) -> list[Any]:
    return [ToolCallPart("", p.name, p.arguments) if isinstance(p, ToolCallPart) else p for p in parts]


def decode_stream(stream: bytes, cuts: list[int]) -> tuple[GeminiStreamDecoder, list[StreamEvent]]:
    decoder = GeminiStreamDecoder()
    events: list[StreamEvent] = []
    previous = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        events += decoder.feed(stream[previous:cut])
        previous = cut
    events += decoder.end()
    return decoder, events


@pytest.mark.parametrize("case", ["plain", "function_call"])
def test_answer_and_stream_agree(case: str) -> None:
    answer = gemini_response_to_canonical((DATA / f"{case}.response.json").read_bytes())
    decoder, events = decode_stream((DATA / f"{case}.sse").read_bytes(), [])
    parts, stop = collect(events)
    assert without_ids(parts) == without_ids(answer.parts)
    assert stop == answer.stop_reason and decoder.complete
    assert decoder.usage == answer.usage
    assert isinstance(events[0], MessageStart) and events[0].id == answer.id and events[0].model == answer.model


def test_stream_start_carries_the_first_chunks_usage() -> None:
    # Anthropic clients read the input usage from message_start: Gemini reports it in its first chunk.
    _, events = decode_stream((DATA / "plain.sse").read_bytes(), [])
    assert isinstance(events[0], MessageStart) and events[0].usage == Usage(8, 4)
    chunk = {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "index": 0}]}
    _, events = decode_stream(b"data: " + orjson.dumps(chunk) + b"\n\n", [])
    assert isinstance(events[0], MessageStart) and events[0].usage is None


def test_plain_answer() -> None:
    answer = gemini_response_to_canonical((DATA / "plain.response.json").read_bytes())
    assert answer == ChatResponse(
        "mAitaJqKJZqWz7IPvOOfqQs",
        "gemini-2.5-flash",
        [TextPart("Elara found the backpack in her grandmother's attic.")],
        StopReason.STOP,
        Usage(8, 11),
    )


def test_function_call_answer_gets_an_id_and_tool_calls_reason() -> None:
    answer = gemini_response_to_canonical((DATA / "function_call.response.json").read_bytes())
    (call,) = answer.parts
    assert isinstance(call, ToolCallPart) and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"brightness": 25, "color_temp": "warm"}
    assert answer.stop_reason is StopReason.TOOL_CALLS


def test_a_blocked_prompt_is_an_empty_content_filtered_answer() -> None:
    answer = gemini_response_to_canonical((DATA / "safety_blocked.response.json").read_bytes())
    assert answer.parts == [] and answer.stop_reason is StopReason.CONTENT_FILTER
    assert answer.usage == Usage(12, 0)
    blocked = {"candidates": [{"finishReason": "SAFETY", "index": 0}]}
    assert gemini_response_to_canonical(orjson.dumps(blocked)).stop_reason is StopReason.CONTENT_FILTER


def test_thoughts_stream_signature_closes_the_thought() -> None:
    decoder, events = decode_stream((DATA / "thoughts.sse").read_bytes(), [])
    parts, stop = collect(events)
    assert parts == [
        ThinkingPart(
            "**Analyzing the Request**\n\nThe user asks for the sum of two and two.",
            "CiQB0e2Kb7v3c0n8SFkHBoX1QfL9mDhF2uVw6aH0c7x0sRrE6qUKYgHR7Ypv",
        ),
        TextPart("2 + 2 = 4"),
    ]
    assert stop is StopReason.STOP and decoder.complete
    assert decoder.usage == Usage(9, 7 + 58, reasoning_tokens=58)
    # Usage is read once, at the end of the answer (each chunk holds the totals so far), just before the Finish.
    assert [e for e in events if isinstance(e, UsageUpdate)] == [UsageUpdate(decoder.usage)]
    kinds = [type(e) for e in events]
    assert kinds.index(UsageUpdate) < kinds.index(Finish)
    assert decoder.output_bytes == len(parts[0].text.encode()) + len(b"2 + 2 = 4")
    # Blocks are numbered in order, each closed before the next starts.
    starts = [e.index for e in events if isinstance(e, BlockStart)]
    stops = [e.index for e in events if isinstance(e, BlockStop)]
    assert starts == stops == [0, 1]


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(["plain.sse", "function_call.sse", "thoughts.sse"]), cuts=st.lists(st.integers(0, 3000)))
def test_any_split_gives_the_same_events(case: str, cuts: list[int]) -> None:
    stream = (DATA / case).read_bytes()
    _, whole = decode_stream(stream, [])
    _, split = decode_stream(stream, cuts)
    assert collect(split) == collect(whole)
    assert [type(e) for e in split] == [type(e) for e in whole]


def test_an_error_chunk_is_a_stream_error() -> None:
    error = (DATA / "api_key_invalid.error.json").read_bytes().replace(b"\n", b"")
    decoder, events = decode_stream(b"data: " + error + b"\r\n\r\n", [])
    assert events == [StreamError("API key not valid. Please pass a valid API key.")]
    assert not decoder.complete


def test_a_last_event_without_its_blank_line_is_kept() -> None:
    stream = (DATA / "plain.sse").read_bytes().rstrip(b"\r\n")
    decoder, events = decode_stream(stream, [])
    assert decoder.complete and isinstance(events[-1], Finish)


def test_usage_and_upstream_errors() -> None:
    meta = {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 10, "thoughtsTokenCount": 5}
    assert gemini_usage(meta) == Usage(100, 15, cache_read_tokens=60, reasoning_tokens=5)
    assert gemini_usage({"prompt_token_count": 3, "tool_use_prompt_token_count": 2}) == Usage(5, 0)
    assert gemini_usage({"totalTokenCount": 0}) is None and gemini_usage("x") is None
    error = (DATA / "api_key_invalid.error.json").read_bytes()
    assert upstream_error(error) == ("API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")
    assert upstream_error(b"[" + error + b"]") == (
        "API key not valid. Please pass a valid API key.",
        "INVALID_ARGUMENT",
    )
    assert upstream_error(b"<html>bad gateway</html>") == ("<html>bad gateway</html>", None)
    assert len(upstream_error(b"x" * 2000)[0]) == 500


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
GOOD = orjson.loads((DATA / "function_call.response.json").read_bytes())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            out += _paths(item, (*prefix, k))
    return out


PATHS = _paths(GOOD)


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=JSON)
def test_any_json_anywhere_in_an_answer_is_an_answer_or_an_upstream_error(path: tuple[Any, ...], value: Any) -> None:
    payload = orjson.dumps(_replace(GOOD, path, value))
    try:
        gemini_response_to_canonical(payload)
    except GatewayError as err:
        assert err.error_type is ErrorType.UPSTREAM_ERROR
    decoder = GeminiStreamDecoder()
    decoder.feed(b"data: " + payload + b"\n\n")  # never raises: errors become StreamError events


def test_a_blocked_prompt_ends_a_stream_with_content_filter() -> None:
    blocked = (DATA / "safety_blocked.response.json").read_bytes().replace(b"\n", b"")
    decoder, events = decode_stream(b"data: " + blocked + b"\r\n\r\n", [])
    assert decoder.complete and events[-1] == Finish(StopReason.CONTENT_FILTER)
    feedback_only = b'data: {"promptFeedback": {"safetyRatings": []}, "usageMetadata": {"promptTokenCount": 3}}\n\n'
    decoder, events = decode_stream(feedback_only, [])
    assert not decoder.complete and not any(isinstance(e, Finish) for e in events)
