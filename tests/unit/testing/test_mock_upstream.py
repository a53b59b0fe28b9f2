"""Tests of the mock OpenAI upstream, driven mostly through the official ``openai`` SDK."""

from __future__ import annotations

import asyncio
import base64
import math
import signal
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from openai.types.chat import ChatCompletionMessageParam

from keyrelay.testing import mock_upstream
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import (
    MOCK_KEY,
    REPLY_TEXT,
    MockOptions,
    MockState,
    MockUpstream,
    count_prompt_tokens,
    create_mock_app,
    embedding_vector,
    reply_words,
    run_in_thread,
)
from keyrelay.testing.poll import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]
USER_HI: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Hello there"}
]  # 11 bytes -> ceil(11/4) + 3 = 6 prompt tokens
REPLY_WORD_LIST = REPLY_TEXT.split(" ")


async def _sse_frames(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, list[bytes]]:
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = b"".join([part async for part in response.aiter_bytes()])
    assert raw.endswith(b"\n\n")
    return response, raw[:-2].split(b"\n\n")


def _chunks(frames: list[bytes]) -> list[dict[str, Any]]:
    assert all(frame.startswith(b"data: ") for frame in frames)
    assert frames[-1] == b"data: [DONE]"
    return [orjson.loads(frame[len(b"data: ") :]) for frame in frames[:-1]]


