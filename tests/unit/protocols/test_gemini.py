"""The Gemini wire as clients speak it: credential, judging, translation, answers, streams and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from google.genai import errors, types
from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import Operation
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
    Tool,
    ToolArgumentsDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.gemini import (
    GeminiStreamEncoder,
    canonical_to_gemini_response,
    credential,
    decode_request,
    encode_error,
    gemini_to_canonical,
)
from keyrelay.protocols.sse import parse_blocks

DATA = Path(__file__).resolve().parents[2] / "data" / "gemini"


def translate(body: dict[str, Any], operation: Operation = Operation.CHAT) -> ChatRequest:
    return gemini_to_canonical(decode_request(operation, orjson.dumps(body), "gemini-2.5-flash"))


def refused(body: dict[str, Any] | bytes, operation: Operation = Operation.CHAT) -> GatewayError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(GatewayError) as caught:
        gemini_to_canonical(decode_request(operation, raw, "gemini-2.5-flash"))
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    return caught.value


USER = [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.mark.parametrize(
    ("headers", "query", "key"),
    [
        ([(b"x-goog-api-key", b"kr_live_a")], b"key=kr_live_b", "kr_live_a"),
        ([], b"alt=sse&key=kr_live_b&key=kr_live_c", "kr_live_b"),
        ([], b"key=kr%2Blive", "kr+live"),
        ([(b"x-goog-api-key", b"  ")], b"key=kr_live_b", "kr_live_b"),
        ([(b"authorization", b"Bearer kr_live_a")], b"alt=sse", None),
        ([], b"apikey=x&monkey=y", None),
    ],
)
def test_credential(headers: list[tuple[bytes, bytes]], query: bytes, key: str | None) -> None:
    assert credential(headers, query) == key


def test_judging_takes_model_and_stream_from_the_route() -> None:
    raw = orjson.dumps(
        {
            "contents": [{"parts": [{"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}],
            "generationConfig": {"maxOutputTokens": 50, "candidateCount": 3},
        }
    )
    judged = decode_request(Operation.CHAT, raw, "models/gemini-2.5-pro", stream=True)
    assert (judged.model, judged.stream, judged.client_wants_usage) == ("gemini-2.5-pro", True, True)
    assert (judged.max_output_tokens, judged.choices, judged.images) == (50, 3, 1)
    snake = orjson.dumps({"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": "AA=="}}]}],
                          "generation_config": {"max_output_tokens": 7}})  # fmt: skip
    judged = decode_request(Operation.CHAT, snake, "gemini-2.5-pro")
    assert (judged.max_output_tokens, judged.images, judged.stream) == (7, 1, False)


def test_count_tokens_takes_contents_or_a_whole_request() -> None:
    wrapped = {"generateContentRequest": {"model": "models/gemini-2.5-flash", "contents": USER}}
    assert decode_request(Operation.COUNT_TOKENS, orjson.dumps(wrapped), "gemini-2.5-flash").max_output_tokens == 0
    assert translate(wrapped, Operation.COUNT_TOKENS).messages[0].parts == [TextPart("hi")]
    assert translate({"contents": USER}, Operation.COUNT_TOKENS).messages[0].parts == [TextPart("hi")]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[]", "body"),
        (b"{", "body"),
        (b'{"contents": []}', "contents"),
        (b'{"contents": [{}], "generationConfig": {"maxOutputTokens": 0}}', "generationConfig.maxOutputTokens"),
        (b'{"contents": [{}], "generationConfig": {"candidateCount": 9}}', "generationConfig.candidateCount"),
        (b'{"contents": [{}], "generationConfig": []}', "generationConfig"),
        (b'{"contents": [{}], "contents": [{}]}', "contents"),
        (b'{"contents": [{}], "generationConfig": {"maxOutputTokens": 5, "max_output_tokens": 9}}', "maxOutputTokens"),
        (b'{"contents": [{}], "generationConfig": {}, "generation_config": {}}', "generationConfig"),
        (
            b'{"contents": [{}], "generationConfig": {"maxOutputT\\u006fkens": 5, "maxOutputTokens": 9}}',
            "maxOutputTokens",
        ),
        # An upper-case letter, escaped with upper-case hex digits, beside text escaped as ASCII JSON writes it.
        (
            b'{"contents": [{"parts": [{"text": "\\u4f60"}]}], "generationConfig": {}, "generation\\u0043onfig": {}}',
            "generationConfig",
        ),
    ],
)
def test_judging_refusals(raw: bytes, field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        decode_request(Operation.CHAT, raw, "gemini-2.5-flash")
    assert caught.value.field == field


def test_model_is_required() -> None:
    with pytest.raises(GatewayError) as caught:
        decode_request(Operation.CHAT, b'{"contents": [{}]}', "models/")
    assert caught.value.field == "model"


# What Gemini CLI sends for a chat turn (packages/core/src/config/defaultModelConfigs.ts: chat-base-2.5, and
# geminiChat's history with a function call carrying its thought signature).
GEMINI_CLI = {
    "contents": [
        {"role": "user", "parts": [{"text": "List the files here."}]},
        {
            "role": "model",
            "parts": [
                {"text": "I'll list them.", "thought": True},
                {"functionCall": {"name": "list_directory", "args": {"path": "."}}, "thoughtSignature": "c2ln"},
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "list_directory", "response": {"output": "a.txt\nb.txt"}}}],
        },
    ],
    "systemInstruction": {"role": "user", "parts": [{"text": "You are an interactive CLI agent."}]},
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "list_directory",
                    "description": "Lists a directory.",
                    "parametersJsonSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
                }
            ]
        }
    ],
    "generationConfig": {
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 8192},
    },
}


def test_a_gemini_cli_turn_translates() -> None:
    req = translate(GEMINI_CLI)
    assert req.system == [TextPart("You are an interactive CLI agent.")]
    assert [m.role for m in req.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert req.messages[1].parts == [
        ThinkingPart("I'll list them.", "c2ln"),
        ToolCallPart("call_1", "list_directory", '{"path":"."}'),
    ]
    assert req.messages[2].parts == [
        ToolResultPart("call_1", (TextPart('{"output":"a.txt\\nb.txt"}'),), name="list_directory")
    ]
    assert req.tools == [
        Tool("list_directory", "Lists a directory.", {"type": "object", "properties": {"path": {"type": "string"}}})
    ]
    assert (req.temperature, req.top_p, req.top_k) == (1, 0.95, 64)
    assert req.reasoning == Reasoning(budget_tokens=8192, include_thoughts=True)


def _snake(value: Any) -> Any:
    if isinstance(value, dict):
        names = {"args", "response", "parametersJsonSchema", "properties"}
        out = {}
        for key, item in value.items():
            new = "".join("_" + c.lower() if c.isupper() else c for c in key)
            out[new] = item if key in names else _snake(item)
        return out
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


def test_snake_case_names_mean_the_same() -> None:
    assert translate(_snake(GEMINI_CLI)) == translate(GEMINI_CLI)


def test_parts_tool_choice_and_formats() -> None:
    body = {
        "contents": [
            {
                "parts": [
                    {"text": "Look:"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://b/c.jpg"}},
                    {"inlineData": {"mimeType": "text/plain", "data": "aGVsbG8="}},
                ]
            },
            {"role": "model", "parts": [{"functionCall": {"id": "x1", "name": "f", "args": {}}}]},
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "x1", "name": "f", "response": {"error": "boom"}}},
                    {"text": "why?"},
                ],
            },
        ],
        "tools": [
            {"functionDeclarations": [{"name": "f"}, {"name": "g"}, {"name": "h"}]},
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f", "g"]}},
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT", "nullable": True, "properties": {"a": {"type": "INTEGER"}}},
            "stopSequences": ["x"],
            "candidateCount": 2,
            "thinkingConfig": {"thinkingLevel": "low"},
        },
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }
    req = translate(body)
    assert req.messages[0].parts == [
        TextPart("Look:"),
        ImagePart("image/png", data="iVBOR"),
        ImagePart("image/jpeg", url="gs://b/c.jpg"),
        TextPart("hello"),
    ]
    assert req.messages[2].parts == [ToolResultPart("x1", (TextPart('{"error":"boom"}'),), name="f", is_error=True)]
    assert req.messages[3].role is Role.USER and req.messages[3].parts == [TextPart("why?")]
    assert req.tool_choice == ToolChoice("required") and [t.name for t in req.tools] == ["f", "g"]
    assert req.response_format == {
        "type": "json_schema",
        "json_schema": {
            "name": "response",
            "schema": {"type": ["object", "null"], "properties": {"a": {"type": "integer"}}},
        },
    }
    assert (req.stop, req.n, req.reasoning) == (["x"], 2, Reasoning(effort="low", include_thoughts=False))
    body["toolConfig"] = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["h"]}}
    assert translate(body).tool_choice == ToolChoice("tool", "h")
    body["generationConfig"] = {"thinkingConfig": {"thinkingBudget": 0}, "responseMimeType": "application/json"}
    req = translate(body)
    assert req.reasoning is None and req.response_format == {"type": "json_object"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
        ({"tools": [{"codeExecution": {}}]}, "tools[0].codeExecution"),
        ({"tools": [{"url_context": {}}]}, "tools[0].url_context"),
        ({"cachedContent": "cachedContents/x"}, "body.cachedContent"),
        ({"generationConfig": {"presencePenalty": 0.5}}, "generationConfig.presencePenalty"),
        ({"generationConfig": {"seed": 1}}, "generationConfig.seed"),
        ({"generationConfig": {"responseMimeType": "text/x.enum"}}, "generationConfig.responseMimeType"),
        ({"generationConfig": {"responseModalities": ["IMAGE"]}}, "generationConfig.responseModalities"),
        ({"generationConfig": {"temperature": "hot"}}, "generationConfig.temperature"),
        (
            {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_LOW_AND_ABOVE"}]},
            "safetySettings[0].threshold",
        ),  # fmt: skip
        (
            {"toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}}},
            "toolConfig.functionCallingConfig",
        ),  # fmt: skip
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}]}]},
            "contents[0].parts[0].inlineData",
        ),  # fmt: skip
        (
            {"contents": [{"parts": [{"fileData": {"mimeType": "video/mp4", "fileUri": "gs://v"}}]}]},
            "contents[0].parts[0].fileData",
        ),  # fmt: skip
        ({"contents": [{"parts": [{"executableCode": {"code": "1"}}]}]}, "contents[0].parts[0].executableCode"),
        ({"contents": [{"role": "system", "parts": []}]}, "contents[0].role"),
        ({"contents": [{"parts": [{"text": "a", "thought": True}]}]}, "contents[0].parts[0].thought"),
        (
            {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
            "contents[0].parts[0].functionResponse",
        ),  # fmt: skip
    ],
)
def test_translation_refusals_name_the_field(extra: dict[str, Any], field: str) -> None:
    assert refused({"contents": USER, **extra}).field == field


def test_thought_pieces_merge_until_a_signature() -> None:
    parts = [
        {"text": "a", "thought": True},
        {"text": "b", "thought": True, "thoughtSignature": "s1"},
        {"text": "c", "thought": True},
        {"text": "answer", "thoughtSignature": "s2"},
        {"text": "more", "thoughtSignature": "s3"},
    ]
    req = translate({"contents": [*USER, {"role": "model", "parts": parts}]})
    assert req.messages[1].parts == [
        ThinkingPart("ab", "s1"),
        ThinkingPart("c", "s2"),
        TextPart("answer"),
        ThinkingPart("", "s3"),
        TextPart("more"),
    ]


# --- answers -----------------------------------------------------------------------------------------

CHAT = ChatRequest(model="gemini-2.5-flash", messages=[], reasoning=Reasoning(include_thoughts=True))
HIDDEN = ChatRequest(model="gemini-2.5-flash", messages=[])


def sdk(body: bytes) -> types.GenerateContentResponse:
    return types.GenerateContentResponse._from_response(response=orjson.loads(body), kwargs={})


def test_an_answer_parses_with_the_sdk() -> None:
    resp = ChatResponse(
        "r1",
        "claude-x",
        [ThinkingPart("hmm", "sig"), TextPart("Hello"), ToolCallPart("c1", "f", '{"a": 1}')],
        StopReason.TOOL_CALLS,
        Usage(10, 20, cache_read_tokens=4, reasoning_tokens=5),
    )
    parsed = sdk(canonical_to_gemini_response(resp, CHAT))
    # the client's model name, not the upstream's ("claude-x"): as in a stream (GeminiStreamEncoder's model, the
    # client's) and in the OpenAI and Anthropic wires' translated answers
    assert parsed.text == "Hello" and parsed.response_id == "r1" and parsed.model_version == "gemini-2.5-flash"
    assert parsed.function_calls is not None
    assert [(c.id, c.name, c.args) for c in parsed.function_calls] == [("c1", "f", {"a": 1})]
    candidate = parsed.candidates[0] if parsed.candidates else None
    assert candidate is not None and candidate.finish_reason == types.FinishReason.STOP
    meta = parsed.usage_metadata
    assert meta is not None
    assert (meta.prompt_token_count, meta.candidates_token_count, meta.thoughts_token_count) == (10, 15, 5)
    assert (meta.cached_content_token_count, meta.total_token_count) == (4, 30)


def test_hidden_thoughts_leave_their_signature_on_the_next_part() -> None:
    resp = ChatResponse("r", "m", [ThinkingPart("hmm", "sig"), ToolCallPart("c", "f", "not json")], StopReason.OTHER)
    body = orjson.loads(canonical_to_gemini_response(resp, HIDDEN))
    assert body["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"id": "c", "name": "f", "args": {}}, "thoughtSignature": "sig"}
    ]
    assert body["candidates"][0]["finishReason"] == "OTHER"


# --- streams -----------------------------------------------------------------------------------------


def stream_events(pieces: list[str], thoughts: list[str]) -> list[StreamEvent]:
    events: list[StreamEvent] = [MessageStart("up", "m")]
    index = 0
    if thoughts:
        events += [BlockStart(0, ThinkingPart("")), *(ThinkingDelta(0, t) for t in thoughts)]
        events += [SignatureDelta(0, "sig"), BlockStop(0)]
        index = 1
    events += [BlockStart(index, TextPart("")), *(TextDelta(index, p) for p in pieces), BlockStop(index)]
    events += [BlockStart(index + 1, ToolCallPart("c1", "f", "")), ToolArgumentsDelta(index + 1, '{"a"')]
    events += [ToolArgumentsDelta(index + 1, ": [1]}"), BlockStop(index + 1), Finish(StopReason.TOOL_CALLS)]
    return [*events, UsageUpdate(Usage(3, 9, reasoning_tokens=2))]


def encode(events: list[StreamEvent], batches: list[int], sse: bool, request: ChatRequest = CHAT) -> bytes:
    encoder = GeminiStreamEncoder(request, "resp-1", "gemini-x", sse=sse)
    out = []
    previous = 0
    for cut in [*sorted({b % (len(events) + 1) for b in batches}), len(events)]:
        out.append(encoder.events(events[previous:cut]))
        previous = cut
    out.append(encoder.end(None))
    return b"".join(out)


def chunks(stream: bytes, sse: bool) -> list[types.GenerateContentResponse]:
    if sse:
        assert b"\r\n\r\n" in stream
        return [sdk(e.data) for e in parse_blocks(stream)[0]]
    return [types.GenerateContentResponse._from_response(response=c, kwargs={}) for c in orjson.loads(stream)]


@settings(max_examples=80, deadline=None)
@given(
    pieces=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=6),
    thoughts=st.lists(st.text(min_size=1, max_size=6), max_size=3),
    batches=st.lists(st.integers(0, 30), max_size=5),
    sse=st.booleans(),
)
def test_any_stream_parses_with_the_sdk_and_keeps_the_text(
    pieces: list[str], thoughts: list[str], batches: list[int], sse: bool
) -> None:
    parsed = chunks(encode(stream_events(pieces, thoughts), batches, sse), sse)
    text = thought = ""
    calls = []
    for chunk in parsed:
        assert chunk.response_id == "resp-1" and chunk.model_version == "gemini-x"
        candidate = chunk.candidates[0] if chunk.candidates else None
        assert candidate is not None
        for part in candidate.content.parts or [] if candidate.content else []:
            if part.thought:
                thought += part.text or ""
            elif part.function_call is not None:
                calls.append((part.function_call.name, part.function_call.args))
            else:
                text += part.text or ""
    assert text == "".join(pieces) and thought == "".join(thoughts)
    assert calls == [("f", {"a": [1]})]
    last = parsed[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None and last.usage_metadata.thoughts_token_count == 2


def test_array_stream_and_errors() -> None:
    events = stream_events(["Hi"], [])
    whole = encode(events, [2, 4], sse=False, request=HIDDEN)
    assert whole.startswith(b"[{") and whole.endswith(b"}]") and b"}\r\n,{" not in whole and b"},\r\n{" in whole
    err = GatewayError(ErrorType.UPSTREAM_TIMEOUT)
    encoder = GeminiStreamEncoder(HIDDEN, "r", "m", sse=False)
    assert orjson.loads(encoder.error(err))[0]["error"]["status"] == "DEADLINE_EXCEEDED"
    assert encoder.end(None) == b"" and encoder.events(events) == b""
    encoder = GeminiStreamEncoder(HIDDEN, "r", "m", sse=True)
    out = encoder.events([MessageStart("u", "m"), BlockStart(0, TextPart("")), TextDelta(0, "x"), StreamError("cut")])
    frames = [orjson.loads(e.data) for e in parse_blocks(out)[0]]
    assert frames[0]["candidates"][0]["content"]["parts"] == [{"text": "x"}]
    assert frames[1]["error"]["message"] == "cut" and frames[1]["error"]["code"] == 502


def test_a_hidden_signature_with_nothing_after_it_ends_the_stream() -> None:
    encoder = GeminiStreamEncoder(HIDDEN, "r", "m")
    assert encoder.events([BlockStart(0, ThinkingPart("")), ThinkingDelta(0, "x"), SignatureDelta(0, "s")]) == b""
    last = orjson.loads(encoder.end(Usage(1, 1))[6:])
    assert last["candidates"][0]["content"]["parts"] == [{"text": "", "thoughtSignature": "s"}]


# --- errors ------------------------------------------------------------------------------------------

RPC = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    431: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_every_error_raises_the_right_sdk_error(error_type: ErrorType) -> None:
    err = GatewayError(error_type, field="contents", limit_source="key")
    body = encode_error(err, "req-1")
    response = httpx.Response(err.status, content=body, request=httpx.Request("POST", "http://x"))
    with pytest.raises(errors.APIError) as caught:
        errors.APIError.raise_for_response(response)
    expected = errors.ClientError if err.status < 500 else errors.ServerError
    assert type(caught.value) is expected
    assert (caught.value.code, caught.value.status, caught.value.message) == (err.status, RPC[err.status], err.message)
    info = orjson.loads(body)["error"]["details"][0]
    assert info["reason"] == error_type.name and info["domain"] == "keyrelay"
    assert info["metadata"] == {"code": err.code, "limit_source": "key", "param": "contents", "request_id": "req-1"}


# --- any JSON anywhere -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
RICH = {
    **GEMINI_CLI,
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["list_directory"]}},
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"}],
    "generationConfig": {
        **GEMINI_CLI["generationConfig"],  # type: ignore[dict-item]
        "maxOutputTokens": 10,
        "stopSequences": ["x"],
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "ARRAY", "items": {"type": "STRING"}}}},
    },
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            out += _paths(item, (*prefix, k))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def test_the_rich_request_translates() -> None:
    assert translate(RICH).tool_choice == ToolChoice("tool", "list_directory")


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(_paths(RICH)), value=JSON)
def test_any_json_in_any_field_is_a_translation_or_a_400(path: tuple[Any, ...], value: Any) -> None:
    raw = orjson.dumps(_replace(RICH, path, value))
    try:
        gemini_to_canonical(decode_request(Operation.CHAT, raw, "gemini-2.5-flash"))
    except GatewayError as err:
        assert err.error_type is ErrorType.INVALID_REQUEST and err.field
