"""Upstream streams as real servers send them: every SSE framing, spacing, missing usage, errors, echoed secrets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import SecretStr

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.protocols.openai_stream import estimate_tokens
from keyrelay.protocols.sse import parse_blocks
from keyrelay.testing.scripted_upstream import Gate, Script, ScriptedUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import assert_error, auth, usage_rows

SECRET = "sk-proj-Zz9TopSecretProviderKey0123456789abcdef"
PRICE_IN, PRICE_OUT = 150_000, 600_000  # micro-dollars per million tokens


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def settings(database_url: str, upstream: ScriptedUpstream) -> Settings:
    provider = ProviderConfig(
        name="rec",
        base_url=upstream.base_url,
        api_key=SecretStr(SECRET),
        models=(ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60"),),  # type: ignore[arg-type]
    )
    return Settings(database_url=database_url, usage_flush_interval_s=0.1, log_level="info", providers=(provider,))


def dumps(value: Any, spaced: bool) -> bytes:
    """Compact JSON as OpenAI sends it, or spaced JSON as Python's json module and several servers do."""
    return json.dumps(value, separators=(", ", ": ") if spaced else (",", ":")).encode()


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-AZ1xQ",
        "object": "chat.completion.chunk",
        "created": 1732000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


TEXT = ["Hello", " there", ", how", " can I", " help?"]
TOOL_ARGS = ['{"', "location", '":"', "Paris", ", France", '","', "unit", '":"', "celsius", '"}']
USAGE = {"prompt_tokens": 19, "completion_tokens": 31, "total_tokens": 50}


def text_chunks(usage: bool) -> list[dict[str, Any]]:
    extra = {"usage": None} if usage else {}
    out = [chunk({"role": "assistant", "content": "", "refusal": None}, **extra)]
    out += [chunk({"content": piece}, **extra) for piece in TEXT]
    out.append(chunk({}, "stop", **extra))
    if usage:
        out.append({**chunk({}), "choices": [], "usage": USAGE})
    return out


def tool_chunks() -> list[dict[str, Any]]:
    """A recorded gpt-4o-mini tool call, without the usage chunk (the upstream was not asked for it)."""
    first = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"index": 0, "id": "call_Jx3", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ],
        "refusal": None,
    }
    out = [chunk(first)]
    out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in TOOL_ARGS]
    out.append(chunk({}, "tool_calls"))
    return out


def frame(chunks: list[dict[str, Any]], *, ending: bytes = b"\n", spaced: bool = False) -> list[bytes]:
    """One SSE event per chunk with the given line ending, then ``[DONE]``."""
    events = [b"data: " + dumps(c, spaced) + ending + ending for c in chunks]
    return [*events, b"data: [DONE]" + ending + ending]


def client_events(text: str) -> list[dict[str, Any]]:
    events, _ = parse_blocks(text.encode())
    return [orjson.loads(e.data) for e in events if e.data != b"[DONE]"]


BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


# --- 1. every framing streams at once, and the usage chunk is read and hidden ------------------------------------


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
async def test_every_framing_streams_event_by_event(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream, ending: bytes
) -> None:
    key = await make_api_key(server, "frames@example.com")
    events = frame(text_chunks(usage=True), ending=ending)
    gate = Gate()
    upstream.queue(Script([events[0], gate, *events[1:]]))
    async with client.stream("POST", "/v1/chat/completions", json=BODY, headers=auth(key)) as response:
        assert response.status_code == 200
        reader = response.aiter_bytes()
        # The first event reaches the client while the upstream still holds back the rest of its stream.
        first = await asyncio.wait_for(reader.__anext__(), timeout=5)
        assert not gate._open.is_set()
        # The upstream's bytes, with only the "usage": null member the client did not ask for taken out.
        assert first == events[0].replace(b',"usage":null', b"")
        gate.open()
        rest = b"".join([piece async for piece in reader])
    received = (first + rest).decode()
    chunks = client_events(received)
    # The client did not ask for usage: no usage chunk and no "usage" member reach it.
    assert all("usage" not in c for c in chunks), received
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(TEXT)
    assert received.endswith("data: [DONE]" + ending.decode() * 2)
    [row] = await usage_rows(server, response.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (19, 31, False)
    # keyrelay asked the upstream for the usage chunk.
    assert orjson.loads(upstream.received[-1].body)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
async def test_sdk_reads_every_framing_split_at_every_kind_of_byte(
    server: RunningServer, upstream: ScriptedUpstream, ending: bytes
) -> None:
    key = await make_api_key(server, "sdk@example.com")
    stream = b"".join(frame(text_chunks(usage=True), ending=ending, spaced=True))
    # Network reads that cut events anywhere, inside CRLF pairs included.
    pieces: list[bytes | Gate] = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    upstream.queue(Script(pieces))
    sdk = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key)
    text = ""
    async with sdk:
        async for part in await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if part.choices:
                text += part.choices[0].delta.content or ""
            else:
                assert part.usage is not None and part.usage.completion_tokens == 31  # asked for: passed on
    assert text == "".join(TEXT)


