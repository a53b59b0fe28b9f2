"""The Vercel AI SDK, a real JavaScript client, through keyrelay's OpenAI Responses API to each upstream kind.

``tests/js/vercel_ai.mjs`` runs ``ai``'s ``generateText`` and ``streamText`` with ``@ai-sdk/openai``'s default
provider (``createOpenAI({baseURL, apiKey})(model)``, which posts to ``{baseURL}/responses``), one tool with a zod
schema (``get_weather``, ``{city: string, days: number}``, executed in Node) and a multi-step stop condition: the
model calls the tool, the SDK sends the tool's result back, the model answers. Each run is checked for the tool
call (arguments built by the mock from the schema's required properties: ``{"city": "x", "days": 1}``), the
second request carrying the result, the final text (the mock's ``The tool returned: <result>``), the finish
reasons, the usage the SDK saw, the stream part sequence (streamText), and one usage record per step for the key.

Against an ``openai`` upstream (keyrelay's Responses passthrough: the SDK's body with only the model rewritten)
and against ``anthropic``, ``gemini`` and ``openai-compatible`` upstreams (translated). Node.js and the packages
pinned in ``tests/js/package-lock.json`` (installed once per checkout with ``npm ci``) are needed: without them
the tests are skipped, and fail in CI (``CI=true``), like the PostgreSQL tests. SQLite only: the store plays no
part in the wire.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import pytest

from keyrelay.keys.hashing import key_hash
from keyrelay.protocols.base import ProtocolName
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import IN_CI
from tests.integration.gateway.helpers import usage_rows
from tests.integration.protocols.session_helpers import sqlite_url

JS_DIR = Path(__file__).resolve().parents[2] / "js"
SCRIPT = JS_DIR / "vercel_ai.mjs"
LOCK_FILE = JS_DIR / "package-lock.json"
# Written after a successful ``npm ci``: the SHA-256 of the lock file it installed (a changed lock reinstalls).
MARKER = JS_DIR / "node_modules" / ".keyrelay-installed"
NPM_TIMEOUT_S = 600
NODE_TIMEOUT_S = 120

TOOL_RESULT = "sunny and 21 C"  # what get_weather's execute returns (vercel_ai.mjs)
ARGUMENTS = {"city": "x", "days": 1}  # the mock's arguments for the schema's required properties
IN_MICROS, OUT_MICROS = 3, 15  # $3 / $15 per Mtok (conftest PRICES)
# The mock's answer to the tool result; to Gemini a text result goes as {"output": text}, which the mock quotes.
ANSWER = dict.fromkeys(("oa", "an", "oc"), f"The tool returned: {TOOL_RESULT}")
ANSWER["ge"] = f"The tool returned: {json.dumps({'output': TOOL_RESULT}, separators=(',', ':'))}"
UPSTREAM_KIND = {"oa": "openai", "an": "anthropic", "ge": "gemini", "oc": "openai-compatible"}
# Where each call reaches the mock: generateText's and streamText's paths (the Responses passthrough for openai).
UPSTREAM_PATH = {
    "oa": ("/v1/responses", "/v1/responses"),
    "an": ("/v1/messages", "/v1/messages"),
    "ge": ("/v1beta/models/gemini-2.5-flash:generateContent", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
    "oc": ("/v1/chat/completions", "/v1/chat/completions"),
}
# streamText's full stream for a tool call, its result and the answer (a run of one part type counted once).
STREAM_PARTS = [
    "start",
    "start-step",
    "tool-input-start",
    "tool-input-delta",
    "tool-input-end",
    "tool-call",
    "tool-result",
    "finish-step",
    "start-step",
    "text-start",
    "text-delta",
    "text-end",
    "finish-step",
    "finish",
]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (the default fixture also runs PostgreSQL): these tests are about a client's wire."""
    return sqlite_url(tmp_path)


def _unavailable(problem: str) -> NoReturn:
    """Skip for want of Node.js or the packages, or fail in CI (CI=true), as the PostgreSQL tests do."""
    if IN_CI:
        pytest.fail(problem)
    pytest.skip(problem)


