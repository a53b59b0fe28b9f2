"""The 3x3 matrix: the official openai, anthropic and google-genai SDKs through keyrelay to each upstream kind.

Every cell (client SDK x upstream kind, ids like ``anthropic-to-gemini``) runs plain text, streamed text, a tool
call (non-streaming and streaming) followed by a tool-result turn in the client's own wire, and parallel tool
calls (whole and streamed), each answered. Same wire is keyrelay's passthrough; different wires go through the
canonical types. Each answer is checked for the model it names, its usage (the mock's count of what the upstream
received) and its usage record (client wire, upstream kind, tokens, cost); each tool-result turn for reaching the
upstream as the answer to the right call, and the tools' schemas for reaching it as JSON Schema.

What the mock answers (keyrelay.testing.mock_upstream.behaviour): :data:`REPLY_TEXT`, 9 words, one token each;
prompt tokens ``ceil(bytes / 4) + 3 * messages``; a tool call's arguments built from its schema's required
properties (string ``"x"``, integer ``1``); after tool results, ``The tool returned: <first result>``.

SQLite only: the store plays no part in translation (one PostgreSQL cell runs elsewhere).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from keyrelay.testing.mock_upstream import REPLY_TEXT, MockUpstream
from keyrelay.testing.mock_upstream.anthropic import count_anthropic_tokens
from keyrelay.testing.mock_upstream.gemini import count_gemini_tokens
from keyrelay.testing.mock_upstream.openai import count_prompt_tokens
from keyrelay.testing.server import RunningServer
from tests.integration.gateway.helpers import usage_rows
from tests.integration.protocols.conftest import KINDS

PROMPT = "Say hello"  # 9 bytes, one message: ceil(9 / 4) + 3 = 6 prompt tokens on every wire
PROMPT_TOKENS = math.ceil(len(PROMPT.encode()) / 4) + 3
REPLY_TOKENS = len(REPLY_TEXT.split(" "))
IN_MICROS, OUT_MICROS = 3, 15  # $3 / $15 per Mtok (conftest PRICES)

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city for some days.",
    "schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "units": {"type": ["string", "null"], "enum": ["c", "f"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 0},
        },
        "required": ["city", "days"],
    },
    "arguments": {"city": "x", "days": 1},
    "result": "sunny and 21 C in x",
}
CLOCK = {
    "name": "get_time",
    "description": "The time in a time zone.",
    "schema": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    "arguments": {"zone": "x"},
    "result": "noon in x",
}
TOOLS = (WEATHER, CLOCK)
# The same schemas in Gemini's own Schema form (OpenAPI subset: capital types, nullable), which the genai client
# sends in the streamed tool flows; keyrelay converts it to the JSON Schema above for other upstreams.
GEMINI_SCHEMAS = {
    "get_weather": types.Schema(
        type=types.Type.OBJECT,
        properties={
            "city": types.Schema(type=types.Type.STRING),
            "days": types.Schema(type=types.Type.INTEGER),
            "units": types.Schema(type=types.Type.STRING, enum=["c", "f"], nullable=True),
            "tags": types.Schema(type=types.Type.ARRAY, items=types.Schema(type=types.Type.STRING), min_items=0),
        },
        required=["city", "days"],
    ),
    "get_time": types.Schema(
        type=types.Type.OBJECT, properties={"zone": types.Schema(type=types.Type.STRING)}, required=["zone"]
    ),
}

SDKS = ("openai", "anthropic", "gemini")
UPSTREAMS = {"openai": "oa", "anthropic": "an", "gemini": "ge"}  # upstream kind -> client model prefix (conftest)
CELLS = [pytest.param(sdk, kind, id=f"{sdk}-to-{kind}") for sdk in SDKS for kind in UPSTREAMS]
NATURAL_STOP = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}
TOOL_STOP = {"openai": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}  # Gemini: functionCall parts


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (the default fixture also runs PostgreSQL): the matrix is about wires, not the store."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@dataclass
class Call:
    """A tool call as the client SDK parsed it."""

    id: str | None
    name: str
    arguments: dict[str, Any]


@dataclass
class Reply:
    """One model turn as the client SDK saw it."""

    request_id: str
    streamed: bool = False
    text: str = ""
    stop: str | None = None
    calls: list[Call] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    early_prompt_tokens: int | None = None  # Anthropic's message_start input usage
    models: set[str | None] = field(default_factory=set)  # the model named by the answer (every chunk)


class Client(Protocol):
    """One SDK's conversation: send a turn, append the tool results of the last one."""

    history: list[Any]

    async def send(self, model: str, *, stream: bool, tools: tuple[dict[str, Any], ...] = ()) -> Reply: ...

    def answer(self, reply: Reply, results: list[str]) -> None: ...


