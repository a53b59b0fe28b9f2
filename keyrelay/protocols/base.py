"""What every wire module provides: the operation enum, the judged request, stream decoder and encoder shapes.

``InboundRequest`` is what the hot path needs to know about a client request without translating it
(model, stream, output bound, size): each inbound protocol builds one from the raw body, and the
canonical ``ChatRequest`` is built from it only when the upstream speaks another wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from keyrelay.errors import GatewayError
from keyrelay.protocols.canonical import StreamEvent, Usage

IMAGE_TOKEN_BOUND = 2_000  # prompt tokens one image may cost at most (OpenAI's largest high-detail image is below)


class ProtocolName(StrEnum):
    """A wire format, inbound (what a client speaks) or outbound (a provider ``kind``)."""

    OPENAI = "openai"  # Chat Completions (and legacy Completions and embeddings)
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    RESPONSES = "responses"  # OpenAI's Responses API: spoken upstream only by ``kind: openai``


class Operation(StrEnum):
    """What an LLM endpoint does."""

    CHAT = "chat"
    COMPLETIONS = "completions"  # OpenAI's legacy text completions, passed through to OpenAI-wire upstreams only
    EMBEDDINGS = "embeddings"
    COUNT_TOKENS = "count_tokens"


@dataclass(frozen=True, slots=True)
class ProviderPreferences:
    """A request's own routing wishes: OpenRouter's ``provider`` object (docs/routing.md, "Per request").

    ``order``: providers to try first, in this order; ``only``: the only providers that may serve it;
    ``allow_fallbacks``: False keeps it to the providers of ``order``. Always within the key's
    ``allowed_providers``: a wish can narrow what a key may use, never widen it.
    """

    order: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    allow_fallbacks: bool = True


@dataclass(slots=True)
class InboundRequest:
    """What the pipeline needs from a client request body, whatever its wire.

    ``max_output_tokens`` is the client's output ceiling per choice (None: none given); ``images`` the
    number of image parts, each bounded by ``IMAGE_TOKEN_BOUND`` prompt tokens; ``body`` the parsed JSON
    object and ``raw`` its bytes, forwarded untouched on a same-wire passthrough.
    """

    operation: Operation
    model: str
    stream: bool
    client_wants_usage: bool
    max_output_tokens: int | None
    raw: bytes
    body: dict[str, Any]
    choices: int = 1  # ``n`` / ``candidateCount``: every choice can produce max_output_tokens
    images: int = 0
    protocol: ProtocolName = ProtocolName.OPENAI
    routing: ProviderPreferences | None = None  # the body's ``provider`` object, removed from ``raw`` and ``body``

    @property
    def prompt_token_bound(self) -> int:
        """An upper bound on prompt tokens.

        A text token is at least one byte, so the body's byte count bounds the text. An image part
        is billed by its pixels, not its bytes: each counts as IMAGE_TOKEN_BOUND more. Audio input is
        not bounded this way (documented).
        """
        return len(self.raw) + self.images * IMAGE_TOKEN_BOUND


class StreamDecoder(Protocol):
    """An upstream's stream → canonical events; stateful, one per request, never shared."""

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events completed by this network read (frames split across reads are held)."""
        ...

    def end(self) -> list[StreamEvent]:
        """The stream ended: the events still held (a last event without its blank line)."""
        ...

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported so far (None if none)."""
        ...

    @property
    def complete(self) -> bool:
        """Whether the wire's own end was seen.

        OpenAI ``[DONE]``, Anthropic ``message_stop``, Gemini a chunk with a ``finishReason``.
        """
        ...

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of everything the model produced so far.

        Text, reasoning, tool names and arguments: the estimate when no usage arrives.
        """
        ...


class PassthroughReader(Protocol):
    """Reads an upstream's stream beside a same-wire relay, which sends the bytes on untouched.

    Only what the gateway needs: usage, completeness, error events and the output size. Stateful, one per
    request, never shared.
    """

    def feed(self, chunk: bytes) -> bool:
        """Read one network read's bytes; True when an error event was completed by them."""
        ...

    def end(self) -> bool:
        """The stream ended: read what is still held; True when it was an error event."""
        ...

    @property
    def relayable(self) -> bytes:
        """The whole SSE blocks the last ``feed`` completed: what a relay may pass on.

        After ``end``: the bytes of a last block that lacked its blank line, whole or not. The reader's own
        split of the stream, made once for both.
        """
        ...

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported so far (None if none)."""
        ...

    @property
    def complete(self) -> bool:
        """Whether the wire's own end was seen (as ``StreamDecoder.complete``)."""
        ...

    @property
    def output_bytes(self) -> int:
        """Bytes of model output so far, for the estimate when no usage arrives."""
        ...


class StreamEncoder(Protocol):
    """Canonical events → a client's stream; stateful, one per request."""

    def events(self, events: list[StreamEvent]) -> bytes:
        """The frames for these events (possibly none: some are held until ``end``)."""
        ...

    def end(self, usage: Usage | None) -> bytes:
        """The closing frames of a complete stream, carrying ``usage`` where the wire has a place for it."""
        ...

    def error(self, err: GatewayError) -> bytes:
        """An in-stream error frame in this wire's shape, closing the stream."""
        ...
