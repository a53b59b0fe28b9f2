"""The Responses wire: judging, request → canonical, canonical → response and stream, the passthrough reader."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.relays import ResponsesRelay
from keyrelay.gateway.routes import match
from keyrelay.gateway.wires import INBOUND
from keyrelay.logs import SecretScrubber
from keyrelay.protocols.base import Operation, ProtocolName
from keyrelay.protocols.canonical import (
    FREE_FORM_PARAMETERS,
    BlockStart,
    BlockStop,
    ChatResponse,
    Finish,
    MessageStart,
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
    ToolResultPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.openai import decode_request as openai_decode
from keyrelay.protocols.responses import decode_request, open_reasoning, seal_reasoning, upstream_body
from keyrelay.protocols.responses_encode import ResponsesStreamEncoder, canonical_to_responses_response
from keyrelay.protocols.responses_translate import responses_to_canonical
from keyrelay.providers.responses_passthrough import ResponsesPassthroughReader
from tests.responses_golden import sse_events


def judged(**body: Any) -> Any:
    return decode_request(orjson.dumps({"model": "m", "input": "hi", **body}))


def translated(**body: Any) -> Any:
    return responses_to_canonical(judged(**body))


def refused(field: str, **body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        translated(**body)
    assert caught.value.field == field, caught.value.message
    return caught.value


# --- judging ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"model": ""}, "model"),
        ({"stream": "yes"}, "stream"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"provider": {"order": "x"}}, "provider.order"),
    ],
)
def test_judging_refuses(body: dict[str, Any], field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        judged(**body)
    assert caught.value.field == field and caught.value.status == 400


def test_judging_reads_what_the_gateway_needs() -> None:
    request = judged(
        stream=True,
        max_output_tokens=64,
        input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
        provider={"order": ["a"]},
    )
    assert (request.stream, request.max_output_tokens, request.images, request.protocol) == (
        True,
        64,
        1,
        ProtocolName.RESPONSES,
    )
    assert request.routing is not None and request.routing.order == ("a",)
    assert b"provider" not in request.raw  # keyrelay's own field never goes upstream
    with pytest.raises(GatewayError):
        decode_request(b'{"model": "a", "model": "b", "input": "x"}')  # judged fields once


# --- reasoning sealed in encrypted_content --------------------------------------------------------------------


@pytest.mark.parametrize(
    "part", [ThinkingPart("why", "sig=="), ThinkingPart("", None, "opaque-redacted"), ThinkingPart("no signature")]
)
def test_sealed_reasoning_round_trips(part: ThinkingPart) -> None:
    assert open_reasoning(seal_reasoning(part)) == part


@pytest.mark.parametrize("value", ["gAAAAABo-openai-encrypted", "kr1.!!!", "kr1." + "e30", "kr1.WzFd"])
def test_foreign_or_broken_encrypted_content_is_not_read(value: str) -> None:
    part = open_reasoning(value)
    assert part is None or part == ThinkingPart("")  # "e30" is {}: an empty thinking, harmless


# --- request → canonical ---------------------------------------------------------------------------------------


def test_a_conversation_of_items() -> None:
    sealed = seal_reasoning(ThinkingPart("thought", "sig"))
    chat = translated(
        instructions="Be brief.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {"role": "user", "content": "question"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            {"role": "system", "content": "late system"},
        ],
    )
    assert [p.text for p in chat.system] == ["Be brief.", "dev", "late system"]
    assert [m.role for m in chat.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert chat.messages[1].parts == [
        ThinkingPart("thought", "sig"),
        TextPart("Let me look."),
        ToolCallPart("c1", "f", '{"a":1}'),
        ToolCallPart("c2", "apply_patch", '{"input":"*** Begin Patch"}'),
    ]
    assert chat.messages[2].parts == [
        ToolResultPart("c1", (TextPart("one"),), "f"),
        ToolResultPart("c2", (TextPart("two"),), "apply_patch"),
    ]


def test_an_openai_reasoning_item_keeps_its_text_without_signature() -> None:
    item = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}], "encrypted_content": "gAAA"}
    chat = translated(input=[{"role": "user", "content": "q"}, item, {"role": "user", "content": "again"}])
    assert chat.messages[1].parts == [ThinkingPart("s")]


def test_tools_and_their_choice() -> None:
    grammar = {"type": "grammar", "syntax": "lark", "definition": "start: 'x'"}
    chat = translated(
        tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
            {"type": "custom", "name": "apply_patch", "description": "Patch.", "format": grammar},
            {"type": "custom", "name": "free"},
        ],
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "custom", "name": "apply_patch"}]},
        parallel_tool_calls=False,
    )
    (tool,) = chat.tools
    assert tool.name == "apply_patch" and tool.free_form and tool.parameters == FREE_FORM_PARAMETERS
    assert tool.description == "Patch.\n\nThe input must match this lark grammar:\nstart: 'x'"
    assert chat.tool_choice is not None and (chat.tool_choice.mode, chat.tool_choice.parallel) == ("required", False)
    named = translated(tools=[{"type": "custom", "name": "p"}], tool_choice={"type": "custom", "name": "p"})
    assert named.tool_choice is not None and (named.tool_choice.mode, named.tool_choice.name) == ("tool", "p")


def test_settings() -> None:
    schema = {"type": "object", "properties": {}}
    chat = translated(
        text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}, "verbosity": "low"},
        reasoning={"effort": "high", "summary": "auto"},
        max_output_tokens=100,
        temperature=0.5,
        top_p=0.9,
        safety_identifier="u1",
        metadata={"k": "v"},
        prompt_cache_key="c",
        store=False,
        include=["reasoning.encrypted_content"],
        stream_options={"include_obfuscation": False},
    )
    assert chat.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": schema, "strict": True},
    }
    assert chat.reasoning is not None and chat.reasoning.effort == "high"
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.user) == (100, 0.5, 0.9, "u1")
    assert translated(reasoning={"effort": "none"}).reasoning is None
    assert translated(text={"format": {"type": "json_object"}}).response_format == {"type": "json_object"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tools": [{"type": "custom", "name": "c", "format": {"type": "regexp"}}]}, "tools[0].format.type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "none", "tools": []}}, "tool_choice.mode"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "local_shell_call"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": [{"role": "user", "content": "x", "cache_control": {}}]}, "input[0].cache_control"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
        ({"input": [{"role": "system", "content": "only a system prompt"}]}, "input"),
        ({"include": ["file_search_call.results"]}, "include[0]"),
        ({"truncation": "auto"}, "truncation"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"something_new": 1}, "something_new"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"reasoning": {"summary": "long"}}, "reasoning.summary"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"stream_options": {"include_usage": True}}, "stream_options.include_usage"),
        ({"store": "no"}, "store"),
    ],
)
def test_what_a_translation_refuses(body: dict[str, Any], field: str) -> None:
    err = refused(field, **body)
    assert err.status == 400 and err.error_type is ErrorType.INVALID_REQUEST


# --- canonical → response --------------------------------------------------------------------------------------


def test_the_response_object() -> None:
    request = judged(
        tools=[{"type": "custom", "name": "apply_patch"}],
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        metadata={"k": "v"},
    )
    chat = responses_to_canonical(request)
    answer = ChatResponse(
        "msg_1",
        "upstream-model",
        [
            ThinkingPart("hmm", "sig"),
            TextPart("Patching."),
            ToolCallPart("toolu_1", "apply_patch", '{"input":"*** Begin Patch"}'),
        ],
        StopReason.TOOL_CALLS,
        Usage(10, 5, cache_read_tokens=4, reasoning_tokens=2),
        created=1_700_000_000,
    )
    body = json.loads(canonical_to_responses_response(answer, chat, request))
    assert (body["id"], body["object"], body["status"], body["model"]) == ("resp_msg_1", "response", "completed", "m")
    assert body["created_at"] == 1_700_000_000 and body["store"] is False and body["metadata"] == {"k": "v"}
    reasoning, message, call = body["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "hmm"}]
    assert open_reasoning(reasoning["encrypted_content"]) == ThinkingPart("hmm", "sig")
    assert message["content"][0]["text"] == "Patching." and message["status"] == "completed"
    assert call == {
        "id": call["id"],
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "toolu_1",
        "name": "apply_patch",
        "input": "*** Begin Patch",
    }
    assert body["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }
    assert len({item["id"] for item in body["output"]}) == 3


def test_a_cut_answer_is_incomplete() -> None:
    request = judged()
    answer = ChatResponse("x", "u", [TextPart("Once upon")], StopReason.LENGTH, Usage(1, 2))
    body = json.loads(canonical_to_responses_response(answer, responses_to_canonical(request), request))
    assert (body["status"], body["incomplete_details"], body["completed_at"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
        None,
    )
    assert body["output"][0]["status"] == "incomplete"


# --- the stream ------------------------------------------------------------------------------------------------


def encoder(**body: Any) -> ResponsesStreamEncoder:
    request = judged(**body)
    return ResponsesStreamEncoder(responses_to_canonical(request), request, "req_1", created_at=1)


def events_of(data: bytes) -> list[dict[str, Any]]:
    parsed = sse_events(data)
    for name, event in parsed:
        assert name == event["type"]
    return [event for _, event in parsed]


def test_stream_of_text_cut_by_the_limit() -> None:
    enc = encoder(stream_options={"include_obfuscation": False})
    out = enc.events(
        [
            MessageStart("m1", "u"),
            BlockStart(0, TextPart("")),
            TextDelta(0, "Once "),
            TextDelta(0, "upon"),
            BlockStop(0),
            Finish(StopReason.LENGTH),
            UsageUpdate(Usage(3, 2)),
        ]
    )
    out += enc.end(None) + enc.end(None) + enc.events([TextDelta(0, "late")])  # nothing after the end
    events = events_of(out)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert all("obfuscation" not in e for e in events)
    assert events[6]["text"] == "Once upon" and events[8]["item"]["status"] == "incomplete"
    final = events[-1]["response"]
    assert final["id"] == "resp_req_1" and final["usage"]["output_tokens"] == 2
    assert final["output"] == [events[8]["item"]]


def test_stream_of_reasoning_and_calls() -> None:
    enc = encoder(
        tools=[{"type": "custom", "name": "apply_patch"}, {"type": "function", "name": "f"}],
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )
    out = enc.events(
        [
            BlockStart(0, ThinkingPart("")),
            ThinkingDelta(0, "hm"),
            SignatureDelta(0, "sig"),
            BlockStop(0),
            BlockStart(1, ToolCallPart("c1", "apply_patch", "")),
            ToolArgumentsDelta(1, '{"input": "*** Begin'),
            ToolArgumentsDelta(1, ' Patch"}'),
            BlockStop(1),
            BlockStart(2, ToolCallPart("c2", "f", "")),
            ToolArgumentsDelta(2, '{"a":'),
            ToolArgumentsDelta(2, "1}"),
            BlockStop(2),
            Finish(StopReason.TOOL_CALLS),
        ]
    )
    events = events_of(out + enc.end(Usage(1, 1)))
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    by_type = {e["type"]: e for e in events}
    assert open_reasoning(events[7]["item"]["encrypted_content"]) == ThinkingPart("hm", "sig")
    assert by_type["response.custom_tool_call_input.done"]["input"] == "*** Begin Patch"
    assert by_type["response.function_call_arguments.done"]["arguments"] == '{"a":1}'
    assert all("obfuscation" in e for e in events if e["type"].endswith(".delta"))
    assert [item["output_index"] for item in events if item["type"] == "response.output_item.done"] == [0, 1, 2]


def test_stream_failing_before_and_after_content() -> None:
    enc = encoder()
    events = events_of(enc.error(GatewayError(ErrorType.UPSTREAM_RATE_LIMITED, "slow down")))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "rate_limit_exceeded"
    enc = encoder()
    stream: list[StreamEvent] = [BlockStart(0, TextPart("")), TextDelta(0, "a"), BlockStop(0)]
    out = enc.events(stream) + enc.events([TextDelta(0, "b")])
    out += enc.events([StreamError("boom")]) + enc.end(None)
    events = events_of(out)
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["error"]["code"] == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


# --- the passthrough reader and relay ------------------------------------------------------------------------


def frames(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": i}) + b"\n\n"
        for i, e in enumerate(events)
    )


CREATED = {"type": "response.created", "response": {"id": "resp_u", "status": "in_progress"}}
DELTA = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": "héllo"}
USAGE = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 3, "total_tokens": 8}
COMPLETED = {"type": "response.completed", "response": {"id": "resp_u", "status": "completed", "usage": USAGE}}


def test_reader_reads_usage_and_the_end_whatever_the_slicing() -> None:
    stream = b"\xef\xbb\xbf" + frames(CREATED, DELTA, COMPLETED)
    for cut in range(0, len(stream), 7):
        reader = ResponsesPassthroughReader()
        assert not reader.feed(stream[:cut]) and not reader.feed(stream[cut:]) and not reader.end()
        assert reader.complete and reader.terminal and reader.next_sequence == 3
        assert reader.usage == Usage(5, 3, cache_read_tokens=2)
        assert reader.output_bytes == len("héllo".encode())


def test_relay_ends_a_broken_stream_with_response_failed() -> None:
    relay = ResponsesRelay(INBOUND[ProtocolName.RESPONSES], ResponsesPassthroughReader(), SecretScrubber([]))
    relayed = relay.feed(frames(CREATED, DELTA))
    assert relay.commits(relayed) and relay.content_seen
    rest, failure = relay.close()
    assert failure is not None and failure.error_type is ErrorType.UPSTREAM_ERROR
    (event,) = events_of(rest)
    assert event["type"] == "response.failed" and event["sequence_number"] == 2
    assert event["response"]["id"] == "resp_u" and event["response"]["error"]["code"] == "server_error"
    assert relay.fail(failure) == b""  # one terminal event, never two


def test_relay_of_an_upstream_failure_adds_nothing() -> None:
    failed = {"type": "response.failed", "response": {"id": "resp_u", "status": "failed", "error": {"code": "x"}}}
    relay = ResponsesRelay(INBOUND[ProtocolName.RESPONSES], ResponsesPassthroughReader(), SecretScrubber([]))
    relay.feed(frames(CREATED, failed))
    assert relay.failed
    assert relay.close()[0] == b""
    error_only = ResponsesRelay(INBOUND[ProtocolName.RESPONSES], ResponsesPassthroughReader(), SecretScrubber([]))
    error_only.feed(frames(CREATED, {"type": "error", "code": "server_error", "message": "x"}))
    rest, failure = error_only.close()
    assert failure is not None and [e["type"] for e in events_of(rest)] == ["response.failed"]


# --- legacy completions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "choices", "bound"),
    [
        ({"prompt": "a"}, 1, 16),
        ({"prompt": [1, 2, 3], "max_tokens": 5}, 1, 5),
        ({"prompt": ["a", "b", "c"], "n": 2}, 6, 16),
        ({"prompt": [[1], [2]], "n": 2, "best_of": 3}, 6, 16),
    ],
)
def test_completions_cost_bound(body: dict[str, Any], choices: int, bound: int) -> None:
    request = openai_decode(Operation.COMPLETIONS, orjson.dumps({"model": "m", **body}))
    assert (request.choices, request.max_output_tokens) == (choices, bound)


def test_passthrough_body_leaves_out_keyrelays_sealed_reasoning() -> None:
    sealed = seal_reasoning(ThinkingPart("t", "sig"))
    items = [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "summary": [], "encrypted_content": sealed},
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-openai"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
    ]
    request = judged(input=items)
    sent = orjson.loads(upstream_body(request, "gpt-x"))
    assert sent["model"] == "gpt-x" and sent["input"] == [items[0], items[2], items[3]]
    plain = judged()
    assert upstream_body(plain, "m") is plain.raw  # nothing to change: the client's bytes


def test_only_the_cut_message_is_incomplete() -> None:
    request = judged(tools=[{"type": "function", "name": "f"}])
    parts = [TextPart("Looking."), ToolCallPart("c", "f", "{}"), TextPart("Once upon")]
    answer = ChatResponse("x", "u", parts, StopReason.LENGTH, Usage(1, 2))
    body = json.loads(canonical_to_responses_response(answer, responses_to_canonical(request), request))
    assert [(item["type"], item["status"]) for item in body["output"]] == [
        ("message", "completed"),
        ("function_call", "completed"),
        ("message", "incomplete"),
    ]


def test_reasoning_without_text_opens_no_summary_part() -> None:
    """Gemini can sign a thought it does not show: no summary part is streamed, and the item has no summary."""
    enc = encoder(reasoning={"effort": "low", "summary": "auto"})
    out = enc.events([BlockStart(0, ThinkingPart("")), SignatureDelta(0, "sig"), BlockStop(0)]) + enc.end(None)
    events = events_of(out)
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[3]["item"]["summary"] == []


def test_responses_paths_that_are_not_offered() -> None:
    for path in ("/v1/responses/input_tokens", "/v1/responses/compact"):
        with pytest.raises(GatewayError) as caught:
            match("POST", path, [], b"")
        assert caught.value.error_type is ErrorType.NOT_FOUND
    with pytest.raises(GatewayError) as caught:
        match("GET", "/v1/responses/resp_1", [], b"")
    assert caught.value.error_type is ErrorType.INVALID_REQUEST and "does not store" in caught.value.message
