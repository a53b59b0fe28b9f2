"""Helpers of the client-session tests: SQLite for tests in which the store plays no part, SSE parsing, requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson


def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database in ``tmp_path`` (the tests that use it are not about storage)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


def sse_frames(raw: bytes) -> list[tuple[str | None, Any]]:
    """The (event name, parsed data) of each SSE frame of ``raw`` (any line ending), in order.

    A ``data`` that is not JSON (``[DONE]``) is kept as a string.
    """
    text = raw.decode().replace("\r\n", "\n").replace("\r", "\n")
    frames: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if not data:
            continue
        joined = "\n".join(data)
        try:
            frames.append((event, orjson.loads(joined)))
        except orjson.JSONDecodeError:
            frames.append((event, joined))
    return frames


def anthropic_blocks(frames: list[tuple[str | None, Any]]) -> list[dict[str, Any]]:
    """Check an Anthropic stream's event grammar and return its content blocks, rebuilt from the deltas.

    message_start (with usage) first; every block opened, given deltas of its kind and closed, with indices in
    order; then message_delta (stop_reason and usage) and message_stop last. ``ping`` may come anywhere.
    """
    names = [name for name, _ in frames if name != "ping"]
    for name, data in frames:
        assert isinstance(data, dict) and data["type"] == name, (name, data)
    assert names[0] == "message_start", names
    start = frames[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == []
    assert isinstance(start["usage"]["input_tokens"], int)
    assert names[-2:] == ["message_delta", "message_stop"], names
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    for name, data in frames:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block, delta = blocks[data["index"]], data["delta"]
            match delta["type"]:
                case "text_delta":
                    block["text"] += delta["text"]
                case "input_json_delta":
                    block["_json"] = block.get("_json", "") + delta["partial_json"]
                case "thinking_delta":
                    block["thinking"] += delta["thinking"]
                case "signature_delta":
                    block["signature"] = delta["signature"]
                case other:
                    raise AssertionError(other)
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    for block in blocks:
        if "_json" in block:
            block["input"] = orjson.loads(block.pop("_json") or "{}")
    delta = [data for name, data in frames if name == "message_delta"][-1]
    assert delta["delta"]["stop_reason"] is not None
    assert isinstance(delta["usage"]["output_tokens"], int)
    return blocks


def message_delta(frames: list[tuple[str | None, Any]]) -> dict[str, Any]:
    """The last ``message_delta`` event of an Anthropic stream."""
    found: dict[str, Any] = [data for name, data in frames if name == "message_delta"][-1]
    return found


def credential(wire: str, key: str) -> dict[str, str]:
    """The headers that carry ``key`` in ``wire`` (and Anthropic's version header)."""
    if wire == "openai":
        return {"authorization": f"Bearer {key}"}
    if wire == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"x-goog-api-key": key}


def url(wire: str, model: str, *, stream: bool = False) -> str:
    """The path of a chat call in ``wire`` (Gemini streams as SSE)."""
    if wire == "openai":
        return "/v1/chat/completions"
    if wire == "anthropic":
        return "/v1/messages"
    return (
        f"/v1beta/models/{model}:streamGenerateContent?alt=sse" if stream else f"/v1beta/models/{model}:generateContent"
    )


def body(wire: str, model: str, *, stream: bool = False, text: str = "hi") -> dict[str, Any]:
    """A minimal chat request in ``wire``: one user message, at most 5 output tokens."""
    if wire == "openai":
        out: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 5}
        return {**out, "stream": True, "stream_options": {"include_usage": True}} if stream else out
    if wire == "anthropic":
        out = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
        return {**out, "stream": True} if stream else out
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": {"maxOutputTokens": 5}}


async def call(
    client: httpx.AsyncClient, wire: str, key: str, model: str, *, stream: bool = False, text: str = "hi"
) -> httpx.Response:
    """A minimal chat call in ``wire`` (see :func:`body`)."""
    headers = {"content-type": "application/json", **credential(wire, key)}
    payload = orjson.dumps(body(wire, model, stream=stream, text=text))
    return await client.post(url(wire, model, stream=stream), content=payload, headers=headers)
