"""Stream relays: how an upstream's stream reaches the client, for each pairing of wires.

- ``OpenAIRelay``: OpenAI in and out, the fast path (``protocols.openai_stream.StreamRelay``).
- ``PassthroughRelay``: Anthropic or Gemini in and out. The upstream's bytes go on as they are (scrubbed
  of the gateway's provider secrets); a ``PassthroughReader`` reads usage, completeness and error events
  beside them (Anthropic's parses only the events that hold them; Gemini's is its full decoder).
- ``ResponsesRelay``: OpenAI Responses in and out: a ``PassthroughRelay`` that always ends the stream with one
  of the Responses API's three terminal events.
- ``TranslatingRelay``: different wires. The upstream's decoder turns bytes into canonical events and the
  client's encoder turns them into the client's wire.

Every relay ends a stream that did not complete with an error event in the client's wire, and reports
the usage seen (partial usage is billed).
"""

from __future__ import annotations

from typing import Protocol

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.wires import Inbound
from keyrelay.logs import SecretScrubber, request_id_var
from keyrelay.protocols.base import InboundRequest, PassthroughReader, ProtocolName, StreamDecoder, StreamEncoder
from keyrelay.protocols.canonical import StreamError, StreamEvent, Usage
from keyrelay.protocols.openai_stream import StreamRelay, estimate_tokens
from keyrelay.protocols.responses_encode import failed_event
from keyrelay.protocols.sse import parse_blocks
from keyrelay.providers.responses_passthrough import ResponsesPassthroughReader

_ERROR_EVENT = "The upstream sent an error event mid-stream."
# A passthrough stream's first content: an Anthropic ``content_block_delta`` (or the closing ``message_delta``),
# a Gemini chunk with ``parts``.
# a Responses delta event (text, arguments, reasoning).
_CONTENT = {
    ProtocolName.ANTHROPIC: b"_delta",
    ProtocolName.GEMINI: b'"parts"',
    ProtocolName.OPENAI: b"data:",
    ProtocolName.RESPONSES: b'.delta"',
}
_INCOMPLETE = "The upstream stream ended before it was complete."


class Relay(Protocol):
    """What the pipeline asks of a relay, once per network read and once at the end."""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send the client for this upstream read."""
        ...

    def close(self) -> tuple[bytes, GatewayError | None]:
        """The upstream closed the stream: the last bytes, and the failure if the stream was not complete."""
        ...

    def fail(self, err: GatewayError) -> bytes:
        """The upstream connection failed mid-stream: the closing bytes, ending with ``err`` as an event."""
        ...

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported (None if none)."""
        ...

    def output_tokens_estimate(self) -> int:
        """Output tokens estimated from what was relayed, for a stream that reported no usage."""
        ...

    @property
    def failed(self) -> bool:
        """Whether the upstream sent an error event."""
        ...

    @property
    def content_seen(self) -> bool:
        """Whether any output (text, thinking, tool call) or usage has arrived; asked only before the commit."""
        ...

    @property
    def at_end(self) -> bool:
        """Whether the client's terminal event has been fed (``[DONE]``, ``message_stop``, ``response.completed``).

        A client may stop reading there, before the upstream's stream is over: the usage record must be kept
        before those bytes are sent. False while a relay only writes its terminal event in ``close``.
        """
        ...

    @property
    def caller_fault(self) -> bool:
        """Whether the upstream's error event blames the request itself: relayed to the client, not failed over."""
        ...

    def commits(self, out: bytes) -> bool:
        """Whether the stream is committed to its channel after a read that relayed ``out``.

        Before that, an error event or the end of the stream fails over (docs/routing.md). OpenAI: its first
        event; Anthropic and Gemini (whose streams open with an envelope, ``message_start``): the first
        content, or the answer's end.
        """
        ...


class OpenAIRelay(StreamRelay):
    """OpenAI client, OpenAI upstream: ``StreamRelay`` itself, with its usage hiding and error events.

    A subclass rather than a wrapper: no call in between per network read on the fast path.
    """

    def __init__(self, request: InboundRequest, scrubber: SecretScrubber) -> None:
        super().__init__(
            hide_usage_chunk=not request.client_wants_usage, scrub=scrubber.data, scrub_known=scrubber.known
        )

    def close(self) -> tuple[bytes, GatewayError | None]:
        """See ``Relay.close``."""
        rest = self.end(clean=True)
        if self.error is not None:
            # The upstream's own error event was relayed (scrubbed); the client has its explanation.
            return rest, GatewayError(ErrorType.UPSTREAM_ERROR, _ERROR_EVENT)
        if not self.complete():
            failure = GatewayError(ErrorType.UPSTREAM_ERROR, _INCOMPLETE)
            return rest + b"data: " + orjson.dumps(failure.to_body()) + b"\n\n", failure
        return rest, None

    def fail(self, err: GatewayError) -> bytes:
        """See ``Relay.fail``."""
        return self.end(clean=False) + b"data: " + orjson.dumps(err.to_body()) + b"\n\n"

    @property
    def failed(self) -> bool:
        """See ``Relay.failed``."""
        return self.error is not None

    def commits(self, out: bytes) -> bool:
        """See ``Relay.commits``: the first event relayed."""
        return bool(out) or self.done

    @property
    def content_seen(self) -> bool:
        """See ``Relay.content_seen``."""
        return self.usage is not None or self.output_tokens_estimate() > 0

    @property
    def at_end(self) -> bool:
        """See ``Relay.at_end``: ``data: [DONE]`` was fed."""
        return self.done

    @property
    def caller_fault(self) -> bool:
        """See ``Relay.caller_fault``: an OpenAI error event is failed over whatever it says."""
        return False


