"""Feeding a passthrough reader a stream at given cut points, and checking it against the full decoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hypothesis import strategies as st

from keyrelay.gateway.wires import DecodingReader
from keyrelay.protocols.base import PassthroughReader, StreamDecoder
from keyrelay.protocols.sse import BOM

R = TypeVar("R", bound=PassthroughReader)


def read(reader: R, stream: bytes, cuts: list[int] | None = None) -> tuple[R, bool]:
    """Feed ``stream`` cut at ``cuts`` (byte offsets), then end it: the reader and whether it saw an error."""
    points = sorted(set(cuts or []))
    errored = False
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        errored |= reader.feed(stream[a:b])
    errored |= reader.end()
    return reader, errored


def agrees_with_decoder(
    reader: PassthroughReader, decoder: Callable[[], StreamDecoder], stream: bytes, cuts: list[int]
) -> tuple[PassthroughReader, DecodingReader]:
    """Read ``stream`` at ``cuts`` and whole with the full decoder; assert they agree on usage, end and errors."""
    reader, errored = read(reader, stream, cuts)
    full, full_errored = read(DecodingReader(decoder()), stream)
    assert (reader.usage, reader.complete, errored) == (full.usage, full.complete, full_errored)
    return reader, full


@st.composite
def variants(draw: st.DrawFn, lf: bytes) -> tuple[bytes, list[int]]:
    """An LF-framed stream framed again with LF, CRLF or CR, maybe after a BOM, and offsets to cut it at."""
    stream = lf.replace(b"\n", draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    if draw(st.booleans()):
        stream = BOM + stream
    return stream, draw(st.lists(st.integers(0, len(stream)), max_size=30))
