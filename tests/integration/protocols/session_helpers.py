"""Helpers of the client-session tests: SQLite for tests in which the store plays no part, SSE parsing, requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database in ``tmp_path`` (the tests that use it are not about storage)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"


def sse_frames(body: bytes) -> list[tuple[str | None, Any]]:
    """The (event name, parsed data) of each SSE frame of ``body`` (any line ending), in order.

    A ``data`` that is not JSON (``[DONE]``) is kept as a string.
    """
    text = body.decode().replace("\r\n", "\n").replace("\r", "\n")
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
