"""A Gemini-CLI-shaped session through the gateway, with raw httpx as Gemini CLI sends it.

``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` with ``x-goog-api-key`` (or ``?key=``), a
``systemInstruction``, ``functionDeclarations`` with ``parametersJsonSchema``, ``generationConfig`` with
temperature, topP, topK and ``thinkingConfig.includeThoughts``; a function call, then a ``functionResponse`` turn;
``:countTokens`` calls; the JSON-array stream; and the same session against an Anthropic upstream (translated).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT
from keyrelay.testing.mock_upstream.gemini import count_gemini_tokens
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import all_usage_rows
from tests.integration.protocols.session_helpers import sqlite_url, sse_frames

SYSTEM = {"parts": [{"text": "You are an interactive CLI agent specializing in software engineering tasks."}]}
TOOLS = [
    {
        "functionDeclarations": [
            {
                "name": "read_file",
                "description": "Reads and returns the content of a specified file.",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {
                        "absolute_path": {"type": "string", "description": "The absolute path to the file."},
                        "offset": {"type": "number"},
                    },
                    "required": ["absolute_path"],
                },
            },
            {
                "name": "run_shell_command",
                "description": "Executes a given shell command.",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}, "directory": {"type": "string"}},
                    "required": ["command"],
                },
            },
            {
                "name": "glob",
                "description": "Finds files matching glob patterns.",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {"pattern": {"type": "string"}, "case_sensitive": {"type": "boolean"}},
                    "required": ["pattern"],
                },
            },
        ]
    }
]
# Gemini CLI's config for 2.5 models: thoughts shown, a fixed budget (the CLI's default is 8192: see
# test_default_thinking_budget_toward_anthropic).
CONFIG = {"temperature": 0, "topP": 1, "topK": 64, "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 2048}}
USER = {"role": "user", "parts": [{"text": "This is the Gemini CLI. What is in README.md?"}]}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


def first_turn() -> dict[str, Any]:
    return {
        "contents": [copy.deepcopy(USER)],
        "systemInstruction": copy.deepcopy(SYSTEM),
        "tools": copy.deepcopy(TOOLS),
        "generationConfig": copy.deepcopy(CONFIG),
    }


def result_turn(call: dict[str, Any], output: str = "# keyrelay") -> dict[str, Any]:
    body = first_turn()
    response: dict[str, Any] = {"name": call["name"], "response": {"output": output}}
    if "id" in call:
        response["id"] = call["id"]
    body["contents"] += [
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": response}]},
    ]
    return body


def cli_headers(key: str | None) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": "GeminiCLI/0.9.0 (linux; x64) google-genai-sdk/1.16.0 gl-node/v20.19.0",
        "x-goog-api-client": "google-genai-sdk/1.16.0 gl-node/v20.19.0",
    }
    if key is not None:
        headers["x-goog-api-key"] = key
    return headers


async def stream(
    client: httpx.AsyncClient, key: str, model: str, body: dict[str, Any], *, sse: bool = True, in_query: bool = False
) -> httpx.Response:
    query = [("alt", "sse")] if sse else []
    if in_query:
        query.append(("key", key))
    url = f"/v1beta/models/{model}:streamGenerateContent"
    headers = cli_headers(None if in_query else key)
    return await client.post(url, params=query, content=orjson.dumps(body), headers=headers)


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(response.content)
    assert frames and all(name is None and isinstance(data, dict) for name, data in frames)
    return [data for _, data in frames]


def parts_and_end(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every part of a streamed answer, in order, and the last chunk (which must close the answer)."""
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        assert "error" not in chunk, chunk
        for candidate in chunk.get("candidates", []):
            parts += candidate.get("content", {}).get("parts", [])
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    usage = last["usageMetadata"]
    assert usage["promptTokenCount"] > 0 and usage["totalTokenCount"] >= usage["promptTokenCount"]
    for chunk in chunks[:-1]:
        assert "finishReason" not in chunk.get("candidates", [{}])[0], chunk
    return parts, last


def answer_text(parts: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for p in parts if not p.get("thought"))


# --- passthrough ----------------------------------------------------------------------------------------------------


