"""Outbound OpenAI: canonical → request body, answer body and stream → canonical, usage, error bodies."""

from __future__ import annotations

from pathlib import Path

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
    Part,
    Reasoning,
    Role,
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
from keyrelay.providers.openai import (
    canonical_to_openai_request,
    effort_for_budget,
    openai_response_to_canonical,
    openai_usage,
    upstream_error,
)
from keyrelay.providers.openai_decode import OpenAIStreamDecoder

DATA = Path(__file__).resolve().parents[2] / "data" / "openai"


def _decode(raw: bytes, cuts: list[int] | None = None) -> tuple[list[StreamEvent], OpenAIStreamDecoder]:
    decoder = OpenAIStreamDecoder()
    events: list[StreamEvent] = []
    start = 0
    for cut in sorted(cuts or []):
        events += decoder.feed(raw[start:cut])
        start = cut
    events += decoder.feed(raw[start:])
    events += decoder.end()
    return events, decoder


def _collect(events: list[StreamEvent]) -> ChatResponse:
    """A stream's events folded into the answer they describe, checking the block grammar on the way."""
    parts: list[Part] = []
    open_index: int | None = None
    texts: dict[int, list[str]] = {}
    heads: dict[int, TextPart | ThinkingPart | ToolCallPart] = {}
    start = events[0]
    assert isinstance(start, MessageStart)
    response = ChatResponse(start.id, start.model, parts, None)
    for event in events[1:]:
        match event:
            case BlockStart(index=index, part=part):
                assert open_index is None and index == len(heads)
                open_index, heads[index], texts[index] = index, part, []
            case TextDelta(index=index, text=text) | ThinkingDelta(index=index, text=text):
                assert index == open_index
                texts[index].append(text)
            case ToolArgumentsDelta(index=index, partial_json=text):
                assert index == open_index and isinstance(heads[index], ToolCallPart)
                texts[index].append(text)
            case BlockStop(index=index):
                assert index == open_index
                open_index = None
                head, body = heads[index], "".join(texts[index])
                match head:
                    case TextPart():
                        parts.append(TextPart(body))
                    case ThinkingPart():
                        parts.append(ThinkingPart(body))
                    case ToolCallPart(id=call_id, name=name):
                        parts.append(ToolCallPart(call_id, name, body))
            case Finish(stop_reason=reason):
                assert open_index is None and response.stop_reason is None
                response.stop_reason = reason
            case UsageUpdate(usage=usage):
                response.usage = usage
            case _:
                raise AssertionError(f"unexpected {event}")
    return response


# --- golden answers: the body and the stream give the same ChatResponse ---------------------------


def test_plain_completion_body() -> None:
    response = openai_response_to_canonical((DATA / "plain.response.json").read_bytes())
    assert response.parts == [TextPart("Hello! How can I assist you today?")]
    assert response.stop_reason is StopReason.STOP
    assert response.usage == Usage(19, 10)
    assert response.id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT" and response.created == 1741569952


def test_tool_calls_completion_body() -> None:
    response = openai_response_to_canonical((DATA / "tool_calls.response.json").read_bytes())
    assert response.parts == [ToolCallPart("call_abc123", "get_current_weather", '{\n"location": "Boston, MA"\n}')]
    assert response.stop_reason is StopReason.TOOL_CALLS
    assert response.usage == Usage(82, 17)


def test_streamed_text_with_usage_chunk() -> None:
    events, decoder = _decode((DATA / "stream_text.sse").read_bytes())
    response = _collect(events)
    assert response.parts == [TextPart("Hello! How can I assist you today?")]
    assert response.stop_reason is StopReason.STOP and response.usage == Usage(19, 10)
    assert decoder.usage == Usage(19, 10) and decoder.complete
    assert decoder.output_bytes == len(b"Hello! How can I assist you today?")
    # the same answer as the documented body
    body = openai_response_to_canonical((DATA / "plain.response.json").read_bytes())
    assert (response.parts, response.stop_reason, response.usage) == (body.parts, body.stop_reason, body.usage)


def test_streamed_parallel_tool_calls() -> None:
    events, decoder = _decode((DATA / "stream_parallel_tools.sse").read_bytes())
    response = _collect(events)
    assert response.parts == [
        ToolCallPart("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", '{"location":"Paris, France"}'),
        ToolCallPart("call_ABPtr6tWztZ1cRE0aHnHkr2y", "get_weather", '{"location":"Bogotá, Colombia"}'),
    ]
    assert response.stop_reason is StopReason.TOOL_CALLS
    assert response.usage == Usage(71, 46, cache_read_tokens=64)
    assert decoder.complete


