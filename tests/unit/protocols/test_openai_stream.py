"""The OpenAI stream relay: whatever the framing, spacing and slicing, the client sees the same events and usage."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.openai_stream import (
    StreamRelay,
    _done_line,
    _without_usage_null,
    estimate_tokens,
    response_usage,
)
from keyrelay.protocols.sse import parse_blocks

WORDS = ["Hel", "lo", " wor", "ld", "!"]
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def chunks(with_usage: bool, error_at: int | None = None) -> list[dict[str, Any]]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    extra = {"usage": None} if with_usage else {}
    out: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}], **extra} for w in WORDS
    ]
    if error_at is not None:
        return [*out[:error_at], {"error": {"message": "boom", "type": "server_error"}}]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    if with_usage:
        out.append({**base, "choices": [], "usage": USAGE})
    return out


def encode(items: list[dict[str, Any]], ending: bytes, spaced: bool, done: bool = True) -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    out = b"".join(b"data: " + json.dumps(c, separators=separators).encode() + ending * 2 for c in items)
    return out + (b"data: [DONE]" + ending * 2 if done else b"")


def relay(stream: bytes, cuts: list[int], hide: bool) -> tuple[StreamRelay, bytes]:
    r = StreamRelay(hide_usage_chunk=hide)
    out = []
    previous = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        out.append(r.feed(stream[previous:cut]))
        previous = cut
    out.append(r.end(clean=True))
    return r, b"".join(out)


def client_view(relayed: bytes) -> list[Any]:
    events, _ = parse_blocks(relayed)
    return [e.data if e.data == b"[DONE]" else json.loads(e.data) for e in events]


@settings(max_examples=150, deadline=None)
@given(
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    spaced=st.booleans(),
    hide=st.booleans(),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
)
def test_any_slicing_same_events_and_usage(ending: bytes, spaced: bool, hide: bool, cuts: list[int]) -> None:
    stream = encode(chunks(with_usage=True), ending, spaced)
    r, relayed = relay(stream, cuts, hide)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (7, 5) if r.usage else False
    assert r.complete() and r.error is None
    view = client_view(relayed)
    expected = [*chunks(with_usage=True), b"[DONE]"]
    if hide:
        # No usage chunk and no "usage" member: exactly what a client that did not ask would get from OpenAI.
        expected = [*chunks(with_usage=False), b"[DONE]"]
    assert view == expected
    if not hide:
        assert relayed == stream  # asked-for usage: the upstream's bytes, untouched


def test_estimate_without_usage_counts_decoded_output() -> None:
    r, _ = relay(encode(chunks(with_usage=False), b"\n", spaced=True), [13, 200], hide=True)
    assert r.usage is None and r.complete()
    assert r.output_tokens_estimate() == estimate_tokens(len("".join(WORDS)))


def test_error_event_before_usage_is_noticed() -> None:
    r, relayed = relay(encode(chunks(with_usage=True, error_at=2), b"\n", spaced=False, done=False), [], hide=True)
    assert r.error == "boom" and not r.complete()
    assert client_view(relayed)[-1] == {"error": {"message": "boom", "type": "server_error"}}


def test_long_stream_without_usage_is_counted_in_batches() -> None:
    piece = {"choices": [{"index": 0, "delta": {"content": "x" * 1000}, "finish_reason": None}]}
    stream = encode([piece] * 200, b"\n", spaced=False)
    r, _ = relay(stream, list(range(0, len(stream), 4096)), hide=False)
    assert r.output_tokens_estimate() == estimate_tokens(200 * 1000)


def test_scrubs_secrets_in_error_events() -> None:
    error = b'data: {"error": {"message": "bad key Bearer sk-abcdefghijklmnop"}}\n\n'
    r = StreamRelay(hide_usage_chunk=False, scrub=lambda data: data.replace(b"sk-abcdefghijklmnop", b"[REDACTED]"))
    out = r.feed(error)
    assert b"sk-abcdefghijklmnop" not in out and b"[REDACTED]" in out


def test_scrubs_an_error_event_whose_key_is_escaped_beside_usage() -> None:
    # No "error" substring anywhere ("\\u0065rror" is the name error): found only by parsing the usage chunk.
    chunk = b'data: {"\\u0065rror": {"message": "bad key sk-abcdefghijklmnop"}, "usage": {"prompt_tokens": 1}}\n\n'
    stream = encode(chunks(with_usage=True)[:2], b"\n", spaced=False, done=False) + chunk + b"data: [DONE]\n\n"
    assert b"error" not in stream
    r = StreamRelay(hide_usage_chunk=False, scrub=lambda data: data.replace(b"sk-abcdefghijklmnop", b"[REDACTED]"))
    out = r.feed(stream)
    assert r.error == "bad key sk-abcdefghijklmnop"[:500] and r.done
    assert b"sk-abcdefghijklmnop" not in out and b"[REDACTED]" in out
    assert out.replace(b"[REDACTED]", b"sk-abcdefghijklmnop") == stream  # every other byte as it came


def test_end_completes_a_whole_last_event_and_drops_a_cut_one() -> None:
    whole = StreamRelay(hide_usage_chunk=False)
    assert whole.feed(b'data: {"choices":[]}\n\ndata: [DONE]') == b'data: {"choices":[]}\n\n'
    assert whole.end(clean=True) == b"data: [DONE]\n\n" and whole.done
    cut = StreamRelay(hide_usage_chunk=False)
    cut.feed(b'data: {"choices":[{"delta":{"content":"Hel')
    assert cut.end(clean=True) == b"" and not cut.complete()  # half an event is never passed on
    reset = StreamRelay(hide_usage_chunk=False)
    reset.feed(b"data: [DONE]")
    assert reset.end(clean=False) == b""  # the connection failed: nothing after it is trusted


DETAILED = {
    "prompt_tokens": 100,
    "completion_tokens": 40,
    "total_tokens": 140,
    "prompt_tokens_details": {"cached_tokens": 60, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 30, "audio_tokens": 0},
}


def test_passthrough_usage_keeps_cached_and_reasoning_tokens() -> None:
    # They are priced apart (cache reads at the cache price): an OpenAI passthrough must not lose them.
    expected = Usage(100, 40, cache_read_tokens=60, reasoning_tokens=30)
    items = chunks(with_usage=True)
    items[-1]["usage"] = DETAILED
    r, _ = relay(encode(items, b"\n", spaced=False), [], hide=False)
    assert r.usage == expected
    assert response_usage(json.dumps({"choices": [], "usage": DETAILED}).encode()) == (expected, 0)
    # A cache write where a server reports one; parts never exceed their totals; junk details are none.
    odd = {**DETAILED, "prompt_tokens_details": {"cached_tokens": 90, "cache_write_tokens": 30}}
    odd["completion_tokens_details"] = {"reasoning_tokens": 99}
    assert response_usage(json.dumps({"usage": odd}).encode())[0] == Usage(
        100, 40, cache_read_tokens=90, cache_write_tokens=10, reasoning_tokens=40
    )
    junk = {**DETAILED, "prompt_tokens_details": {"cached_tokens": True}, "completion_tokens_details": [1]}
    assert response_usage(json.dumps({"usage": junk}).encode())[0] == Usage(100, 40)


# The patterns the relay used (tried at every byte: 19 µs and 55 µs for a 4 KB read) and the substring searches that
# replaced them must find the same [DONE] lines and remove the same "usage": null members.
_DONE_PATTERN = re.compile(rb"^data: ?\[DONE\]\r?$", re.MULTILINE)
_USAGE_NULL_PATTERN = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*,\s*')
_DONE_PIECES = [
    b"data: [DONE]",
    b"data:[DONE]",
    b"data:  [DONE]",
    b"[DONE]",
    b"data: ",
    b"\n",
    b"\r",
    b"\r\n",
    b"x",
    b" ",
]
_NULL_PIECES = [
    b'"usage"',
    b":",
    b"null",
    b",",
    b"{",
    b"}",
    b" ",
    b"\n",
    b"\t",
    b"\x0b",
    b"x",
    b'"',
    b'{"usage": null,',
]


@pytest.mark.parametrize(
    ("searched", "pattern", "pieces"),
    [
        pytest.param(_done_line, lambda b: bool(_DONE_PATTERN.search(b)), _DONE_PIECES, id="done-line"),
        pytest.param(_without_usage_null, lambda b: _USAGE_NULL_PATTERN.sub(b"", b), _NULL_PIECES, id="usage-null"),
    ],
)
@settings(max_examples=800, deadline=None)
@given(data=st.data())
def test_substring_searches_do_what_the_patterns_did(
    searched: Callable[[bytes], object], pattern: Callable[[bytes], object], pieces: list[bytes], data: st.DataObject
) -> None:
    blocks = b"".join(data.draw(st.lists(st.sampled_from(pieces), max_size=16)))
    assert searched(blocks) == pattern(blocks), blocks


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("spaced", [False, True])
def test_done_is_seen_in_every_shape_of_last_read(ending: bytes, spaced: bool) -> None:
    # The last read alone (usage in an earlier read), with usage, with "[DONE]" quoted in content, and without [DONE].
    items = chunks(with_usage=True)
    items[1]["choices"][0]["delta"]["content"] = "say [DONE] then"
    stream = encode(items, ending, spaced)
    usage_at = stream.rfind(b"data: {")
    for cuts in ([usage_at], [stream.rfind(b"data: [DONE]")], [], [len(stream) - 3]):
        r, relayed = relay(stream, cuts, hide=False)
        assert r.done and relayed == stream and r.usage is not None
    r, relayed = relay(encode(items, ending, spaced, done=False), [usage_at], hide=False)
    assert not r.done and r.usage is not None  # "[DONE]" in content is no [DONE] event
