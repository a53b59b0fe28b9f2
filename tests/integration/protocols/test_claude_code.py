"""A Claude-Code-shaped session through the gateway, with raw httpx as Claude Code sends it.

``POST /v1/messages?beta=true`` streamed with ``anthropic-version`` and ``anthropic-beta``, the key as ``x-api-key``
or ``Authorization: Bearer``, a system prompt of text blocks with ``cache_control``, a ``role: "system"`` message,
several tools, ``metadata.user_id``; the model calls a tool, then a ``tool_result`` turn; ``count_tokens`` calls.
Against the Anthropic upstream (passthrough) and against OpenAI and Gemini upstreams (translated).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.mock_upstream.anthropic import PROMPT_TOO_LONG_MESSAGE, count_anthropic_tokens
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import all_usage_rows, usage_rows
from tests.integration.protocols.session_helpers import anthropic_blocks, message_delta, sqlite_url, sse_frames

BETA = "claude-code-20250219,interleaved-thinking-2025-05-14"
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {
        "type": "text",
        "text": "You are an interactive CLI tool that helps users with software engineering tasks.",
        "cache_control": {"type": "ephemeral"},
    },
]
TOOLS: list[dict[str, Any]] = [
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "The absolute path to the file to read"},
                "offset": {"type": "number"},
                "limit": {"type": "number"},
            },
            "required": ["file_path"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {
        "name": "Bash",
        "description": "Executes a given bash command.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {
        "name": "TodoWrite",
        "description": "Update the todo list.",
        "input_schema": {
            "type": "object",
            "properties": {
                "todos": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "content": {"type": "string"},
                            "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                        },
                        "required": ["content", "status"],
                    },
                }
            },
            "required": ["todos"],
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
        "cache_control": {"type": "ephemeral"},
    },
]
USER_TURN = {
    "role": "user",
    "content": [
        {"type": "text", "text": "<system-reminder>As you answer, use the tools.</system-reminder>"},
        {"type": "text", "text": "What is in README.md?", "cache_control": {"type": "ephemeral"}},
    ],
}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


def first_turn(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "system": copy.deepcopy(SYSTEM),
        "messages": [
            {"role": "system", "content": "The working directory is /repo."},
            copy.deepcopy(USER_TURN),
        ],
        "tools": copy.deepcopy(TOOLS),
        "metadata": {"user_id": "user_0123abcd_account__session_4567"},
        "temperature": 1,
    }


def result_turn(model: str, tool_use: dict[str, Any], result: str = "# keyrelay, a gateway") -> dict[str, Any]:
    body = first_turn(model)
    body["messages"] += [
        {"role": "assistant", "content": [{k: tool_use[k] for k in ("type", "id", "name", "input")}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use["id"],
                    "content": result,
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    return body


def cc_headers(key: str, *, bearer: bool = False) -> dict[str, str]:
    """The headers Claude Code sends (its key as x-api-key, or as a bearer token when given one)."""
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": BETA,
        "content-type": "application/json",
        "accept": "application/json",
        "user-agent": "claude-cli/2.0.14 (external, cli)",
        "x-app": "cli",
        "anthropic-dangerous-direct-browser-access": "true",
    }
    headers.update({"authorization": f"Bearer {key}"} if bearer else {"x-api-key": key})
    return headers


async def messages(client: httpx.AsyncClient, key: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return await client.post("/v1/messages?beta=true", content=orjson.dumps(body), headers=cc_headers(key, **kw))


def error_of(response: httpx.Response, status: int, keyrelay_type: str, anthropic_type: str) -> dict[str, Any]:
    """Check an error answer in Anthropic's shape and return its ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["request_id"] == response.headers["x-request-id"]
    err: dict[str, Any] = body["error"]
    assert err["type"] == anthropic_type
    assert err["keyrelay"]["type"] == keyrelay_type
    return err


# --- passthrough ----------------------------------------------------------------------------------------------------


