"""Same-wire stream relays hand the client whole events only: a stream cut mid-event ends with a parsable error.

For Anthropic, Gemini (SSE) and the Responses API, with recorded streams (tests/data) cut at every offset: what the
client receives, up to and with the relay's closing bytes, is a sequence of complete SSE events whose data are all
JSON, the last one the wire's error event (or a Responses ``response.failed``); nothing of the unfinished event
reaches it. A stream whose last event lacks only its blank line is passed on whole, with no error.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from keyrelay.gateway.relays import PassthroughRelay, ResponsesRelay
from keyrelay.gateway.wires import INBOUND, OUTBOUND
from keyrelay.logs import SecretScrubber
from keyrelay.protocols.base import ProtocolName
from keyrelay.protocols.sse import parse_blocks
from keyrelay.providers.responses_passthrough import ResponsesPassthroughReader

DATA = Path(__file__).resolve().parents[2] / "data"
STREAMS = {
    ProtocolName.ANTHROPIC: DATA / "anthropic" / "text.sse",
    ProtocolName.GEMINI: DATA / "gemini" / "plain.sse",
    ProtocolName.RESPONSES: DATA / "responses" / "text.sse",
}


def relay_for(wire: ProtocolName) -> PassthroughRelay:
    scrubber = SecretScrubber([])
    if wire is ProtocolName.RESPONSES:
        return ResponsesRelay(INBOUND[wire], ResponsesPassthroughReader(), scrubber)
    reader = OUTBOUND[wire].passthrough_reader
    assert reader is not None
    return PassthroughRelay(INBOUND[wire], reader(), scrubber)


def client_events(relayed: bytes) -> list[object]:
    """The events a client parses, each data decoded as JSON (a half event would fail here)."""
    events, _ = parse_blocks(relayed)
    return [orjson.loads(event.data) for event in events]


def is_error(wire: ProtocolName, event: object) -> bool:
    assert isinstance(event, dict)
    if wire is ProtocolName.RESPONSES:
        return event.get("type") == "response.failed"
    return event.get("type") == "error" or "error" in event


@pytest.mark.parametrize("wire", list(STREAMS), ids=lambda w: w.value)
@pytest.mark.parametrize("how", ["close", "fail"])
def test_a_stream_cut_anywhere_ends_with_a_whole_error_event(wire: ProtocolName, how: str) -> None:
    stream = STREAMS[wire].read_bytes()
    whole = client_events(stream)
    for cut in range(1, len(stream) - 1, 3):
        relay = relay_for(wire)
        relayed = relay.feed(stream[:cut])
        if how == "close":
            rest, failure = relay.close()
        else:
            rest = relay.fail(relay._error(False))  # the connection broke mid-stream
            failure = None
        events = client_events(relayed + rest)
        if failure is None and how == "close":
            assert events == whole, cut  # only a cut right before the blank line ends: the stream is whole
            continue
        assert is_error(wire, events[-1]), (cut, events[-1])
        assert events[:-1] == whole[: len(events) - 1], cut


@pytest.mark.parametrize("wire", list(STREAMS), ids=lambda w: w.value)
def test_a_last_event_without_its_blank_line_is_passed_on(wire: ProtocolName) -> None:
    stream = STREAMS[wire].read_bytes().rstrip(b"\r\n")
    relay = relay_for(wire)
    relayed = relay.feed(stream)
    rest, failure = relay.close()
    assert failure is None
    assert client_events(relayed + rest) == client_events(STREAMS[wire].read_bytes())