async def test_spaced_json_usage_is_read_and_hidden(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "spaced@example.com")
    upstream.queue(Script(frame(text_chunks(usage=True), spaced=True)))
    r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
    assert r.status_code == 200
    assert all("usage" not in c for c in client_events(r.text)), r.text
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["completion_tokens"], row["usage_estimated"]) == (31, False)


# --- 2. without usage, everything the model produced is estimated ------------------------------------------------


def _output_bytes(chunks: list[dict[str, Any]]) -> int:
    total = 0
    for c in chunks:
        for choice in c["choices"]:
            delta = choice["delta"]
            total += len((delta.get("content") or "").encode())
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                total += len((function.get("name") or "").encode()) + len(function.get("arguments", "").encode())
    return total


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("kind", ["tool_call", "text"])
async def test_stream_without_usage_is_estimated_from_all_output(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream, spaced: bool, kind: str
) -> None:
    key = await make_api_key(server, "estimate@example.com")
    chunks = tool_chunks() if kind == "tool_call" else text_chunks(usage=False)
    upstream.queue(Script(frame(chunks, spaced=spaced)))
    r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
    assert r.status_code == 200
    [row] = await usage_rows(server, r.headers["x-request-id"])
    expected = estimate_tokens(_output_bytes(chunks))
    assert expected > 0
    assert (row["completion_tokens"], row["usage_estimated"], row["status"]) == (expected, True, 200)
    assert row["cost_micros"] > 0


async def test_unary_tool_call_without_usage_is_estimated(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "unary@example.com")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"q": "Paris"}'}}
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1732000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
    }
    upstream.queue(Script([dumps(answer, True)], headers={"Content-Type": "application/json"}, chunked=False))
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": False}, headers=auth(key))
    assert r.status_code == 200, r.text
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert row["usage_estimated"] in (True, 1)
    assert row["completion_tokens"] == estimate_tokens(len("get_weather") + len('{"q": "Paris"}'))


# --- 8. streams that end badly are recorded as errors, with their partial usage -----------------------------------


async def test_upstream_error_event_mid_stream_is_an_error(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "midfail@example.com")
    events = frame(text_chunks(usage=False))[:3]  # role and two words
    error = {"error": {"message": f"Internal failure for Bearer {SECRET}", "type": "server_error", "code": None}}
    upstream.queue(Script([*events, b"data: " + dumps(error, False) + b"\n\n"]))
    r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
    assert r.status_code == 200
    assert SECRET not in r.text and SECRET[:12] not in r.text  # the echoed provider key never reaches the client
    last = client_events(r.text)[-1]
    assert "error" in last
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (502, "UPSTREAM_ERROR")
    assert row["completion_tokens"] == estimate_tokens(len("Hello there"))


async def test_stream_that_stops_without_done_is_an_error(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "short@example.com")
    upstream.queue(Script(frame(text_chunks(usage=False))[:3]))  # ends cleanly, but mid-answer
    r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
    assert r.status_code == 200
    last = client_events(r.text)[-1]
    assert last["error"]["type"] == "UPSTREAM_ERROR" and last["error"]["code"] == "upstream_error"
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (502, "UPSTREAM_ERROR")