async def test_session_against_gemini_is_a_passthrough(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    body = first_turn()
    parts, last = parts_and_end(sse_chunks(await stream(client, key, "ge-model", body)))
    thought, call = [p for p in parts if p.get("thought") or "functionCall" in p]
    assert thought == {"text": THINKING_TEXT, "thought": True}
    assert call["functionCall"] == {"name": "read_file", "args": {"absolute_path": "x"}}
    assert last["usageMetadata"]["thoughtsTokenCount"] == len(THINKING_TEXT.split(" "))
    sent = mock.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert sent.body == body  # the model is in the path: the body goes as it came
    assert key not in str(sent.headers)
    assert not [name for name in sent.headers if name.startswith("anthropic-")]

    # The functionResponse turn, with the key in the query string: it is not passed on.
    r = await stream(client, key, "ge-model", result_turn(call["functionCall"]), in_query=True)
    parts, _ = parts_and_end(sse_chunks(r))
    assert answer_text(parts) == 'The tool returned: {"output":"# keyrelay"}'
    assert mock.requests[-1].query == {"alt": "sse"}
    rows = await all_usage_rows(server)
    assert [(row["protocol"], row["upstream_kind"], row["status"], row["streamed"]) for row in rows] == [
        ("gemini", "gemini", 200, True)
    ] * 2
    assert rows[0]["prompt_tokens"] == count_gemini_tokens(body)
    assert rows[0]["reasoning_tokens"] == len(THINKING_TEXT.split(" "))
    assert not any(row["usage_estimated"] for row in rows)


async def test_json_array_stream(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    for model in ("ge-model", "an-model", "oa-model"):
        body = first_turn()
        if model == "oa-model":
            del body["generationConfig"]["topK"]  # no OpenAI field for it
        r = await stream(client, key, model, body, sse=False)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        chunks = orjson.loads(r.content)
        assert isinstance(chunks, list) and chunks
        parts, last = parts_and_end(chunks)
        [call] = [p["functionCall"] for p in parts if "functionCall" in p]
        assert (call["name"], call["args"]) == ("read_file", {"absolute_path": "x"})
        assert last["usageMetadata"]["candidatesTokenCount"] > 0
        # The upstream is read as SSE in every case.
        sent = mock.requests[-1]
        if model == "ge-model":
            assert (sent.path, sent.query) == ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"alt": "sse"})
        else:
            assert sent.body["stream"] is True
    rows = await all_usage_rows(server)
    assert [(row["protocol"], row["upstream_kind"], row["status"]) for row in rows] == [
        ("gemini", "gemini", 200),
        ("gemini", "anthropic", 200),
        ("gemini", "openai", 200),
    ]


async def test_count_tokens(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "cli@example.com", rate_limits={"rpm": 1})
    body = {"contents": [USER, {"role": "model", "parts": [{"text": "It says keyrelay."}]}]}
    for version in ("v1beta", "v1"):
        r = await client.post(
            f"/{version}/models/ge-model:countTokens", content=orjson.dumps(body), headers=cli_headers(key)
        )
        assert r.status_code == 200, r.text
        assert r.json()["totalTokens"] == count_gemini_tokens(body)
        assert mock.requests[-1].path == "/v1beta/models/gemini-2.5-flash:countTokens"
    # No Gemini channel: a local estimate, the upstream not asked; the key in the query works here too.
    r = await client.post("/v1beta/models/an-model:countTokens", params={"key": key}, content=orjson.dumps(body))
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["totalTokens"] and r.json()["totalTokens"] > 0
    assert len(mock.requests) == 2
    # Not admitted: the rpm=1 window is still free for a call, and nothing was recorded for the counts.
    parts_and_end(sse_chunks(await stream(client, key, "ge-model", first_turn())))
    r = await stream(client, key, "ge-model", first_turn())
    assert r.status_code == 429
    assert r.json()["error"]["details"][0]["reason"] == "RATE_LIMIT_EXCEEDED"
    assert [row["status"] for row in await all_usage_rows(server)] == [200]


# --- translated -----------------------------------------------------------------------------------------------------