# ---------------------------------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_chat_non_streaming(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    clock = FakeClock(datetime(2026, 3, 4, 5, 6, 7, 800_000, tzinfo=UTC))
    mock.options.clock = clock
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER_HI)
    assert raw.headers["x-request-id"].startswith("req_")
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.created == int(clock.now_utc().timestamp())  # whole seconds, as OpenAI's
    assert completion.system_fingerprint
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == REPLY_TEXT
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 9, 15)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.asyncio
async def test_chat_wire_format(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER_HI})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "service_tier",
        "system_fingerprint",
    ]
    assert body["choices"][0]["message"]["refusal"] is None
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_token_counting_rule() -> None:
    messages = [
        {"role": "system", "content": "abcde"},  # 5 bytes
        {"role": "user", "content": [{"type": "text", "text": "héllo"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]  # 5 + 6 = 11 bytes -> ceil(11 / 4) = 3, plus 3 per message
    assert count_prompt_tokens(messages) == 3 + 9
    assert reply_words(11) == [*REPLY_WORD_LIST, *REPLY_WORD_LIST[:2]]
    assert reply_words(0) == []


@pytest.mark.asyncio
async def test_max_tokens_truncates(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI, max_tokens=3)
    assert completion.choices[0].message.content == "This is a"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3

    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER_HI,
        max_completion_tokens=50,
    )
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"

    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER_HI,
        max_completion_tokens=4,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert contents == ["This ", "is ", "a ", "mock"]
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.asyncio
async def test_reply_words_option_is_live(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.options.reply_words = 12
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI)
    assert completion.choices[0].message.content == " ".join(reply_words(12))
    assert completion.usage is not None and completion.usage.completion_tokens == 12


@pytest.mark.asyncio
async def test_streaming_without_usage(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + len(REPLY_WORD_LIST) + 1
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == "gpt-4o-mini" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == "" and first.finish_reason is None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)

    response, frames = await _sse_frames(http, {"model": "gpt-4o-mini", "messages": USER_HI, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    raw_chunks = _chunks(frames)
    assert all("usage" not in chunk for chunk in raw_chunks)
    assert raw_chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert raw_chunks[1]["choices"][0]["delta"] == {"content": "This "}
    assert raw_chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


@pytest.mark.asyncio
async def test_streaming_with_usage(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER_HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + len(REPLY_WORD_LIST) + 2
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (6, 9, 15)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"

    body = {"model": "gpt-4o-mini", "messages": USER_HI, "stream": True, "stream_options": {"include_usage": True}}
    _, frames = await _sse_frames(http, body)
    raw_chunks = _chunks(frames)
    assert all("usage" in chunk and chunk["usage"] is None for chunk in raw_chunks[:-1])
    assert raw_chunks[-1]["choices"] == [] and raw_chunks[-1]["usage"]["total_tokens"] == 15


@pytest.mark.asyncio
async def test_chat_validation_errors(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"

    response = await http.post("/v1/chat/completions", json={"messages": USER_HI})
    assert response.status_code == 400 and "model" in response.json()["error"]["message"]

    response = await http.post("/v1/chat/completions", json={"model": "gpt-4o"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"

    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": USER_HI, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "stream_options"

    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert caught.value.code == "empty_array"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI, max_tokens=0)


@pytest.mark.asyncio
async def test_unknown_route_is_openai_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/chat/completions")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"
    response = await http.post("/v1/nope", json={})
    assert response.status_code == 404


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings and models
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_embeddings_base64_default_and_float(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    default = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert mock.requests[-1].body["encoding_format"] == "base64"  # the SDK asks for base64 by default
    assert default.object == "list" and default.model == "text-embedding-3-small"
    assert [item.index for item in default.data] == [0, 1]
    assert default.data[0].embedding == embedding_vector("alpha")
    assert default.data[1].embedding == embedding_vector("beta")
    assert len(default.data[0].embedding) == 8
    assert math.isclose(math.fsum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-5)
    assert (default.usage.prompt_tokens, default.usage.total_tokens) == (2 + 1, 2 + 1)  # ceil(5/4) + ceil(4/4)

    floats = await client.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert floats.data[0].embedding == default.data[0].embedding

    sized = await client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=32)
    assert len(sized.data[0].embedding) == 32

    tokens = await client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 4


@pytest.mark.asyncio
async def test_embeddings_wire_format(http: httpx.AsyncClient) -> None:
    body = {"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"}
    response = await http.post("/v1/embeddings", json=body)
    data = response.json()["data"][0]
    assert data["object"] == "embedding" and isinstance(data["embedding"], str)
    assert list(struct.unpack("<8f", base64.b64decode(data["embedding"]))) == embedding_vector("alpha")

    response = await http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": []})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"


@pytest.mark.asyncio
async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [model.id for model in page.data] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert all(model.object == "model" and model.owned_by for model in page.data)

    model = await client.models.retrieve("gpt-4o")
    assert model.id == "gpt-4o" and model.object == "model" and model.created > 0

    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


@pytest.mark.asyncio
async def test_expected_key() -> None:
    async with MockUpstream(MockOptions(expected_key="sk-good")) as upstream:
        async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-bad", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as caught:
                await bad.models.list()
            assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-good", max_retries=0) as good:
            page = await good.models.list()
            assert page.data
        async with httpx.AsyncClient(base_url=upstream.origin) as raw:
            response = await raw.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER_HI})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


# ---------------------------------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fault_429(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini-fail-429", messages=USER_HI)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="emb-fail-429", input="x")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("fail-500", openai.InternalServerError, 500),
        ("fail-503", openai.InternalServerError, 503),
        ("fail-400", openai.BadRequestError, 400),
    ],
)
async def test_fault_status(
    client: openai.AsyncOpenAI, model: str, error: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as caught:
        await client.chat.completions.create(model=model, messages=USER_HI, stream=True)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and set(caught.value.body) == {"message", "type", "param", "code"}


@pytest.mark.asyncio
async def test_fault_cut_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="x-cut-stream", messages=USER_HI, stream=True)
    received: list[str | None] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "This ", "is ", "a "]
    await stream.close()

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="x-cut-stream", messages=USER_HI)


@pytest.mark.asyncio
async def test_fault_hang_times_out_and_stop_releases_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were the hanging handler left to the server's shutdown timeout (an hour here), stop() would not return
    # before the test's deadline: it must release the handler itself.
    monkeypatch.setattr(mock_upstream, "_SHUTDOWN_TIMEOUT_S", 3600.0)
    async with (
        MockUpstream() as mock,
        openai.AsyncOpenAI(base_url=mock.base_url, api_key="x", max_retries=0, timeout=60.0) as client,
    ):
        with pytest.raises(openai.APITimeoutError):
            await client.with_options(timeout=0.2).chat.completions.create(model="hang", messages=USER_HI)

        async def stop_once_hanging() -> None:
            await wait_until(
                lambda: any(r.body and r.body["model"] == "gpt-hang" for r in mock.requests),
                what="the hanging request reached the mock",
            )
            await mock.stop()

        request = client.chat.completions.create(model="gpt-hang", messages=USER_HI)
        async with asyncio.timeout(10):
            outcome, stopped = await asyncio.gather(request, stop_once_hanging(), return_exceptions=True)
        # The connection was dropped by the stopping server, not given up by the client.
        assert isinstance(outcome, openai.APIConnectionError) and not isinstance(outcome, openai.APITimeoutError)
        assert stopped is None


@pytest.mark.asyncio
async def test_fault_held_answers_when_released_in_any_order(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    first = asyncio.ensure_future(client.chat.completions.create(model="gpt-held", messages=USER_HI, max_tokens=1))
    await wait_until(lambda: len(mock.state.held) == 1, what="the held requests arrived")
    second = asyncio.ensure_future(client.chat.completions.create(model="gpt-held", messages=USER_HI, max_tokens=2))
    await wait_until(lambda: len(mock.state.held) == 2, what="the held requests arrived")
    mock.state.release(1)
    assert (await second).usage.completion_tokens == 2  # type: ignore[union-attr]
    assert not first.done()
    mock.state.release(0)
    assert (await first).usage.completion_tokens == 1  # type: ignore[union-attr]
    with pytest.raises(IndexError):
        mock.state.release(2)

    # A held request still waiting when the server stops is dropped, and the stop does not wait for it.
    late = asyncio.ensure_future(client.chat.completions.create(model="gpt-held", messages=USER_HI))
    await wait_until(lambda: len(mock.state.held) == 3, what="the held requests arrived")
    await mock.stop()
    with pytest.raises(openai.APIConnectionError):
        await late


@pytest.mark.asyncio
async def test_fault_slow_ttfb_and_global_delay(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    clock = FakeClock()
    mock.options.sleep = clock.sleep  # the mock's pauses pass on the fake clock, at once
    started = clock.monotonic()
    await client.chat.completions.create(model="slow-ttfb", messages=USER_HI)
    assert clock.monotonic() - started == pytest.approx(0.1)  # slow_ms=100 in the fixture
    await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI)
    assert clock.monotonic() - started == pytest.approx(0.1)  # no pause for other models

    mock.options.delay_ms = 60
    started = clock.monotonic()
    await client.models.list()
    assert clock.monotonic() - started == pytest.approx(0.06)


@pytest.mark.asyncio
async def test_fault_no_usage(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    completion = await client.chat.completions.create(model="no-usage", messages=USER_HI)
    assert completion.usage is None
    assert completion.choices[0].message.content == REPLY_TEXT

    stream = await client.chat.completions.create(
        model="no-usage",
        messages=USER_HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"

    body = {"model": "no-usage", "messages": USER_HI, "stream": True, "stream_options": {"include_usage": True}}
    _, frames = await _sse_frames(http, body)
    assert all("usage" not in chunk for chunk in _chunks(frames))

    response = await http.post("/v1/embeddings", json={"model": "emb-no-usage", "input": "x"})
    assert "usage" not in response.json()


@pytest.mark.asyncio
async def test_fault_paced_streams_incrementally(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    pauses: list[float] = []
    received = asyncio.Event()

    async def pause(seconds: float) -> None:
        # Before each chunk after the first, hold the mock until the client has the previous one: a mock that
        # buffered its stream would never let the client see a chunk, and the test would hit its deadline.
        if pauses:
            await received.wait()
            received.clear()
        pauses.append(seconds)

    mock.options.sleep = pause
    chunks = 0
    async with asyncio.timeout(10):
        stream = await client.chat.completions.create(model="paced", messages=USER_HI, stream=True)
        async for _ in stream:
            chunks += 1
            received.set()
    # 20 ms before the first chunk, then 5 ms before each of the others (role, 9 words, finish: 11 chunks).
    assert chunks == 11
    assert pauses == [0.02] + [0.005] * 10


# ---------------------------------------------------------------------------------------------------------------------
# Recording, app factory, thread runner and CLI
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_requests_are_recorded(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI, extra_headers={"X-Trace": "t1"})
    await client.models.list()
    chat, models = mock.requests
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.headers["authorization"] == "Bearer x"
    assert chat.headers["x-trace"] == "t1"
    assert chat.body == {"model": "gpt-4o-mini", "messages": USER_HI}
    assert orjson.loads(chat.raw_body) == chat.body
    assert (models.method, models.path, models.body) == ("GET", "/v1/models", None)
    mock.state.clear_requests()
    assert mock.requests == []


@pytest.mark.asyncio
async def test_recording_is_bounded() -> None:
    async with MockUpstream(MockOptions(max_recorded=3)) as upstream:
        async with httpx.AsyncClient(base_url=upstream.origin) as raw:
            for index in range(5):
                await raw.get(f"/v1/models/m{index}")
        assert [r.path for r in upstream.requests] == ["/v1/models/m2", "/v1/models/m3", "/v1/models/m4"]


def test_create_mock_app_exposes_state() -> None:
    options = MockOptions(models=("a",))
    app = create_mock_app(options)
    assert isinstance(app, web.Application)
    state = app[MOCK_KEY]
    assert isinstance(state, MockState) and state.options is options
    assert app["mock"] is state


@pytest.mark.asyncio
async def test_upstream_can_start_only_once() -> None:
    upstream = MockUpstream()
    with pytest.raises(RuntimeError):
        _ = upstream.base_url
    async with upstream:
        assert upstream.base_url == f"http://127.0.0.1:{upstream.port}/v1"
    await upstream.stop()  # idempotent
    with pytest.raises(RuntimeError):
        await upstream.start()


def test_run_in_thread_with_sync_sdk() -> None:
    base_url, stop = run_in_thread(MockOptions(models=("only-model",)))
    try:
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5.0) as sdk:
            completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER_HI)
            assert completion.choices[0].message.content == REPLY_TEXT
            stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER_HI, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream) == REPLY_TEXT
            assert [m.id for m in sdk.models.list().data] == ["only-model"]
    finally:
        stop()
    stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/models", timeout=1.0)


def test_cli_serves_until_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "keyrelay.testing.mock_upstream",
        "--port",
        "0",
        "--expected-key",
        "sk-cli",
        "--models",
        "m1, m2",
    ]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("keyrelay mock upstream listening on http://127.0.0.1:")
            base_url = line.rsplit(" ", 1)[1].strip()
            response = httpx.get(f"{base_url}/models", headers={"Authorization": "Bearer sk-cli"}, timeout=5.0)
            assert [model["id"] for model in response.json()["data"]] == ["m1", "m2"]
            assert httpx.get(f"{base_url}/models", timeout=5.0).status_code == 401
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.asyncio
async def test_client_abandoning_a_stream_is_quiet(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="paced", messages=USER_HI, stream=True)
    received = 0
    async for _ in stream:
        received += 1
        if received == 2:
            break
    await stream.close()
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HI)
    assert completion.choices[0].message.content == REPLY_TEXT


