"""The SSE decoder against the WHATWG rules: every framing, every slicing of the stream, the same events."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.protocols.sse import BOM, SSEDecoder, encode_event, parse_blocks, parse_lines

ENDINGS = (b"\n", b"\r\n", b"\r")


@dataclass(frozen=True)
class Expected:
    event: str
    data: bytes
    id: str


def decode(stream: bytes, cuts: list[int]) -> tuple[list[tuple[str, bytes, str]], bytes]:
    """Feed ``stream`` cut at ``cuts``; the events and the concatenation of every byte handed back."""
    decoder = SSEDecoder()
    out: list[bytes] = []
    events = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        blocks = decoder.feed(stream[previous:cut])
        out.append(blocks)
        events += [(e.event, e.data, e.id) for e in decoder.events(blocks)]
        previous = cut
    out.append(decoder.flush())
    return events, b"".join(out)


# --- the rules, one by one -----------------------------------------------------------------------------------


def test_every_line_ending_dispatches() -> None:
    for ending in ENDINGS:
        stream = b"data: one" + ending + ending + b"data: two" + ending + ending
        events, relayed = decode(stream, [])
        assert events == [("message", b"one", ""), ("message", b"two", "")], ending
        assert relayed == stream


def test_crlf_split_inside_the_pair_and_at_every_byte() -> None:
    stream = b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\n'
    for cut in range(len(stream) + 1):
        events, relayed = decode(stream, [cut])
        assert [e[1] for e in events] == [b'{"a":1}', b'{"b":2}'], cut
        assert relayed == stream


def test_first_event_is_handed_back_before_the_stream_ends() -> None:
    # The fault this module fixes: with CRLF framing nothing reached the client until the upstream closed.
    for ending in ENDINGS:
        decoder = SSEDecoder()
        first = b"data: first" + ending + ending
        assert decoder.feed(first) == first
        assert decoder.feed(b"data: sec") == b""


def test_field_syntax() -> None:
    stream = (
        b": a comment\n"
        b"event: add\n"
        b"data:no space\n"
        b"data:  two spaces\n"
        b"data\n"  # a field without a colon: empty value
        b"id: 7\n"
        b"retry: 1500\n"
        b"unknown: ignored\n"
        b"\n"
        b"data: x\nretry: 12a\nid: bad\x00id\n\n"  # retry not digits, id with NUL: both ignored
        b"event: nothing\n\n"  # no data: no event, and the event name does not leak into the next
        b"data: y\n\n"
    )
    events, _ = parse_blocks(stream)
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [
        ("add", b"no space\n two spaces\n", "7", 1500),
        ("message", b"x", "7", None),
        ("message", b"y", "7", None),
    ]


def test_unterminated_last_event_is_not_dispatched_but_relayed() -> None:
    events, relayed = decode(b"data: a\n\ndata: b", [])
    assert events == [("message", b"a", "")]
    assert relayed == b"data: a\n\ndata: b"


def test_byte_order_mark_at_start_is_ignored() -> None:
    events, relayed = decode(BOM + b"data: a\r\n\r\n", [1, 2])
    assert events == [("message", b"a", "")]
    assert relayed.startswith(BOM)


def test_raw_is_the_exact_block() -> None:
    stream = b": keep-alive\r\n\r\nevent: e\r\ndata: 1\r\n\r\n"
    events, _ = parse_blocks(stream)
    assert [e.raw for e in events] == [b"event: e\r\ndata: 1\r\n\r\n"]


def test_encode_event_round_trips() -> None:
    frame = encode_event(b"line1\nline2", event="message_start")
    assert frame == b"event: message_start\ndata: line1\ndata: line2\n\n"
    [event], _ = parse_blocks(frame)
    assert (event.event, event.data) == ("message_start", b"line1\nline2")


# --- the property: any valid stream, cut anywhere, yields the same events --------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=12).map(
    lambda s: s.encode()
)
_name = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Expected]]:
    """A valid stream and the events it must yield, with a random line ending on every line."""
    lines: list[bytes] = []
    expected: list[Expected] = []
    last_id = ""
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(b":" + draw(_text))
        event = draw(st.none() | _name)
        if event is not None:
            lines.append(b"event:" + draw(st.sampled_from([b"", b" "])) + event.encode())
        data = draw(st.lists(_text, min_size=1, max_size=3))
        for item in data:
            space = draw(st.sampled_from([b"", b" "]))
            if item.startswith(b" "):
                space = b" "  # one space after the colon is dropped: keep the item's own
            lines.append(b"data:" + space + item)
        if draw(st.booleans()):
            last_id = draw(_name)
            lines.append(b"id: " + last_id.encode())
        lines.append(b"")  # the blank line
        expected.append(Expected(event or "message", b"\n".join(data), last_id))
    out = b""
    previous = b""
    for line in lines:
        ending = draw(st.sampled_from(ENDINGS))
        if previous == b"\r" and line == b"" and ending == b"\n":
            ending = b"\r\n"  # CR then an LF-terminated blank line would read as one CRLF: not this stream
        out += line + ending
        previous = ending
    return out, expected


@settings(max_examples=300, deadline=None)
@given(data=streams(), cuts=st.lists(st.integers(0, 400), max_size=8), bom=st.booleans())
def test_any_stream_cut_anywhere_yields_the_same_events(
    data: tuple[bytes, list[Expected]], cuts: list[int], bom: bool
) -> None:
    stream, expected = data
    if bom:
        stream = BOM + stream
    cuts = [c % (len(stream) + 1) for c in cuts]
    events, relayed = decode(stream, cuts)
    assert relayed == stream  # nothing lost, nothing added
    assert events == [(e.event, e.data, e.id) for e in expected]
    # Every byte at once and one byte at a time agree too.
    assert decode(stream, list(range(len(stream))))[0] == events


_payload = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)


@st.composite
def provider_shaped(draw: st.DrawFn) -> bytes:
    """Blocks in the shapes providers send (data-only LF or CRLF, or event + data LF), sometimes broken."""
    shape = draw(st.sampled_from(["data-lf", "data-crlf", "named-lf"]))
    eol = b"\r\n" if shape == "data-crlf" else b"\n"
    blocks = []
    for _ in range(draw(st.integers(1, 5))):
        head = b"event: " + draw(_payload) + eol if shape == "named-lf" else b""
        blocks.append(head + b"data: " + draw(_payload) + eol + eol)
    stream = b"".join(blocks)
    if draw(st.booleans()):  # a stray byte that takes the stream out of the shape (or not)
        at = draw(st.integers(0, len(stream) - 1))
        stream = stream[:at] + draw(st.sampled_from([b"\r", b"\n", b":", b" ", b"data: "])) + stream[at:]
    return stream


@settings(max_examples=500, deadline=None)
@given(blocks=provider_shaped(), last_id=st.sampled_from(["", "7"]))
def test_common_shapes_read_in_c_equal_the_line_rules(blocks: bytes, last_id: str) -> None:
    # Only whole blocks are parsed: cut what follows the last blank line, as SSEDecoder.feed does.
    decoder = SSEDecoder()
    whole = decoder.feed(blocks)
    assert parse_blocks(whole, last_id) == parse_lines(whole, last_id)


def test_provider_shapes_take_the_fast_path() -> None:
    from keyrelay.protocols.sse import _common_shape

    for blocks in (b"data: {}\n\ndata: x\n\n", b"data: {}\r\n\r\n", b"event: ping\ndata: {}\n\nevent: \ndata: \n\n"):
        assert _common_shape(blocks, "") == parse_lines(blocks)[0]
    assert _common_shape(b"data: a\ndata: b\n\n", "") is None  # multi-line data: the line rules
    assert _common_shape(b"data: a\r\n\n", "") is None  # mixed line ends
