"""The Gemini passthrough reader agrees with the full stream decoder on what a relay needs, at any slicing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.gateway.relays import PassthroughRelay
from keyrelay.gateway.wires import INBOUND, DecodingReader
from keyrelay.logs import SecretScrubber
from keyrelay.protocols.base import ProtocolName
from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.openai_stream import estimate_tokens
from keyrelay.providers.gemini import GeminiStreamDecoder
from keyrelay.providers.gemini_passthrough import GeminiPassthroughReader
from tests.unit.providers import reading

DATA = Path(__file__).resolve().parents[2] / "data" / "gemini"
GOLDEN = ["plain.sse", "function_call.sse", "thoughts.sse"]


def golden(name: str) -> bytes:
    """A golden stream with LF framing (the files keep Gemini's own CRLF)."""
    return (DATA / name).read_bytes().replace(b"\r\n", b"\n")


def chunk(**fields: Any) -> bytes:
    return b"data: " + orjson.dumps(fields) + b"\n\n"


def text(words: str, finish: str | None = None, **usage: int) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": words}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return chunk(candidates=[candidate], usageMetadata=usage)


def read(stream: bytes, cuts: list[int] | None = None) -> tuple[GeminiPassthroughReader, bool]:
    return reading.read(GeminiPassthroughReader(), stream, cuts)


def decode(stream: bytes) -> tuple[DecodingReader, bool]:
    return reading.read(DecodingReader(GeminiStreamDecoder()), stream)


def without_end(stream: bytes) -> bytes:
    """The stream's chunks before the one with the finishReason: output is then measured."""
    return b"".join(c + b"\n\n" for c in stream.split(b"\n\n") if c.strip() and b"finishReason" not in c)


def test_plain_stream_as_gemini_frames_it() -> None:
    stream = (DATA / "plain.sse").read_bytes()
    assert stream.count(b"\r\n\r\n") == 2  # Gemini's CRLF framing
    reader, errored = read(stream)
    assert reader.usage == Usage(8, 11) and reader.complete and not errored
    assert reader.output_bytes == 0  # finished in the same read: never measured
    first = stream.index(b"\r\n\r\n") + 4
    reader, _ = read(stream[:first])
    assert not reader._full and reader.output_bytes == len(b"Elara found the backpack")  # the lean path


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(GOLDEN), cut=st.booleans(), data=st.data())
def test_any_slicing_and_framing_reads_what_the_decoder_reads(name: str, cut: bool, data: st.DataObject) -> None:
    lf = without_end(golden(name)) if cut else golden(name)
    stream, cuts = data.draw(reading.variants(lf))
    reader, full = reading.agrees_with_decoder(GeminiPassthroughReader(), GeminiStreamDecoder, stream, cuts)
    if cut:  # an unfinished stream measures everything, exactly as the decoder counts it
        assert reader.output_bytes == full.output_bytes


def test_usage_is_the_last_chunk_that_reports_it() -> None:
    stream = text("a", promptTokenCount=5, candidatesTokenCount=1) + text("b") + text("c", candidatesTokenCount=3)
    reader, _ = read(stream.replace(b"candidatesTokenCount", b"candidatesTokenCount", 1))
    assert reader.usage == Usage(0, 3)  # the last chunk's totals (its prompt count absent)
    reader, _ = read(text("a", promptTokenCount=5, candidatesTokenCount=1) + text("b"))
    assert reader.usage == Usage(5, 1) and not reader.complete  # an empty usageMetadata keeps the last one
    assert reader.output_bytes == 2


def test_snake_case_fields_and_blocked_prompts_end_the_stream() -> None:
    snake = b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]},"finish_reason":"STOP"}],' + (
        b'"usage_metadata":{"prompt_token_count":4,"candidates_token_count":2}}\n\n'
    )
    reader, _ = read(snake)
    full, _ = decode(snake)
    assert reader.complete and reader.usage == full.usage
    blocked = chunk(promptFeedback={"blockReason": "SAFETY"}, usageMetadata={"promptTokenCount": 9})
    reader, errored = read(blocked)
    assert reader.complete and reader.usage == Usage(9, 0) and not errored


def test_errors_are_seen() -> None:
    start = text("hello ", promptTokenCount=5, candidatesTokenCount=1)
    error = chunk(error={"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"})
    reader, errored = read(start + error)
    assert errored and not reader.complete and reader.usage == Usage(5, 1)
    assert read(start + b'data: {"finishReason": oops}\n\n')[1]  # a chunk read for its end is not JSON
    reader, errored = read(start + b'data: {"usageMetadata": oops}\n\n')  # read only for usage: passed over
    assert not errored and reader.usage == Usage(5, 1)
    assert read(start + b": comment\ndata: [1]\n\n")[1]  # another shape: the full decoder reads it
    reader, errored = read(start + error[:-2])  # an error chunk without its blank line, delivered by end()
    assert errored


def test_a_cut_stream_is_billed_for_what_it_relayed() -> None:
    relay = PassthroughRelay(INBOUND[ProtocolName.GEMINI], GeminiPassthroughReader(), SecretScrubber([]))
    relay.feed(text("x" * 200, promptTokenCount=12, candidatesTokenCount=1))
    _, failure = relay.close()
    assert failure is not None
    assert relay.usage == Usage(12, estimate_tokens(200), estimated=True)


def test_long_streams_are_measured_as_they_go() -> None:
    reader = GeminiPassthroughReader()
    piece = text("y" * 1000, promptTokenCount=3, candidatesTokenCount=1)
    for _ in range(200):  # 200 KB: measured every 64 KB, nothing held beyond that
        reader.feed(piece)
    assert reader.output_bytes == 200_000