def _has_error(events: list[StreamEvent]) -> StreamError | None:
    for event in events:
        if isinstance(event, StreamError):
            return event
    return None


def partial_usage(usage: Usage | None, complete: bool, output_bytes: int) -> Usage | None:
    """The usage to bill for a stream: as reported, but never less output than was relayed.

    A stream cut before its final usage (Anthropic's ``message_delta``) reports only what its start said
    (``output_tokens: 1``); the output estimated from the bytes relayed is billed then, marked estimated.
    """
    if usage is None or complete:
        return usage
    estimate = estimate_tokens(output_bytes)
    if estimate <= usage.completion_tokens:
        return usage
    return usage._replace(completion_tokens=estimate, estimated=True)


def _whole_event(tail: bytes) -> bytes:
    """A stream's last event that lacked its blank line, completed, if it is whole (JSON data); else nothing.

    Some servers end a stream without the last blank line; a last event cut mid-way is dropped, never relayed
    half (a client would fail to parse it and miss the error event that follows).
    """
    if not tail.strip():
        return b""
    events, _ = parse_blocks(tail + b"\n\n")
    for event in events:
        try:
            orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return b""
    return tail + b"\n\n" if events else b""


class PassthroughRelay:
    """Same wire on both sides (Anthropic, Gemini, Responses): the upstream's events unmodified, a reader beside them.

    The bytes are relayed event by event (the whole SSE blocks the reader split them into,
    ``PassthroughReader.relayable``), so that a stream cut in the middle of an event ends with a well-formed error
    event instead of half an event.
    """

    __slots__ = ("_inbound", "_reader", "_scrub", "_errored")

    def __init__(self, inbound: Inbound, reader: PassthroughReader, scrubber: SecretScrubber) -> None:
        self._inbound = inbound
        self._reader = reader
        self._scrub = scrubber.known
        self._errored = False

    def feed(self, chunk: bytes) -> bytes:
        """See ``Relay.feed``: the events this read completed."""
        reader = self._reader
        if reader.feed(chunk):
            self._errored = True
        blocks = reader.relayable
        return self._scrub(blocks) if blocks else b""

    def close(self) -> tuple[bytes, GatewayError | None]:
        """See ``Relay.close``: a last event without its blank line is passed on when whole."""
        ended_with_error = self._reader.end()  # a last event that is an error, or that cannot be read
        last = _whole_event(self._reader.relayable)
        errored = self._errored or ended_with_error
        if last:
            last = self._scrub(last)
        # An error event the client received ends the stream (a dropped, unreadable last event is not one).
        if (self._errored or (ended_with_error and last)) and self._ended_by_error():
            return last, self._error(True)
        if not errored and self._reader.complete:
            return last, None
        failure = self._error(errored)
        return last + self._error_frame(failure), failure

    def fail(self, err: GatewayError) -> bytes:
        """See ``Relay.fail``: an unfinished last event is dropped (it was never relayed)."""
        return self._error_frame(err)

    def _ended_by_error(self) -> bool:
        """Whether an error event ends this wire's stream (Anthropic's and Gemini's do: nothing is added)."""
        return True

    def _error(self, errored: bool) -> GatewayError:
        """The failure of a stream that sent an error event (``errored``) or that ended early."""
        return GatewayError(ErrorType.UPSTREAM_ERROR, _ERROR_EVENT if errored else _INCOMPLETE)

    def _error_frame(self, err: GatewayError) -> bytes:
        """The in-stream error event that closes the client's stream, in its wire."""
        return self._inbound.stream_error(err, request_id_var.get())

    @property
    def failed(self) -> bool:
        """See ``Relay.failed``."""
        return self._errored

    @property
    def caller_fault(self) -> bool:
        """See ``Relay.caller_fault``: the wire's error events say nothing of whose fault they are."""
        return False

    def commits(self, out: bytes) -> bool:
        """See ``Relay.commits``: the first content, or the answer's end.

        Told by one substring search (``_CONTENT``) rather than by measuring the output, which the reader
        otherwise skips for a stream whose usage arrives; the exact measure is ``content_seen``'s.
        """
        return _CONTENT[self._inbound.name] in out or self._reader.complete

    @property
    def content_seen(self) -> bool:
        """See ``Relay.content_seen``."""
        reader = self._reader
        return reader.output_bytes > 0 or reader.complete  # not usage: Anthropic's message_start carries some

    @property
    def at_end(self) -> bool:
        """See ``Relay.at_end``: the wire's end of the answer was fed (``message_stop``, Gemini's last chunk)."""
        return bool(self._reader.complete)

    @property
    def usage(self) -> Usage | None:
        """See ``Relay.usage``."""
        reader = self._reader
        return partial_usage(reader.usage, reader.complete, reader.output_bytes)

    def output_tokens_estimate(self) -> int:
        """See ``Relay.output_tokens_estimate``."""
        return estimate_tokens(self._reader.output_bytes)