def test_interleaved_tool_call_deltas_give_whole_blocks_in_order() -> None:
    def chunk(delta: object, finish: str | None = None) -> bytes:
        body = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def call(index: int, arguments: str, name: str | None = None) -> object:
        head = {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}
        return {
            "tool_calls": [{"index": index, **head} if name else {"index": index, "function": {"arguments": arguments}}]
        }

    raw = b"".join(
        [
            chunk({"role": "assistant", "content": "Let me look."}),
            chunk(call(0, "", "a")),
            chunk(call(1, '{"y":', "b")),
            chunk(call(0, '{"x":')),
            chunk(call(1, "2}")),
            chunk(call(0, "1}")),
            chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    response = _collect(_decode(raw)[0])
    assert response.parts == [
        TextPart("Let me look."),
        ToolCallPart("call_0", "a", '{"x":1}'),
        ToolCallPart("call_1", "b", '{"y":2}'),
    ]


def test_reasoning_content_opens_a_thinking_block_before_text() -> None:
    raw = (
        b'data: {"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"reasoning_content":"Hm"}}]}\n\n'
        b'data: {"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"reasoning":", yes."}}]}\n\n'
        b'data: {"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":"Yes."}}]}\n\n'
        b'data: {"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":{},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":4}}}\n\n'
    )
    events, decoder = _decode(raw)
    response = _collect(events)
    assert response.parts == [ThinkingPart("Hm, yes."), TextPart("Yes.")]
    assert response.stop_reason is StopReason.LENGTH
    assert response.usage == Usage(5, 9, reasoning_tokens=4)
    assert decoder.complete  # a finish_reason without [DONE]: some compatible servers end that way


def test_error_event_mid_stream() -> None:
    raw = (DATA / "stream_text.sse").read_bytes().split(b"\n\n")[1] + b"\n\n"
    raw += b'data: {"error":{"message":"The server had an error","type":"server_error","code":null}}\n\n'
    events, decoder = _decode(raw)
    assert events[-1] == StreamError("The server had an error")
    assert not decoder.complete


def test_stream_cut_mid_event_is_not_complete() -> None:
    raw = (DATA / "stream_text.sse").read_bytes()
    events, decoder = _decode(raw[: raw.index(b'"finish_reason":"stop"')])
    assert not decoder.complete and not any(isinstance(e, Finish) for e in events)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_byte_split_gives_the_same_events(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["stream_text.sse", "stream_parallel_tools.sse"]))
    raw = (DATA / name).read_bytes()
    if data.draw(st.booleans()):
        raw = raw.replace(b"\n", b"\r\n")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert _decode(raw, cuts)[0] == _decode(raw)[0]


def test_answer_body_that_is_not_a_completion_is_an_upstream_error() -> None:
    for body in (b"not json", b"[]", b'{"choices":[]}', b'{"choices":[{"message":3}]}', b'{"error":{"message":"x"}}'):
        with pytest.raises(GatewayError) as info:
            openai_response_to_canonical(body)
        assert info.value.error_type is ErrorType.UPSTREAM_ERROR


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    ),
    st.sampled_from(["choices", "message", "tool_calls", "content", "usage", "finish_reason", "function"]),
)
def test_any_json_in_an_answer_field_is_a_response_or_an_upstream_error(value: object, where: str) -> None:
    body = orjson.loads((DATA / "tool_calls.response.json").read_bytes())
    choice = body["choices"][0]
    targets = {
        "choices": (body, "choices"),
        "message": (choice, "message"),
        "tool_calls": (choice["message"], "tool_calls"),
        "content": (choice["message"], "content"),
        "usage": (body, "usage"),
        "finish_reason": (choice, "finish_reason"),
        "function": (choice["message"]["tool_calls"][0], "function"),
    }
    holder, key = targets[where]
    holder[key] = value
    try:
        openai_response_to_canonical(orjson.dumps(body))
    except GatewayError as err:
        assert err.error_type is ErrorType.UPSTREAM_ERROR
    events, _ = _decode(
        b"data: " + orjson.dumps({**body, "choices": [{**choice, "delta": choice["message"]}]}) + b"\n\n"
    )
    assert all(isinstance(e, StreamEvent) for e in events)


# --- usage and errors -----------------------------------------------------------------------------


def test_usage_keeps_cached_and_reasoning_tokens_inside_the_totals() -> None:
    usage = openai_usage(
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1920},
            "completion_tokens_details": {"reasoning_tokens": 192},
        }
    )
    assert usage == Usage(2006, 300, cache_read_tokens=1920, reasoning_tokens=192)
    assert usage is not None and usage.uncached_prompt_tokens == 86