def header(headers: Any, name: str) -> str:
    """A response header, whatever the case of the SDK's header mapping."""
    for key, value in dict(headers).items():
        if key.lower() == name:
            return str(value)
    raise AssertionError(f"no {name} header in {headers!r}")


class OpenAIClient:
    def __init__(self, sdk: openai.AsyncOpenAI) -> None:
        self.sdk = sdk
        self.history: list[Any] = [{"role": "user", "content": PROMPT}]

    async def send(self, model: str, *, stream: bool, tools: tuple[dict[str, Any], ...] = ()) -> Reply:
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t["name"], "description": t["description"], "parameters": t["schema"]},
                }
                for t in tools
            ]
        if not stream:
            raw = await self.sdk.chat.completions.with_raw_response.create(model=model, messages=self.history, **extra)
            r = raw.parse()
            message = r.choices[0].message
            reply = Reply(header(raw.headers, "x-request-id"), False, message.content or "", r.choices[0].finish_reason)
            reply.models.add(r.model)
            for tc in message.tool_calls or []:
                assert tc.type == "function"
                reply.calls.append(Call(tc.id, tc.function.name, json.loads(tc.function.arguments)))
            if r.usage is not None:
                reply.prompt_tokens, reply.completion_tokens = r.usage.prompt_tokens, r.usage.completion_tokens
            self.history.append(message.model_dump(exclude_none=True))
            return reply
        chunks = await self.sdk.chat.completions.create(
            model=model, messages=self.history, stream=True, stream_options={"include_usage": True}, **extra
        )
        reply = Reply(header(chunks.response.headers, "x-request-id"), True)
        calls: dict[int, dict[str, Any]] = {}
        async for chunk in chunks:
            reply.models.add(chunk.model)
            if chunk.usage is not None:
                reply.prompt_tokens, reply.completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            for choice in chunk.choices:
                assert reply.stop is None, "a delta after the finish reason"
                reply.text += choice.delta.content or ""
                for delta in choice.delta.tool_calls or []:
                    acc = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    if delta.id:
                        assert acc["id"] is None, "a tool call's id sent twice"
                        acc["id"] = delta.id
                    if delta.function is not None:
                        acc["name"] += delta.function.name or ""
                        acc["arguments"] += delta.function.arguments or ""
                reply.stop = choice.finish_reason or reply.stop
        reply.calls = [Call(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in reply.calls
            ]
        self.history.append(message)
        return reply

    def answer(self, reply: Reply, results: list[str]) -> None:
        for call, result in zip(reply.calls, results, strict=True):
            # after a stream, the content as text parts (both forms are OpenAI's)
            content: Any = [{"type": "text", "text": result}] if reply.streamed else result
            self.history.append({"role": "tool", "tool_call_id": call.id, "content": content})


class AnthropicClient:
    def __init__(self, sdk: anthropic.AsyncAnthropic) -> None:
        self.sdk = sdk
        self.history: list[Any] = [{"role": "user", "content": PROMPT}]

    async def send(self, model: str, *, stream: bool, tools: tuple[dict[str, Any], ...] = ()) -> Reply:
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = [
                {"name": t["name"], "description": t["description"], "input_schema": t["schema"]} for t in tools
            ]
        if not stream:
            raw = await self.sdk.messages.with_raw_response.create(
                model=model, messages=self.history, max_tokens=1024, **extra
            )
            message = await raw.parse()
            reply = Reply(header(raw.headers, "x-request-id"))
            streamed_text = None
        else:
            async with self.sdk.messages.stream(model=model, messages=self.history, max_tokens=1024, **extra) as events:
                reply = Reply(header(events.response.headers, "x-request-id"), True)
                pieces = []
                async for event in events:
                    if event.type == "message_start":
                        reply.early_prompt_tokens = event.message.usage.input_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        pieces.append(event.delta.text)
                streamed_text = "".join(pieces)
                message = await events.get_final_message()
        blocks: list[dict[str, Any]] = []
        for block in message.content:
            if block.type == "text":
                reply.text += block.text
                blocks.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                reply.calls.append(Call(block.id, block.name, dict(block.input)))  # type: ignore[call-overload]
                blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
            else:
                raise AssertionError(f"unexpected block {block!r}")
        if streamed_text is not None:
            assert streamed_text == reply.text
        reply.stop = message.stop_reason
        reply.models.add(message.model)
        usage = message.usage
        cached = (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
        reply.prompt_tokens, reply.completion_tokens = usage.input_tokens + cached, usage.output_tokens
        self.history.append({"role": "assistant", "content": blocks})
        return reply

    def answer(self, reply: Reply, results: list[str]) -> None:
        content = [
            # after a stream, the content as text blocks (both forms are Anthropic's)
            {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": result}]}
            if reply.streamed
            else {"type": "tool_result", "tool_use_id": call.id, "content": result}
            for call, result in zip(reply.calls, results, strict=True)
        ]
        self.history.append({"role": "user", "content": content})


class GeminiClient:
    def __init__(self, sdk: genai.Client) -> None:
        self.sdk = sdk
        self.history: list[Any] = [types.Content(role="user", parts=[types.Part(text=PROMPT)])]

    async def send(self, model: str, *, stream: bool, tools: tuple[dict[str, Any], ...] = ()) -> Reply:
        config = types.GenerateContentConfig()
        if tools:
            declarations = [
                types.FunctionDeclaration(
                    name=t["name"], description=t["description"], parameters=GEMINI_SCHEMAS[t["name"]]
                )
                if stream
                else types.FunctionDeclaration(
                    name=t["name"], description=t["description"], parameters_json_schema=t["schema"]
                )
                for t in tools
            ]
            config.tools = [types.Tool(function_declarations=declarations)]
        models = self.sdk.aio.models
        if not stream:
            one = await models.generate_content(model=model, contents=self.history, config=config)
            responses = [one]
        else:
            responses = [
                r async for r in await models.generate_content_stream(model=model, contents=self.history, config=config)
            ]
        assert responses and responses[0].sdk_http_response is not None
        reply = Reply(header(responses[0].sdk_http_response.headers or {}, "x-request-id"), stream)
        parts: list[types.Part] = []
        for response in responses:
            reply.models.add(response.model_version)
            for candidate in response.candidates or []:
                if candidate.finish_reason is not None:
                    assert reply.stop is None, "a second finish reason"
                    reply.stop = candidate.finish_reason.name
                for part in candidate.content.parts or [] if candidate.content else []:
                    parts.append(part)
                    if part.text and not part.thought:
                        reply.text += part.text
                    if part.function_call is not None:
                        fc = part.function_call
                        assert fc.name
                        reply.calls.append(Call(fc.id, fc.name, dict(fc.args or {})))
            if response.usage_metadata is not None:
                usage = response.usage_metadata
                reply.prompt_tokens = usage.prompt_token_count
                reply.completion_tokens = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        self.history.append(types.Content(role="model", parts=parts))
        return reply

    def answer(self, reply: Reply, results: list[str]) -> None:
        parts = [
            types.Part(function_response=types.FunctionResponse(id=c.id, name=c.name, response={"result": result}))
            for c, result in zip(reply.calls, results, strict=True)
        ]
        self.history.append(types.Content(role="user", parts=parts))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # httpx for genai: its aiohttp session class subclasses ClientSession, which aiohttp warns about.
    async with httpx.AsyncClient() as transport:
        yield transport


@pytest.fixture
async def make_client(server: RunningServer, key: str, http: httpx.AsyncClient) -> AsyncIterator[Any]:
    """``make_client(sdk)``: a fresh conversation through keyrelay in that SDK."""
    closers: list[Any] = []

    def make(sdk: str) -> Client:
        if sdk == "openai":
            oa = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
            closers.append(oa.close)
            return OpenAIClient(oa)
        if sdk == "anthropic":
            an = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=key, max_retries=0)
            closers.append(an.close)
            return AnthropicClient(an)
        options = types.HttpOptions(base_url=server.base_url, api_version="v1beta", httpx_async_client=http)
        return GeminiClient(genai.Client(api_key=key, http_options=options))

    yield make
    for close in closers:
        await close()


def model_for(kind: str, variant: str = "") -> str:
    return f"{UPSTREAMS[kind]}-model" + (f"-{variant}" if variant else "")


def output_tokens(reply: Reply) -> int:
    """What the mock counts for this reply: a token per text word, ``ceil(len(name + arguments) / 4)`` per call."""
    if reply.calls:
        return sum(math.ceil(len(c.name + json.dumps(c.arguments, separators=(",", ":"))) / 4) for c in reply.calls)
    return len(reply.text.split(" "))


async def check_answer(
    server: RunningServer, mock: MockUpstream, reply: Reply, sdk: str, kind: str, model: str, *, streamed: bool
) -> None:
    """The model the answer names, the usage the client saw and the usage record.

    The answer names the upstream's model id in a passthrough (the upstream's bytes) and the client's model name
    when translated, streamed or not. The usage is the mock's count of what the upstream received; the record
    also names the client's wire (``protocol``) and the provider's kind (``upstream_kind``), and prices it.
    """
    prefix = UPSTREAMS[kind]
    upstream_model = model.replace(f"{prefix}-model", KINDS[prefix][3])
    assert reply.models == {upstream_model if sdk == kind else model}
    prompt, completion = prompt_tokens_seen_by(kind, mock.requests[-1].body), output_tokens(reply)
    assert (reply.prompt_tokens, reply.completion_tokens) == (prompt, completion)
    if sdk == "anthropic" and streamed:
        # message_start: the upstream's input count when it reports one that early (Anthropic and Gemini do),
        # else an estimate (OpenAI reports usage at the end)
        assert reply.early_prompt_tokens == prompt or kind == "openai", reply.early_prompt_tokens
    (row,) = await usage_rows(server, reply.request_id)
    assert row["status"] == 200
    assert (row["protocol"], row["upstream_kind"], row["provider"]) == (sdk, kind, KINDS[UPSTREAMS[kind]][0])
    assert row["streamed"] is streamed
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["usage_estimated"] is False
    assert row["cost_micros"] == prompt * IN_MICROS + completion * OUT_MICROS


def text_of(content: Any) -> str:
    """A tool result's text on the OpenAI or Anthropic wire: a string or text parts/blocks."""
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def upstream_results(kind: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """The last tool turn the upstream received: (name of the call answered, result text) for each result.

    OpenAI and Anthropic answer a call by its id, which must be the id of a call of the assistant turn before:
    the name is looked up by it. Gemini answers by name, and the model turn before must hold that call.
    """
    if kind == "openai":
        *earlier, assistant = [m for m in body["messages"] if m["role"] == "assistant"]
        calls = {tc["id"]: tc["function"]["name"] for tc in assistant.get("tool_calls") or []}
        tail = body["messages"][body["messages"].index(assistant) + 1 :]
        assert all(m["role"] == "tool" for m in tail)
        results = [(m["tool_call_id"], text_of(m["content"])) for m in tail]
    elif kind == "anthropic":
        assistant, user = body["messages"][-2:]
        calls = {b["id"]: b["name"] for b in assistant["content"] if b["type"] == "tool_use"}
        results = [(b["tool_use_id"], text_of(b["content"])) for b in user["content"] if b["type"] == "tool_result"]
    else:
        model, user = body["contents"][-2:]
        calls = {p["functionCall"]["name"]: p["functionCall"]["name"] for p in model["parts"] if "functionCall" in p}
        responses = [p["functionResponse"] for p in user["parts"] if "functionResponse" in p]
        results = [(r["name"], json.dumps(r["response"])) for r in responses]
    assert len(calls) == len(results) and {key for key, _ in results} == set(calls), (calls, results)
    return [(calls[key], text) for key, text in results]


def check_results(kind: str, body: dict[str, Any], tools: tuple[dict[str, Any], ...]) -> None:
    """Each tool's result reached the upstream as the answer to that tool's call (ids and names mapped)."""
    answered = upstream_results(kind, body)
    assert [name for name, _ in answered] == [t["name"] for t in tools]
    for (_, text), tool in zip(answered, tools, strict=True):
        assert str(tool["result"]) in text, (text, tool["result"])


def upstream_schemas(kind: str, body: dict[str, Any]) -> list[Any]:
    """The tools' parameter schemas the upstream received."""
    if kind == "openai":
        return [t["function"]["parameters"] for t in body["tools"]]
    if kind == "anthropic":
        return [t["input_schema"] for t in body["tools"]]
    keys = ("parametersJsonSchema", "parameters_json_schema", "parameters")  # the genai SDK sends snake_case
    declarations = [d for t in body["tools"] for d in t["functionDeclarations"]]
    return [next(d[k] for k in keys if k in d) for d in declarations]


def prompt_tokens_seen_by(kind: str, body: dict[str, Any]) -> int:
    if kind == "openai":
        return count_prompt_tokens(body["messages"])
    if kind == "anthropic":
        return count_anthropic_tokens(body)
    return count_gemini_tokens(body)


@pytest.mark.parametrize(("sdk", "kind"), CELLS)
async def test_plain(make_client: Any, server: RunningServer, mock: MockUpstream, sdk: str, kind: str) -> None:
    client: Client = make_client(sdk)
    reply = await client.send(model_for(kind), stream=False)
    assert (reply.text, reply.stop, reply.calls) == (REPLY_TEXT, NATURAL_STOP[sdk], [])
    assert (reply.prompt_tokens, reply.completion_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)
    assert prompt_tokens_seen_by(kind, mock.requests[-1].body) == PROMPT_TOKENS  # the translation added nothing
    await check_answer(server, mock, reply, sdk, kind, model_for(kind), streamed=False)


@pytest.mark.parametrize(("sdk", "kind"), CELLS)
async def test_stream(make_client: Any, server: RunningServer, mock: MockUpstream, sdk: str, kind: str) -> None:
    client: Client = make_client(sdk)
    reply = await client.send(model_for(kind), stream=True)
    assert (reply.text, reply.stop, reply.calls) == (REPLY_TEXT, NATURAL_STOP[sdk], [])
    assert (reply.prompt_tokens, reply.completion_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)
    assert prompt_tokens_seen_by(kind, mock.requests[-1].body) == PROMPT_TOKENS
    await check_answer(server, mock, reply, sdk, kind, model_for(kind), streamed=True)


async def tool_round_trip(
    client: Client, server: RunningServer, mock: MockUpstream, sdk: str, kind: str, *, stream: bool
) -> None:
    reply = await client.send(model_for(kind), stream=stream, tools=TOOLS)
    assert reply.stop == TOOL_STOP[sdk] and reply.text == ""
    schemas = upstream_schemas(kind, mock.requests[-1].body)
    if sdk == kind == "gemini" and stream:  # the passthrough keeps the Schema form the client sent
        assert [schema["type"] for schema in schemas] == ["OBJECT", "OBJECT"]
    else:
        assert schemas == [t["schema"] for t in TOOLS]
    assert [(c.name, c.arguments) for c in reply.calls] == [(WEATHER["name"], WEATHER["arguments"])]
    if sdk != "gemini":
        assert reply.calls[0].id
    await check_answer(server, mock, reply, sdk, kind, model_for(kind), streamed=stream)
    client.answer(reply, [str(WEATHER["result"])])
    final = await client.send(model_for(kind), stream=stream, tools=TOOLS)
    assert final.stop == NATURAL_STOP[sdk] and final.calls == []
    assert final.text.startswith("The tool returned: ") and str(WEATHER["result"]) in final.text, final.text
    check_results(kind, mock.requests[-1].body, (WEATHER,))
    await check_answer(server, mock, final, sdk, kind, model_for(kind), streamed=stream)


@pytest.mark.parametrize(("sdk", "kind"), CELLS)
async def test_tool_call_then_result(
    make_client: Any, server: RunningServer, mock: MockUpstream, sdk: str, kind: str
) -> None:
    await tool_round_trip(make_client(sdk), server, mock, sdk, kind, stream=False)


@pytest.mark.parametrize(("sdk", "kind"), CELLS)
async def test_tool_call_then_result_streaming(
    make_client: Any, server: RunningServer, mock: MockUpstream, sdk: str, kind: str
) -> None:
    await tool_round_trip(make_client(sdk), server, mock, sdk, kind, stream=True)


@pytest.mark.parametrize(("sdk", "kind"), CELLS)
@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "whole"])
async def test_parallel_tool_calls(
    make_client: Any, server: RunningServer, mock: MockUpstream, sdk: str, kind: str, stream: bool
) -> None:
    client: Client = make_client(sdk)
    model = model_for(kind, "parallel")
    reply = await client.send(model, stream=stream, tools=TOOLS)
    assert reply.stop == TOOL_STOP[sdk]
    assert [(c.name, c.arguments) for c in reply.calls] == [(t["name"], t["arguments"]) for t in TOOLS]
    ids = [c.id for c in reply.calls]
    if sdk == kind == "gemini":
        assert ids == [None, None]  # the passthrough: the (mock) Gemini upstream gives no ids
    else:
        assert all(ids) and len(set(ids)) == 2, ids  # translated answers carry ids on every wire
    await check_answer(server, mock, reply, sdk, kind, model, streamed=stream)
    client.answer(reply, [str(t["result"]) for t in TOOLS])
    final = await client.send(model, stream=stream, tools=TOOLS)
    assert final.stop == NATURAL_STOP[sdk] and final.calls == []
    assert final.text.startswith("The tool returned: ") and str(WEATHER["result"]) in final.text, final.text
    check_results(kind, mock.requests[-1].body, TOOLS)
    await check_answer(server, mock, final, sdk, kind, model, streamed=stream)