async def test_client_hanging_up_is_one_info_line(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    key = await make_api_key(server, "hangup@example.com")
    events = frame(text_chunks(usage=False))
    gate = Gate()  # never opened: the upstream holds the rest of the stream until the gateway gives up on it
    upstream.queue(Script([*events[:2], gate, *events[2:]]))
    caplog.set_level(logging.INFO)
    async with client.stream("POST", "/v1/chat/completions", json=BODY, headers=auth(key)) as response:
        await asyncio.wait_for(response.aiter_bytes().__anext__(), timeout=5)
        request_id = response.headers["x-request-id"]
    [row] = await usage_rows(server, request_id, timeout=10)
    assert (row["status"], row["error_type"]) == (499, "CLIENT_DISCONNECTED")
    assert row["completion_tokens"] == estimate_tokens(len("Hello"))
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert len(lines) == 1 and "status=499" in lines[0] and "CLIENT_DISCONNECTED" in lines[0], lines
    gate.open()


# --- 11. provider secrets echoed by an upstream are scrubbed everywhere --------------------------------------------


async def test_echoed_provider_secret_never_reaches_client_or_logs(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    key = await make_api_key(server, "echo@example.com")
    for status in (400, 500):
        body = {"error": {"message": f"Incorrect API key provided: Bearer {SECRET}", "code": "invalid_api_key"}}
        upstream.queue(Script([dumps(body, False)], status=status, headers={"Content-Type": "application/json"}))
    upstream.queue(Script([f"upstream exploded, auth was {SECRET}".encode()], status=503, chunked=False))
    caplog.set_level(logging.DEBUG)
    responses = [
        await client.post("/v1/chat/completions", json={**BODY, "stream": False}, headers=auth(key)) for _ in range(3)
    ]
    assert [r.status_code for r in responses] == [400, 502, 503]
    for r in responses:
        assert SECRET not in r.text and SECRET[:12] not in r.text, r.text
        assert "[REDACTED]" in r.json()["error"]["message"]
    assert upstream.received[0].headers["Authorization"] == f"Bearer {SECRET}"  # it was sent upstream
    assert SECRET[:12] not in caplog.text


async def test_upstream_error_code_passes_through(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "ctx@example.com")
    body = {
        "error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    upstream.queue(Script([dumps(body, False)], status=400, headers={"Content-Type": "application/json"}))
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": False}, headers=auth(key))
    err = assert_error_code(r, 400, "INVALID_REQUEST", "context_length_exceeded")
    assert "maximum context length" in err["message"]


def assert_error_code(r: httpx.Response, status: int, error_type: str, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert (err["type"], err["code"]) == (error_type, code)
    return err


# --- 11. the body keyrelay judges is the body the upstream gets ------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}',
        b'{"model":"gpt-4o-mini","stream":false,"messages":[{"role":"user","content":"hi"}],"stream":true}',
        b'{"model":"gpt-4o-mini","max_tokens":1,"messages":[{"role":"user","content":"hi"}],"max_tokens":100000}',
        b'{"model":"gpt-4o-mini","n":1, "messages":[{"role":"user","content":"hi"}], "n" : 128}',
    ],
    ids=["model", "stream", "max_tokens", "n"],
)
async def test_duplicate_judged_fields_are_refused(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream, raw: bytes
) -> None:
    key = await make_api_key(server, "dupes@example.com")
    r = await client.post(
        "/v1/chat/completions", content=raw, headers={**auth(key), "content-type": "application/json"}
    )
    err = assert_error(r, 400, "INVALID_REQUEST")
    assert "more than once" in err["message"] and err["param"] in raw.decode()
    assert upstream.received == []


async def test_judged_names_elsewhere_in_the_body_are_fine(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "nested@example.com")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"model": {}, "n": {}}}}}
    body = {**BODY, "stream": False, "tools": [tool], "messages": [{"role": "user", "content": '"model": "x"'}]}
    answer = {"id": "c", "object": "chat.completion", "choices": [], "usage": USAGE}
    upstream.queue(Script([dumps(answer, False)], headers={"Content-Type": "application/json"}, chunked=False))
    r = await client.post("/v1/chat/completions", json=body, headers=auth(key))
    assert r.status_code == 200, r.text