@pytest.mark.asyncio
async def test_create_mock_app_under_aiohttp_test_server() -> None:
    """Served by a plain runner (no handler cancellation): abandoned streams and hangs still end quietly."""
    app = create_mock_app(MockOptions())
    finished: list[str] = []

    @web.middleware
    async def note_finished(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            finished.append(request.path)

    app.middlewares.append(note_finished)
    async with TestServer(app) as server:
        base_url = str(server.make_url("/v1"))
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5.0) as sdk:
            stream = await sdk.chat.completions.create(model="paced", messages=USER_HI, stream=True)
            async for _ in stream:
                break
            await stream.close()
            with pytest.raises(openai.APITimeoutError):
                await sdk.with_options(timeout=0.1).chat.completions.create(model="hang", messages=USER_HI)
            # The abandoned paced stream ends by itself, writing to the closed connection (no handler cancellation).
            await wait_until(lambda: "/v1/chat/completions" in finished, what="the abandoned stream's handler ended")
            completion = await sdk.chat.completions.create(model="gpt-4o", messages=USER_HI)
            assert completion.model == "gpt-4o"


@pytest.mark.parametrize(("model", "ending"), [("x-framing-crlf", b"\r\n"), ("x-framing-cr", b"\r")])
async def test_framing_line_endings(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, model: str, ending: bytes
) -> None:
    body = {"model": model, "messages": USER_HI, "stream": True}
    raw = (await http.post("/v1/chat/completions", json=body)).content
    assert raw.endswith(b"data: [DONE]" + ending * 2)
    assert b"\n" not in raw.replace(b"\r\n", b"") if ending == b"\r\n" else b"\n" not in raw
    stream = await client.chat.completions.create(model=model, messages=USER_HI, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == REPLY_TEXT