async def test_session_against_anthropic_is_a_passthrough(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    body = first_turn("an-model")
    r = await messages(client, key, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(r.content)
    blocks = anthropic_blocks(frames)
    assert [b["type"] for b in blocks] == ["tool_use"]
    [call] = blocks
    assert (call["name"], call["input"]) == ("Read", {"file_path": "x"})
    assert message_delta(frames)["delta"]["stop_reason"] == "tool_use"
    assert frames[0][1]["message"]["usage"]["input_tokens"] > 0

    # The upstream got the client's body with only the model rewritten, and both headers.
    sent = mock.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.body == {**body, "model": "claude-sonnet-4-5"}
    assert sent.anthropic_beta == ("claude-code-20250219", "interleaved-thinking-2025-05-14")
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert key not in str(sent.headers)  # the client's keyrelay key never goes upstream

    # The tool_result turn, this time with the key as a bearer token.
    r = await messages(client, key, result_turn("an-model", call), bearer=True)
    assert r.status_code == 200, r.text
    frames = sse_frames(r.content)
    [text] = anthropic_blocks(frames)
    assert text == {"type": "text", "text": "The tool returned: # keyrelay, a gateway"}
    assert message_delta(frames)["delta"]["stop_reason"] == "end_turn"
    assert mock.requests[-1].anthropic_beta == ("claude-code-20250219", "interleaved-thinking-2025-05-14")

    rows = await all_usage_rows(server)
    assert [(row["protocol"], row["upstream_kind"], row["status"], row["streamed"]) for row in rows] == [
        ("anthropic", "anthropic", 200, True)
    ] * 2
    upstream = [count_anthropic_tokens({**b, "model": "x"}) for b in (body, result_turn("an-model", call))]
    assert [row["prompt_tokens"] for row in rows] == upstream
    assert not any(row["usage_estimated"] for row in rows)


async def test_count_tokens_is_forwarded_or_estimated_and_never_admitted(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
) -> None:
    key = await make_api_key(server, "cc@example.com", rate_limits={"rpm": 2})
    count = {k: v for k, v in first_turn("an-model").items() if k not in ("stream", "max_tokens", "temperature")}
    count.pop("metadata")
    url = "/v1/messages/count_tokens?beta=true"
    # Forwarded to the Anthropic upstream: its count, with the beta flags.
    r = await client.post(url, content=orjson.dumps(count), headers=cc_headers(key))
    assert r.status_code == 200, r.text
    assert r.json() == {"input_tokens": count_anthropic_tokens(count)}
    sent = mock.requests[-1]
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.body["model"] == "claude-sonnet-4-5"
    assert sent.anthropic_beta == ("claude-code-20250219", "interleaved-thinking-2025-05-14")
    # No Anthropic channel: a local estimate, and the upstream is not asked.
    for model in ("oa-model", "ge-model"):
        r = await client.post(
            url, content=orjson.dumps({**count, "model": model}), headers=cc_headers(key, bearer=True)
        )
        assert r.status_code == 200, r.text
        assert list(r.json()) == ["input_tokens"] and r.json()["input_tokens"] > 0
    assert len(mock.requests) == 1
    # Three counts did not use the rpm=2 window: two calls are admitted, the third is not.
    for _ in range(2):
        r = await messages(client, key, {**first_turn("an-model"), "stream": False})
        assert r.status_code == 200, r.text
    error_of(await messages(client, key, first_turn("an-model")), 429, "RATE_LIMIT_EXCEEDED", "rate_limit_error")
    # And no usage record for the counts.
    rows = await all_usage_rows(server)
    assert [row["status"] for row in rows] == [200, 200]


async def test_count_tokens_is_authorized_like_a_call(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "cc@example.com", allowed_models=["oa-model"])
    body = orjson.dumps({"model": "an-model", "messages": [USER_TURN]})
    r = await client.post("/v1/messages/count_tokens", content=body, headers=cc_headers(key))
    error_of(r, 403, "ACCESS_DENIED", "permission_error")
    r = await client.post("/v1/messages/count_tokens", content=body, headers=cc_headers("kr_live_" + "x" * 40))
    error_of(r, 401, "INVALID_API_KEY", "authentication_error")
    body = orjson.dumps({"model": "no-such-model", "messages": [USER_TURN]})
    r = await client.post("/v1/messages/count_tokens", content=body, headers=cc_headers(key))
    error_of(r, 404, "MODEL_NOT_FOUND", "not_found_error")


async def test_prompt_too_long_is_relayed_unmodified(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
) -> None:
    for stream in (True, False):
        r = await messages(client, key, {**first_turn("an-model-prompt-too-long"), "stream": stream})
        assert r.status_code == 400
        assert r.headers["x-keyrelay-error-type"] == "INVALID_REQUEST"
        assert r.headers["x-request-id"].startswith("req_")
        # The mock's own bytes (with the mock's request id, not keyrelay's), unmodified.
        upstream_id = r.json()["request_id"]
        assert upstream_id != r.headers["x-request-id"]
        error = {"type": "invalid_request_error", "message": PROMPT_TOO_LONG_MESSAGE}
        assert r.content == orjson.dumps({"type": "error", "error": error, "request_id": upstream_id})
    sdk = anthropic.AsyncAnthropic(api_key=key, base_url=server.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as raised:
        await sdk.messages.create(
            model="an-model-prompt-too-long", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 400
    assert PROMPT_TOO_LONG_MESSAGE in raised.value.message
    await sdk.close()
    rows = await all_usage_rows(server)
    assert [(row["status"], row["error_type"], row["cost_micros"]) for row in rows] == [(400, "INVALID_REQUEST", 0)] * 3


# --- translated -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("short", ["oa", "ge"])
async def test_session_against_another_kind_is_translated(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str, short: str
) -> None:
    model = f"{short}-model"
    r = await messages(client, key, first_turn(model))
    assert r.status_code == 200, r.text
    frames = sse_frames(r.content)
    [call] = anthropic_blocks(frames)
    assert call["type"] == "tool_use" and call["id"]
    assert (call["name"], call["input"]) == ("Read", {"file_path": "x"})
    end = message_delta(frames)
    assert end["delta"]["stop_reason"] == "tool_use"
    assert end["usage"]["output_tokens"] > 0 and end["usage"]["input_tokens"] > 0
    sent = mock.requests[-1]
    # Neither anthropic header goes to another kind of upstream.
    assert not sent.anthropic_beta
    assert not [name for name in sent.headers if name.startswith("anthropic-")]
    if short == "oa":
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"][0] == {
            "role": "system",
            "content": f"{SYSTEM[0]['text']}\n\n{SYSTEM[1]['text']}\n\nThe working directory is /repo.",
        }
        assert [t["function"]["name"] for t in sent.body["tools"]] == ["Read", "Bash", "TodoWrite"]
    else:
        assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        parts = sent.body["systemInstruction"]["parts"]
        assert "".join(p["text"] for p in parts).count("Claude Code") == 1
        names = [d["name"] for d in sent.body["tools"][0]["functionDeclarations"]]
        assert names == ["Read", "Bash", "TodoWrite"]

    r = await messages(client, key, result_turn(model, call), bearer=True)
    assert r.status_code == 200, r.text
    frames = sse_frames(r.content)
    [text] = anthropic_blocks(frames)
    # To Gemini a text result goes as {"output": text}, which the mock quotes as JSON.
    quoted = "# keyrelay, a gateway" if short == "oa" else '{"output":"# keyrelay, a gateway"}'
    assert text == {"type": "text", "text": f"The tool returned: {quoted}"}
    assert message_delta(frames)["delta"]["stop_reason"] == "end_turn"
    rows = await all_usage_rows(server)
    kind = {"oa": "openai", "ge": "gemini"}[short]
    assert [(row["protocol"], row["upstream_kind"], row["status"]) for row in rows] == [("anthropic", kind, 200)] * 2
    assert not any(row["usage_estimated"] for row in rows)


REFUSED: list[tuple[str, Any, str]] = [
    ("output_config", {"effort": "high"}, "output_config"),
    ("context_management", {"edits": [{"type": "clear_tool_uses_20250919"}]}, "context_management"),
    ("thinking", {"type": "adaptive"}, "thinking"),
]


@pytest.mark.parametrize(("field", "value", "param"), REFUSED, ids=[f for f, _, _ in REFUSED])
async def test_claude_code_fields_other_wires_cannot_express_are_refused(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str, field: str, value: Any, param: str
) -> None:
    body = {**first_turn("oa-model"), field: value}
    r = await messages(client, key, body)
    err = error_of(r, 400, "INVALID_REQUEST", "invalid_request_error")
    assert err["keyrelay"]["param"].startswith(param), err
    assert field in err["message"]
    # The same request is a passthrough to Anthropic, which takes any field.
    r = await messages(client, key, {**body, "model": "an-model"})
    assert r.status_code == 200, r.text
    assert mock.requests[-1].body[field] == value
    assert len(mock.requests) == 1
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert row["status"] == 200
