"""The Anthropic passthrough reader agrees with the full stream decoder on what a relay needs, at any slicing."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.gateway.relays import PassthroughRelay, TranslatingRelay, partial_usage
from keyrelay.gateway.wires import INBOUND, DecodingReader
from keyrelay.logs import SecretScrubber
from keyrelay.protocols.anthropic_stream import AnthropicStreamEncoder
from keyrelay.protocols.base import ProtocolName
from keyrelay.protocols.canonical import ChatRequest, Message, Role, TextPart, Usage
from keyrelay.protocols.openai_stream import estimate_tokens
from keyrelay.providers.anthropic import AnthropicStreamDecoder
from keyrelay.providers.anthropic_passthrough import AnthropicPassthroughReader
from tests.unit.providers import reading

DATA = Path(__file__).resolve().parents[2] / "data" / "anthropic"
GOLDEN = ["text.sse", "tool_use.sse", "thinking.sse"]


def golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def event(kind: str, **payload: object) -> bytes:
    """One event as the API frames it: an event line, compact JSON data, a blank line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def read(stream: bytes, cuts: list[int] | None = None) -> tuple[AnthropicPassthroughReader, bool]:
    return reading.read(AnthropicPassthroughReader(), stream, cuts)


def unfinished(name: str) -> bytes:
    """A golden stream cut before its final usage (message_delta): the output is then measured."""
    stream = golden(name)
    return stream[: stream.index(b"event: message_delta")]


def decode(stream: bytes) -> tuple[DecodingReader, bool]:
    return reading.read(DecodingReader(AnthropicStreamDecoder()), stream)


def test_text_stream() -> None:
    reader, errored = read(golden("text.sse"))
    assert reader.usage == Usage(25, 15) and reader.complete and not errored


def test_output_bytes_are_the_content_as_written() -> None:
    # Compact JSON, as the API sends it: each kind of delta has a known envelope.
    reader, _ = read(unfinished("tool_use.sse"))
    full, _ = decode(unfinished("tool_use.sse"))
    # The decoder counts the tool's name and the decoded arguments; the reader counts arguments as written,
    # each escaped quote two bytes.
    escapes = golden("tool_use.sse").count(b'\\"')
    assert reader.output_bytes == full.output_bytes - len(b"get_weather") + escapes > 100


def test_thinking_signature_is_not_output() -> None:
    reader, _ = read(unfinished("thinking.sse"))
    full, _ = decode(unfinished("thinking.sse"))
    # Spaced JSON (the docs' example) has a wider envelope (8 spaces) and "\n" counts two bytes: a little
    # over, never under. The signature's 60 bytes are not counted.
    escapes = golden("thinking.sse").count(b"\\n")
    assert reader.output_bytes == full.output_bytes + 8 * 3 + escapes


def test_output_is_not_measured_once_the_final_usage_arrived() -> None:
    reader, _ = read(golden("tool_use.sse"))
    assert reader.usage == Usage(472, 89) and reader.output_bytes == 0  # one read: never measured
    reader, _ = read(golden("tool_use.sse"), [len(unfinished("tool_use.sse"))])
    assert reader.output_bytes == 0  # the held deltas were dropped when message_delta reported the usage


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(GOLDEN), cut=st.booleans(), data=st.data())
def test_any_slicing_and_framing_reads_what_the_decoder_reads(name: str, cut: bool, data: st.DataObject) -> None:
    lf = unfinished(name) if cut else golden(name)
    stream, cuts = data.draw(reading.variants(lf))
    reader, full = reading.agrees_with_decoder(AnthropicPassthroughReader(), AnthropicStreamDecoder, stream, cuts)
    if cut:
        assert reader.output_bytes == read(lf)[0].output_bytes  # the same at any framing and slicing


def test_errors_are_seen_in_any_form() -> None:
    start = event("message_start", message={"id": "m", "usage": {"input_tokens": 5, "output_tokens": 1}})
    overloaded = event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    assert read(start + overloaded)[1]
    assert read(start + b"event: message_delta\ndata: {not json}\n\n")[1]
    assert read(b'event: message_start\ndata: {"type":"message_start","message":[]}\n\n')[1]
    # no event line: told apart by the data's type
    assert read(start + b'data: {"type":"error","error":{"message":"x"}}\n\n')[1]
    # a last error event without its blank line, delivered by end()
    assert read(start + overloaded[:-2])[1]
    reader, errored = read(start + event("ping") + event("future_event", x=1))
    assert not errored and not reader.complete and reader.usage == Usage(5, 1)


def test_unusual_blocks_are_parsed_by_the_sse_rules() -> None:
    stream = (
        b": a comment\nevent: message_start\n"
        b'data: {"type":"message_start",\ndata: "message":{"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
        b"id: 3\nevent: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abcd"}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    reader, errored = read(stream)
    assert not errored and reader.complete
    assert reader.usage == Usage(7, 2)
    assert reader.output_bytes == 4


def test_usage_fields_merge_as_totals() -> None:
    stream = event(
        "message_start",
        message={"usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}},
    ) + event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 30})
    reader, _ = read(stream)
    assert reader.usage == Usage(100, 30, cache_read_tokens=90)


# --- billing a stream cut before its final usage ---------------------------------------------------------------


def cut_stream() -> bytes:
    """message_start (output_tokens 1) and 200 bytes of text, then nothing: no message_delta, no message_stop."""
    start = event("message_start", message={"id": "m", "usage": {"input_tokens": 12, "output_tokens": 1}})
    deltas = b"".join(
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "x" * 20}) for _ in range(10)
    )
    return start + event("content_block_start", index=0, content_block={"type": "text", "text": ""}) + deltas


def test_partial_usage_bills_the_output_relayed() -> None:
    assert partial_usage(Usage(12, 1), complete=False, output_bytes=200) == Usage(12, 50, estimated=True)
    assert partial_usage(Usage(12, 80), complete=False, output_bytes=200) == Usage(12, 80)
    assert partial_usage(Usage(12, 1), complete=True, output_bytes=200) == Usage(12, 1)
    assert partial_usage(None, complete=False, output_bytes=200) is None


@pytest.mark.parametrize("kind", ["passthrough", "translated"])
def test_a_cut_stream_is_billed_for_what_it_relayed(kind: str) -> None:
    scrubber = SecretScrubber([])
    relay: PassthroughRelay | TranslatingRelay
    if kind == "passthrough":
        relay = PassthroughRelay(INBOUND[ProtocolName.ANTHROPIC], AnthropicPassthroughReader(), scrubber)
    else:
        request = ChatRequest(model="m", messages=[Message(Role.USER, [TextPart("hi")])])
        relay = TranslatingRelay(AnthropicStreamDecoder(), AnthropicStreamEncoder(request, "msg_1", 3), scrubber)
    relay.feed(cut_stream())
    _, failure = relay.close()
    assert failure is not None
    assert relay.usage == Usage(12, estimate_tokens(200), estimated=True)