class ResponsesRelay(PassthroughRelay):
    """A Responses client on a Responses upstream: the events as they are, and always one terminal event.

    A stream that ends without ``response.completed``, ``response.incomplete`` or ``response.failed`` (cut, or
    an ``error`` event alone) gets a ``response.failed`` of the same response, numbered after the upstream's last
    event. A failure the upstream blames on the request (``error.code`` such as ``context_length_exceeded``)
    is the client's to see: it is relayed (``caller_fault``), never failed over.
    """

    __slots__ = ("_responses",)

    def __init__(self, inbound: Inbound, reader: ResponsesPassthroughReader, scrubber: SecretScrubber) -> None:
        super().__init__(inbound, reader, scrubber)
        self._responses = reader

    def fail(self, err: GatewayError) -> bytes:
        """See ``Relay.fail``: nothing after the upstream's own terminal event."""
        return b"" if self._responses.terminal else self._error_frame(err)

    def _ended_by_error(self) -> bool:
        return self._responses.terminal

    def _error(self, errored: bool) -> GatewayError:
        reader = self._responses
        if reader.caller_fault:
            return GatewayError(ErrorType.INVALID_REQUEST, f"The upstream refused the request: {reader.error_code}.")
        return super()._error(errored)

    def _error_frame(self, err: GatewayError) -> bytes:
        """``response.failed`` for the upstream's response, numbered after its last event."""
        reader = self._responses
        event = failed_event(err, reader.next_sequence, reader.response)
        reader.next_sequence += 1
        reader.terminal = True
        return event

    @property
    def caller_fault(self) -> bool:
        """See ``Relay.caller_fault``."""
        return self._responses.caller_fault

    @property
    def at_end(self) -> bool:
        """See ``Relay.at_end``: a terminal event (``response.completed``, ``.incomplete``, ``.failed``) was fed."""
        reader = self._responses
        return bool(reader.terminal or reader.complete)


class TranslatingRelay:
    """Different wires: upstream bytes → canonical events → the client's wire."""

    def __init__(self, decoder: StreamDecoder, encoder: StreamEncoder, scrubber: SecretScrubber) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._scrub = scrubber.known
        self._failure: GatewayError | None = None

    def _encode(self, events: list[StreamEvent]) -> bytes:
        error = _has_error(events)
        if error is None:
            return self._encoder.events(events)
        before = events[: events.index(error)]
        self._failure = GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream failed mid-stream: {error.message}")
        return self._encoder.events(before) + self._encoder.error(self._failure)

    def feed(self, chunk: bytes) -> bytes:
        """See ``Relay.feed``."""
        if self._failure is not None:
            self._decoder.feed(chunk)  # the client's stream is closed; the rest is read only for its usage
            return b""
        return self._encode(self._decoder.feed(self._scrub(chunk)))

    def close(self) -> tuple[bytes, GatewayError | None]:
        """See ``Relay.close``."""
        if self._failure is not None:
            self._decoder.end()
            return b"", self._failure
        out = self._encode(self._decoder.end())
        if self._failure is not None:
            return out, self._failure
        if not self._decoder.complete:
            failure = GatewayError(ErrorType.UPSTREAM_ERROR, _INCOMPLETE)
            return out + self._encoder.error(failure), failure
        return out + self._encoder.end(self._decoder.usage), None

    def fail(self, err: GatewayError) -> bytes:
        """See ``Relay.fail``."""
        if self._failure is not None:
            return b""
        return self._encoder.error(err)

    @property
    def failed(self) -> bool:
        """See ``Relay.failed``."""
        return self._failure is not None

    def commits(self, out: bytes) -> bool:
        """See ``Relay.commits``: the first content, or the answer's end."""
        decoder = self._decoder
        return decoder.output_bytes > 0 or decoder.complete

    @property
    def content_seen(self) -> bool:
        """See ``Relay.content_seen``."""
        return self._decoder.output_bytes > 0

    @property
    def at_end(self) -> bool:
        """See ``Relay.at_end``: the client's terminal event is written by ``close``, never by ``feed``."""
        return False

    @property
    def caller_fault(self) -> bool:
        """See ``Relay.caller_fault``: canonical stream errors say nothing of whose fault they are."""
        return False

    @property
    def usage(self) -> Usage | None:
        """See ``Relay.usage``."""
        decoder = self._decoder
        return partial_usage(decoder.usage, decoder.complete, decoder.output_bytes)

    def output_tokens_estimate(self) -> int:
        """See ``Relay.output_tokens_estimate``."""
        return estimate_tokens(self._decoder.output_bytes)