def _installed(digest: str) -> bool:
    try:
        return MARKER.read_text().strip() == digest
    except OSError:
        return False


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, with ``tests/js``'s packages installed (``npm ci``, once per lock file).

    An exclusive file lock (in the temporary directory, one per checkout) keeps concurrent test runs from
    installing at the same time; the marker in ``node_modules`` names the lock file it was installed from.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("Node.js and npm are needed for the Vercel AI SDK tests (node or npm not on PATH)")
    digest = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    checkout = hashlib.sha256(str(JS_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"keyrelay-npm-ci-{checkout}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(digest):
            try:
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                    cwd=JS_DIR,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                _unavailable(f"npm ci in {JS_DIR} took more than {NPM_TIMEOUT_S} s")
            if done.returncode != 0:
                _unavailable(f"npm ci in {JS_DIR} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            MARKER.write_text(digest)
    return node


async def run_sdk(node: str, config: dict[str, str]) -> dict[str, Any]:
    """Run vercel_ai.mjs with ``config`` (on stdin) and return its JSON line; a failure fails the test."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "NODE_OPTIONS"))}
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        cwd=JS_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(config).encode()), timeout=NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"vercel_ai.mjs did not finish within {NODE_TIMEOUT_S} s ({config['mode']}, {config['model']})")
    lines = out.decode().strip().splitlines()
    assert lines, f"vercel_ai.mjs printed nothing (exit {proc.returncode}): {err.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.returncode != 0 or not result.get("ok"):
        pytest.fail(f"the AI SDK failed (exit {proc.returncode}): {json.dumps(result, indent=1)}\n{err.decode()}")
    return result


def runs(types: list[str]) -> list[str]:
    """The part types with each run of one type counted once (text-delta x 9 -> text-delta)."""
    return [name for name, _ in itertools.groupby(types)]


@pytest.mark.parametrize("short", list(UPSTREAM_KIND))
@pytest.mark.parametrize("mode", ["generate", "stream"])
async def test_tool_loop_through_the_responses_api(
    node: str, server: RunningServer, mock: MockUpstream, key: str, mode: str, short: str
) -> None:
    model = "oc-model" if short == "oc" else f"{short}-model"
    config = {"baseURL": f"{server.base_url}/v1", "apiKey": key, "model": model, "mode": mode}
    result = await run_sdk(node, config)

    # Two model calls, both POST /v1/responses answered 200: the tool call, then the answer to its result.
    requests = result["requests"]
    assert [(r["method"], r["url"], r["status"]) for r in requests] == [
        ("POST", f"{server.base_url}/v1/responses", 200)
    ] * 2, requests
    streamed = mode == "stream"
    expected_type = "text/event-stream" if streamed else "application/json"
    assert all(r["contentType"].startswith(expected_type) for r in requests), requests
    assert all(r["body"].get("stream", False) is streamed for r in requests)
    # Each reached the upstream once; to an openai upstream as the SDK's own body with only the model rewritten.
    assert [sent.path for sent in mock.requests] == [UPSTREAM_PATH[short][streamed]] * 2
    if short == "oa":
        assert [sent.body for sent in mock.requests] == [{**r["body"], "model": "gpt-4o-mini"} for r in requests]

    # The tool was called once, with the schema's required arguments, executed, and its result sent back.
    [call] = result["toolCalls"]
    assert (call["name"], call["input"]) == ("get_weather", ARGUMENTS)
    assert call["id"]
    assert result["executed"] == [ARGUMENTS]
    assert result["toolResults"] == [{"id": call["id"], "name": "get_weather", "output": TOOL_RESULT}]
    sent_back = [item for item in requests[1]["body"]["input"] if item.get("type") == "function_call_output"]
    assert sent_back == [{"type": "function_call_output", "call_id": call["id"], "output": TOOL_RESULT}]

    # The answer to the tool result, and how each step finished.
    assert result["text"] == ANSWER[short]
    assert result["finishReason"] == "stop"
    steps = result["stepDetails"]
    assert result["steps"] == len(steps) == 2
    assert [step["finishReason"] for step in steps] == ["tool-calls", "stop"]
    assert [step["text"] for step in steps] == ["", result["text"]]
    if streamed:
        assert runs(result["partTypes"]) == STREAM_PARTS, result["partTypes"]

    # Usage: each step's counts, their sum as the total.
    for step in steps:
        assert step["usage"]["inputTokens"] > 0 and step["usage"]["outputTokens"] > 0, step["usage"]
    total = result["totalUsage"]
    assert total["inputTokens"] == sum(step["usage"]["inputTokens"] for step in steps)
    assert total["outputTokens"] == sum(step["usage"]["outputTokens"] for step in steps)

    # One usage record per step, for the key, with the tokens the SDK saw.
    request_ids = [r["requestId"] for r in requests]
    assert all(request_ids), requests
    rows = await usage_rows(server, *request_ids)
    for row, step in zip(rows, steps, strict=True):
        assert (row["key_hash"], row["key_name"], row["status"]) == (key_hash(key), "wires", 200)
        assert (row["protocol"], row["upstream_kind"], row["provider"]) == (
            ProtocolName.RESPONSES.value,
            UPSTREAM_KIND[short],
            short,
        )
        assert (row["model"], row["streamed"], row["usage_estimated"]) == (model, streamed, False)
        prompt, completion = step["usage"]["inputTokens"], step["usage"]["outputTokens"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
        assert row["cost_micros"] == prompt * IN_MICROS + completion * OUT_MICROS