@pytest.mark.parametrize("value", [None, [], {"prompt_tokens": "3"}, {"prompt_tokens": True}, {"prompt_tokens": -1}])
def test_malformed_usage_is_none(value: object) -> None:
    assert openai_usage(value) is None


def test_upstream_error_reads_message_and_code() -> None:
    message, code = upstream_error((DATA / "error.response.json").read_bytes())
    assert message.startswith("This model's maximum context length is 128000 tokens.")
    assert code == "context_length_exceeded"
    assert upstream_error(b"<html>bad gateway</html>") == ("<html>bad gateway</html>", None)


# --- canonical → request --------------------------------------------------------------------------


def _request(**fields: object) -> ChatRequest:
    base: dict[str, object] = {"model": "client-model", "messages": [Message(Role.USER, [TextPart("Hi")])]}
    return ChatRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_request_body_full_conversation() -> None:
    req = _request(
        system=[TextPart("Be brief."), TextPart("Be kind.")],
        messages=[
            Message(Role.USER, [TextPart("Weather?"), ImagePart(media_type="image/png", data="iVBORw0KGgo=")]),
            Message(
                Role.ASSISTANT,
                [ThinkingPart("think", signature="sig"), TextPart("Checking."), ToolCallPart("c1", "w", '{"a":1}')],
            ),
            Message(Role.TOOL, [ToolResultPart("c1", (TextPart("sunny"),), "w", is_error=True)]),
            Message(Role.USER, [ImagePart(url="https://example.com/a.png", detail="low")]),
        ],
        max_tokens=256,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        stream=True,
        tools=[Tool("w", "weather", {"type": "object"})],
        tool_choice=ToolChoice("tool", "w", parallel=False),
        reasoning=Reasoning(budget_tokens=4096),
        user="u1",
    )
    body = orjson.loads(canonical_to_openai_request(req, "gpt-4.1"))
    assert body == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}],
            },
        ],
        "max_completion_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "tools": [
            {"type": "function", "function": {"name": "w", "description": "weather", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "w"}},
        "parallel_tool_calls": False,
        "reasoning_effort": "medium",
        "user": "u1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_plain_text_user_message_is_a_string_and_tool_calls_only_have_null_content() -> None:
    req = _request(
        messages=[Message(Role.USER, [TextPart("Hi")]), Message(Role.ASSISTANT, [ToolCallPart("c", "f", "{}")])]
    )
    messages = orjson.loads(canonical_to_openai_request(req, "m"))["messages"]
    assert messages[0] == {"role": "user", "content": "Hi"}
    assert messages[1]["content"] is None


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (_request(top_k=40), "top_k"),
        (_request(n=2), "n"),
        (
            _request(
                messages=[Message(Role.TOOL, [ToolResultPart("c", (ImagePart(media_type="image/png", data="AA=="),))])]
            ),
            "messages[0][0].content[0]",
        ),
        (_request(messages=[Message(Role.USER, [ImagePart()])]), "messages[0].content[0]"),
        (_request(tool_choice=ToolChoice("required")), "tool_choice"),
    ],
)
def test_request_refusals_name_the_field(req: ChatRequest, field: str) -> None:
    with pytest.raises(GatewayError) as info:
        canonical_to_openai_request(req, "m")
    assert info.value.error_type is ErrorType.INVALID_REQUEST and info.value.field == field


@pytest.mark.parametrize(
    ("reasoning", "effort"),
    [
        (Reasoning(effort="high", budget_tokens=10), "high"),
        (Reasoning(budget_tokens=1024), "low"),
        (Reasoning(budget_tokens=2048), "low"),
        (Reasoning(budget_tokens=2049), "medium"),
        (Reasoning(budget_tokens=8192), "medium"),
        (Reasoning(budget_tokens=32000), "high"),
        (Reasoning(budget_tokens=0), None),
        (Reasoning(budget_tokens=-1), None),
    ],
)
def test_budget_to_effort_table(reasoning: Reasoning, effort: str | None) -> None:
    assert effort_for_budget(reasoning) == effort


def test_top_k_is_the_extension_field_for_openai_compatible_upstreams() -> None:
    """``top_k`` is refused toward OpenAI itself, and sent as vLLM's ``top_k`` toward an openai-compatible one."""
    req = _request(top_k=40)
    with pytest.raises(GatewayError) as caught:
        canonical_to_openai_request(req, "m")
    assert caught.value.field == "top_k"
    body = orjson.loads(canonical_to_openai_request(req, "m", extensions=True))
    assert body["top_k"] == 40
    assert "top_k" not in orjson.loads(canonical_to_openai_request(_request(), "m", extensions=True))
