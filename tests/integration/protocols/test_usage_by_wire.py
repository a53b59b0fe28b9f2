"""Usage records and ``GET /api/v1/usage`` on every path: cache reads and writes, reasoning, and their prices.

Prices of every test model (conftest): input $3, cache read $0.30, cache write $3.75, output $15 per Mtok; the
cost is ceil(uncached × 3 + cache read × 0.3 + cache write × 3.75 + output × 15) micro-dollars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from keyrelay.testing.mock_upstream import MockUpstream, count_prompt_tokens
from keyrelay.testing.mock_upstream.anthropic import count_anthropic_tokens
from keyrelay.testing.mock_upstream.behaviour import THINKING_TEXT
from keyrelay.testing.mock_upstream.gemini import count_gemini_tokens
from keyrelay.testing.server import RunningServer
from tests.integration.gateway.helpers import usage_rows
from tests.integration.protocols.session_helpers import body, credential, sqlite_url, sse_frames, url

WIRES = ("openai", "anthropic", "gemini")
THINKING_TOKENS = len(THINKING_TEXT.split(" "))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite: the store plays no part here (test_usage_api_by_wire.py runs on both databases)."""
    return sqlite_url(tmp_path)


def expected_cost(row: dict[str, Any]) -> int:
    """The exact price in micro-dollars of a usage record, rounded up."""
    uncached = row["prompt_tokens"] - row["cache_read_tokens"] - row["cache_write_tokens"]
    raw = uncached * 3_000_000 + row["cache_read_tokens"] * 300_000 + row["cache_write_tokens"] * 3_750_000
    raw += row["completion_tokens"] * 15_000_000
    return -(-raw // 1_000_000)


async def post(
    client: httpx.AsyncClient, wire: str, key: str, model: str, payload: dict[str, Any], *, stream: bool = False
) -> httpx.Response:
    headers = {"content-type": "application/json", **credential(wire, key)}
    r = await client.post(url(wire, model, stream=stream), content=orjson.dumps(payload), headers=headers)
    assert r.status_code == 200, r.text
    return r


def client_usage(wire: str, r: httpx.Response, stream: bool) -> dict[str, Any]:
    """The usage object the client saw, in its wire."""
    if not stream:
        data = r.json()
        return data["usageMetadata"] if wire == "gemini" else data["usage"]
    frames = [data for _, data in sse_frames(r.content) if isinstance(data, dict)]
    if wire == "openai":
        return [f for f in frames if f.get("usage")][-1]["usage"]
    if wire == "anthropic":
        start = frames[0]["message"]["usage"]
        return {**start, **[f for f in frames if f["type"] == "message_delta"][-1]["usage"]}
    return frames[-1]["usageMetadata"]


def seen_cache_read(wire: str, usage: dict[str, Any]) -> int:
    if wire == "openai":
        return int(usage.get("prompt_tokens_details", {}).get("cached_tokens", 0))
    if wire == "anthropic":
        return int(usage.get("cache_read_input_tokens") or 0)
    return int(usage.get("cachedContentTokenCount", 0))


def seen_prompt(wire: str, usage: dict[str, Any]) -> int:
    """Every prompt token the client was told of, cached ones included."""
    if wire == "openai":
        return int(usage["prompt_tokens"])
    if wire == "anthropic":
        parts = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        return sum(int(usage.get(name) or 0) for name in parts)
    return int(usage["promptTokenCount"])


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    "variant", ["an-model-cache-hit", "an-model-cache-write", "ge-model-cache-hit", "oa-model-cache-hit"]
)
async def test_cache_tokens_and_prices(
    server: RunningServer,
    client: httpx.AsyncClient,
    mock: MockUpstream,
    key: str,
    variant: str,
    wire: str,
    stream: bool,
) -> None:
    r = await post(
        client, wire, key, variant, body(wire, variant, stream=stream, text="hello there, cache"), stream=stream
    )
    sent = mock.requests[-1].body
    counts = {
        "an": count_anthropic_tokens,
        "ge": count_gemini_tokens,
        "oa": lambda b: count_prompt_tokens(b["messages"]),
    }
    prompt = counts[variant[:2]](sent)
    cached = prompt // 2
    [row] = await usage_rows(server, r.headers["x-request-id"])
    read, write = (0, cached) if "write" in variant else (cached, 0)
    assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (prompt, read, write), row
    assert row["completion_tokens"] == 5 and row["reasoning_tokens"] == 0
    assert row["cost_micros"] == expected_cost(row)
    assert (row["status"], row["usage_estimated"], row["protocol"]) == (200, False, wire)
    assert row["upstream_kind"] == {"an": "anthropic", "ge": "gemini", "oa": "openai"}[variant[:2]]
    # The client is told the same counts in its own wire.
    seen = client_usage(wire, r, stream)
    assert seen_prompt(wire, seen) == prompt, seen
    assert seen_cache_read(wire, seen) == read, seen
    if wire == "anthropic":
        assert int(seen.get("cache_creation_input_tokens") or 0) == write


THINKING: dict[str, dict[str, Any]] = {
    "openai": {"reasoning_effort": "low", "max_tokens": 2048},  # low = a 1,024 budget toward Anthropic
    "anthropic": {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
    "gemini": {"generationConfig": {"maxOutputTokens": 2048, "thinkingConfig": {"thinkingBudget": 1024}}},
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("upstream", ["oa", "an", "ge"])
async def test_reasoning_tokens_are_billed_as_output(
    server: RunningServer,
    client: httpx.AsyncClient,
    mock: MockUpstream,
    key: str,
    upstream: str,
    wire: str,
    stream: bool,
) -> None:
    model = f"{upstream}-model"
    payload = {**body(wire, model, stream=stream), **THINKING[wire]}
    r = await post(client, wire, key, model, payload, stream=stream)
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert row["status"] == 200 and not row["usage_estimated"]
    # Anthropic does not say how many output tokens were thinking; OpenAI and Gemini do.
    reasoning = 0 if upstream == "an" else THINKING_TOKENS
    assert row["reasoning_tokens"] == reasoning, row
    # The mock's answer: thinking, then the reply cut to what the limit leaves (5 tokens when the client gave 5).
    assert row["completion_tokens"] >= THINKING_TOKENS + 1, row
    assert row["cost_micros"] == expected_cost(row)
    seen = client_usage(wire, r, stream)
    if wire == "openai":
        assert seen["completion_tokens"] == row["completion_tokens"]
        assert seen.get("completion_tokens_details", {}).get("reasoning_tokens", 0) == reasoning
    elif wire == "gemini":
        thoughts = seen.get("thoughtsTokenCount", 0)
        assert thoughts == reasoning and seen["candidatesTokenCount"] + thoughts == row["completion_tokens"]
    else:
        assert seen["output_tokens"] == row["completion_tokens"]