async def test_n_is_bounded(server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream) -> None:
    key = await make_api_key(server, "n@example.com")
    r = await client.post("/v1/chat/completions", json={**BODY, "n": 1_000_000}, headers=auth(key))
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "n"
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": "yes"}, headers=auth(key))
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "stream"
    assert upstream.received == []


# --- review findings: escapes, secrets on every path, streams that end oddly ----------------------------------------


async def test_escaped_duplicate_names_are_refused(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "escaped@example.com", allowed_models=["gpt-4o-mini"])
    for raw in (
        rb'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"mod\u0065l":"gpt-4o-mini"}',
        rb'{"model":"gpt-4o-mini","stream":false,"messages":[{"role":"user","content":"hi"}],"\u0073tream":true}',
    ):
        r = await client.post(
            "/v1/chat/completions", content=raw, headers={**auth(key), "content-type": "application/json"}
        )
        assert "more than once" in assert_error(r, 400, "INVALID_REQUEST")["message"]
    assert upstream.received == []


async def test_known_secret_is_scrubbed_from_answers_and_every_stream_event(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "echo2@example.com")
    answer = {
        "id": "c",
        "object": "chat.completion",
        "choices": [],
        "error": {"message": f"Bearer {SECRET}"},
        "usage": USAGE,
    }
    upstream.queue(Script([dumps(answer, False)], headers={"Content-Type": "application/json"}, chunked=False))
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": False}, headers=auth(key))
    assert r.status_code == 200 and SECRET[:12] not in r.text and "[REDACTED]" in r.text
    assert int(r.headers["content-length"]) == len(r.content)
    shapes = [
        b"event: error\ndata: upstream error: auth Bearer " + SECRET.encode() + b"\n\n",
        b'data: {"type":"error","message":"denied for ' + SECRET.encode() + b'"}\n\n',
        b'data: {"choices":[],"error":{"message":"' + SECRET[:30].encode() + b'"}}\n\n',
    ]
    for shape in shapes:
        upstream.queue(Script([*frame(text_chunks(usage=False))[:2], shape]))
        r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
        assert r.status_code == 200
        assert SECRET[:12] not in r.text, r.text
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert (row["status"], row["error_type"]) == (502, "UPSTREAM_ERROR")


async def test_cut_mid_event_ends_with_a_readable_error_event(
    server: RunningServer, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "cut@example.com")
    events = frame(text_chunks(usage=False))
    upstream.queue(Script([*events[:3], events[3][:25]]))  # the fourth event stops mid-JSON, then a clean end
    sdk = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    text = ""
    async with sdk:
        with pytest.raises(openai.APIError) as info:
            async for part in await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                text += part.choices[0].delta.content or ""
    assert text == "Hello there"  # what was complete reached the client
    assert "ended before it was complete" in str(info.value)


async def test_last_event_without_its_blank_line_is_completed(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "nodone@example.com")
    upstream.queue(Script([*frame(text_chunks(usage=True))[:-1], b"data: [DONE]\n"]))
    r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
    assert r.text.endswith("data: [DONE]\n\n\n") and '"error"' not in r.text
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["status"], row["completion_tokens"]) == (200, 31)


async def test_json_answer_to_a_stream_request_is_billed_and_refused(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "notsse@example.com")
    answer = {
        "id": "c",
        "object": "chat.completion",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 400},
    }
    upstream.queue(Script([dumps(answer, True)], headers={"Content-Type": "application/json"}, chunked=False))
    r = await client.post("/v1/chat/completions", json=BODY, headers=auth(key))
    err = assert_error(r, 502, "UPSTREAM_ERROR")
    assert "application/json" in err["message"]
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["completion_tokens"], row["usage_estimated"], row["status"]) == (400, False, 502)
    assert len(upstream.received) == 1  # not retried elsewhere: the work was done and is billed once


async def test_absurd_upstream_retry_after_is_capped(
    server: RunningServer, client: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    key = await make_api_key(server, "wait@example.com")
    body = dumps({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, False)
    headers = {"Content-Type": "application/json", "Retry-After": "99999999999999999999"}
    upstream.queue(Script([body], status=429, headers=headers, chunked=False))
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": False}, headers=auth(key))
    assert_error(r, 429, "UPSTREAM_RATE_LIMITED")
    assert r.headers["retry-after"] == "86400"
