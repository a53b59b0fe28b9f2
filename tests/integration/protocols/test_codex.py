"""A Codex-CLI-shaped session over the Responses API, through keyrelay to an Anthropic upstream.

The requests are shaped as Codex CLI sends them (codex-rs ``ResponsesApiRequest``): long ``instructions``, a
``developer`` message and the environment context as input messages, a ``function`` tool (``shell``) and the
``custom`` free-form tool ``apply_patch`` with its Lark grammar, ``tool_choice: auto``, ``parallel_tool_calls:
false``, ``reasoning: {effort, summary: auto}``, ``store: false``, ``stream: true``,
``include: ["reasoning.encrypted_content"]``, ``prompt_cache_key`` and ``text.verbosity``; every turn resends the
whole history (stateless), reasoning items included, as Codex does.

Three turns: the model thinks and calls ``apply_patch`` (a ``custom_tool_call``); its output goes back with the
reasoning item, and the model answers; a new user message, and the model thinks and patches again. The
Anthropic upstream must receive each turn as Messages: the thinking block with its own signature, the
``tool_use`` and its ``tool_result``, the system prompt, the grammar in the tool's description.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT, thinking_signature
from keyrelay.testing.server import RunningServer
from tests.integration.gateway.helpers import usage_rows

INSTRUCTIONS = "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI on a user's computer."
GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?\n'
TOOLS: list[dict[str, Any]] = [
    {
        "type": "custom",
        "name": "apply_patch",
        "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool.",
        "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR},
    },
    {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command and returns its output.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "array", "items": {"type": "string"}},
                "workdir": {"type": "string"},
                "timeout_ms": {"type": "number"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: this is about the wire, not the store."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


@pytest.fixture
async def client(server: RunningServer, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def turn(client: openai.AsyncOpenAI, history: list[dict[str, Any]], cache_key: str) -> tuple[list[Any], str]:
    """One Codex turn: a stream read event by event, as Codex reads it; the output items and the request id."""
    events = await client.responses.create(
        model="an-model",
        instructions=INSTRUCTIONS,
        input=history,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        parallel_tool_calls=False,
        reasoning={"effort": "medium", "summary": "auto"},
        store=False,
        stream=True,
        include=["reasoning.encrypted_content"],
        prompt_cache_key=cache_key,
        text={"verbosity": "medium"},
    )
    request_id = events.response.headers["x-request-id"]
    items: list[Any] = []
    last = None
    async for event in events:
        if event.type == "response.output_item.done":
            items.append(event.item)
        last = event
    assert last is not None and last.type == "response.completed", last
    assert [item.model_dump() for item in last.response.output] == [item.model_dump() for item in items]
    return items, request_id


def passed_back(item: Any) -> dict[str, Any]:
    """An output item as Codex sends it back: without its id and status (``store: false``)."""
    data: dict[str, Any] = item.model_dump(exclude_none=True)
    data.pop("id", None)
    data.pop("status", None)
    return data


async def test_codex_session_on_anthropic(
    client: openai.AsyncOpenAI, server: RunningServer, mock: MockUpstream
) -> None:
    cache_key = str(uuid.uuid4())
    history: list[dict[str, Any]] = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "sandbox: workspace-write"}],
        },
        user("<environment_context><cwd>/repo</cwd></environment_context>"),
        user("Fix the off-by-one in fib.py"),
    ]

    # Turn 1: the model thinks, then patches.
    items, first_id = await turn(client, history, cache_key)
    assert [item.type for item in items] == ["reasoning", "custom_tool_call"]
    reasoning, call = items
    assert [part.text for part in reasoning.summary] == [THINKING_TEXT]
    assert reasoning.encrypted_content
    assert call.name == "apply_patch" and call.input == "x"
    upstream = mock.state.requests[-1].body
    assert upstream["system"] == [
        {"type": "text", "text": INSTRUCTIONS},
        {"type": "text", "text": "sandbox: workspace-write"},
    ]
    assert upstream["thinking"]["type"] == "enabled" and upstream["stream"] is True
    assert upstream["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    patch_tool = upstream["tools"][0]
    assert patch_tool["name"] == "apply_patch" and GRAMMAR in patch_tool["description"]
    assert patch_tool["input_schema"]["required"] == ["input"]

    # Turn 2: the patch's output goes back with the reasoning; the model answers.
    history += [passed_back(reasoning), passed_back(call)]
    history.append({"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Success. Updated fib.py"})
    items, second_id = await turn(client, history, cache_key)
    assert [item.type for item in items] == ["reasoning", "message"]
    assert items[1].content[0].text == "The tool returned: Success. Updated fib.py"
    upstream = mock.state.requests[-1].body
    assistant = upstream["messages"][-2]
    assert assistant["role"] == "assistant"
    thinking, tool_use = assistant["content"]
    assert thinking == {"type": "thinking", "thinking": THINKING_TEXT, "signature": thinking_signature(THINKING_TEXT)}
    assert tool_use == {"type": "tool_use", "id": call.call_id, "name": "apply_patch", "input": {"input": "x"}}
    result = upstream["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == call.call_id

    # Turn 3: a new request after the answer, the whole history resent; the model (the mock calls a tool whenever
    # tools are offered and the conversation does not end with tool results) patches again.
    history += [passed_back(item) for item in items]
    history.append(user("Now add a test."))
    items, third_id = await turn(client, history, cache_key)
    assert [item.type for item in items] == ["reasoning", "custom_tool_call"]
    upstream = mock.state.requests[-1].body
    roles = [message["role"] for message in upstream["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    answer = upstream["messages"][3]["content"]
    assert [block["type"] for block in answer] == ["thinking", "text"]
    assert answer[1]["text"] == "The tool returned: Success. Updated fib.py"

    rows = await usage_rows(server, first_id, second_id, third_id)
    assert [(row["status"], row["protocol"]) for row in rows] == [(200, "responses")] * 3
    assert all(row["completion_tokens"] > 0 and row["cost_micros"] > 0 for row in rows)
    json.dumps(history)  # what Codex would store: plain JSON