async def test_session_against_anthropic_is_translated(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    parts, last = parts_and_end(sse_chunks(await stream(client, key, "an-model", first_turn())))
    thought, call = [p for p in parts if p.get("thought") or "functionCall" in p]
    assert thought["thought"] is True and thought["text"] == THINKING_TEXT
    fc = call["functionCall"]
    assert (fc["name"], fc["args"]) == ("read_file", {"absolute_path": "x"}) and fc["id"]
    # Anthropic does not say how many of its output tokens were thinking: all are candidates, none thoughts.
    assert "thoughtsTokenCount" not in last["usageMetadata"]
    assert last["usageMetadata"]["candidatesTokenCount"] > len(THINKING_TEXT.split(" "))
    sent = mock.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["anthropic-version"] == "2023-06-01" and not sent.anthropic_beta
    assert sent.body["model"] == "claude-sonnet-4-5" and sent.body["stream"] is True
    assert sent.body["system"] == [{"type": "text", "text": SYSTEM["parts"][0]["text"]}]
    assert (sent.body["temperature"], sent.body["top_p"], sent.body["top_k"]) == (0, 1, 64)
    assert [t["name"] for t in sent.body["tools"]] == ["read_file", "run_shell_command", "glob"]
    assert sent.body["tools"][0]["input_schema"] == TOOLS[0]["functionDeclarations"][0]["parametersJsonSchema"]
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 2048}

    # The functionResponse turn (Gemini CLI sends the call back with its id and signature).
    r = await stream(client, key, "an-model", result_turn(fc), in_query=True)
    parts, _ = parts_and_end(sse_chunks(r))
    # A functionResponse's response object goes to Anthropic as its JSON text.
    assert answer_text(parts) == 'The tool returned: {"output":"# keyrelay"}'
    sent = mock.requests[-1]
    assert sent.body["messages"][-1]["content"][0]["type"] == "tool_result"
    assert sent.body["messages"][-1]["content"][0]["tool_use_id"] == fc["id"]
    rows = await all_usage_rows(server)
    assert [(row["protocol"], row["upstream_kind"], row["status"]) for row in rows] == [
        ("gemini", "anthropic", 200)
    ] * 2
    assert rows[0]["reasoning_tokens"] == 0
    assert rows[0]["completion_tokens"] == last["usageMetadata"]["candidatesTokenCount"]


async def test_top_k_goes_to_an_openai_compatible_upstream_as_its_extension(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    """vLLM, SGLang and llama.cpp read ``top_k``: Gemini CLI's topK reaches them (OpenAI itself is refused below)."""
    frames = sse_chunks(await stream(client, key, "oc-model", first_turn()))
    parts_and_end(frames)
    [sent] = mock.requests
    assert (sent.body["top_k"], sent.body["temperature"], sent.body["top_p"]) == (64, 0, 1)


async def test_top_k_toward_openai_is_refused(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    r = await stream(client, key, "oa-model", first_turn())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT")
    [detail] = err["details"]
    assert (detail["reason"], detail["domain"]) == ("INVALID_REQUEST", "keyrelay")
    assert "topK" in detail["metadata"]["param"] or "top_k" in err["message"] or "topK" in err["message"]
    assert not mock.requests


async def test_default_thinking_budget_toward_anthropic(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    """Gemini CLI's default budget (8192) with no maxOutputTokens is not below keyrelay's default max_tokens (4096).

    Anthropic needs the budget below max_tokens: the budget is lowered to one below the default ceiling, which
    is what keyrelay reserved the cost for (docs/protocols.md). With a maxOutputTokens above the budget, the
    client's budget and limit go through as they are.
    """
    body = first_turn()
    body["generationConfig"]["thinkingConfig"]["thinkingBudget"] = 8192
    parts_and_end(sse_chunks(await stream(client, key, "an-model", body)))
    assert mock.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 4095}
    assert mock.requests[-1].body["max_tokens"] == 4096
    body["generationConfig"]["maxOutputTokens"] = 16384
    parts_and_end(sse_chunks(await stream(client, key, "an-model", body)))
    assert mock.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert mock.requests[-1].body["max_tokens"] == 16384
