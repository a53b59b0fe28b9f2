"""The wires as the pipeline uses them: explicit tables of inbound protocols and outbound adapters.

Four wires: OpenAI Chat Completions, Anthropic Messages, Gemini, and OpenAI's Responses API (spoken upstream
by ``kind: openai`` only; ``Call.upstream_wire``).

An ``Inbound`` is what the gateway needs from a client's wire (credential, judging, translation to
canonical, encoding answers, streams and errors); an ``Outbound`` what it needs to call an upstream of a
wire (paths, headers, bodies, decoding answers and streams, usage and error bodies). Same wire in and out
is a passthrough: the client's body goes upstream with only the model id rewritten, and the upstream's
bytes come back as they are; only a pair of different wires translates through the canonical types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import orjson

from keyrelay.errors import GatewayError
from keyrelay.protocols import anthropic as anthropic_in
from keyrelay.protocols import gemini as gemini_in
from keyrelay.protocols import openai as openai_in
from keyrelay.protocols import openai_encode, openai_translate, responses_encode
from keyrelay.protocols import responses as responses_in
from keyrelay.protocols.anthropic_stream import AnthropicStreamEncoder
from keyrelay.protocols.base import (
    InboundRequest,
    Operation,
    PassthroughReader,
    ProtocolName,
    StreamDecoder,
    StreamEncoder,
)
from keyrelay.protocols.canonical import ChatRequest, ChatResponse, StreamError, Usage
from keyrelay.protocols.responses_translate import responses_to_canonical
from keyrelay.protocols.sse import SSEDecoder
from keyrelay.providers import anthropic as anthropic_out
from keyrelay.providers import gemini as gemini_out
from keyrelay.providers import openai as openai_out
from keyrelay.providers.anthropic_passthrough import AnthropicPassthroughReader
from keyrelay.providers.failure import FailureClass
from keyrelay.providers.gemini_passthrough import GeminiPassthroughReader
from keyrelay.providers.openai_decode import OpenAIStreamDecoder
from keyrelay.providers.responses_passthrough import ResponsesPassthroughReader, responses_body_usage

Headers = list[tuple[bytes, bytes]]
ANTHROPIC_VERSION = "2023-06-01"  # sent to Anthropic upstreams when the client sent none


@dataclass(frozen=True, slots=True)
class Inbound:
    """A client wire."""

    name: ProtocolName
    credential: Callable[[Headers, bytes], str | None]
    decode: Callable[[Operation, bytes, str | None, bool], InboundRequest]
    to_canonical: Callable[[InboundRequest], ChatRequest]
    encode_response: Callable[[ChatResponse, ChatRequest, InboundRequest], bytes]  # (answer, canonical, judged)
    # (canonical request, judged request, response id, input-token estimate, SSE or not) → a fresh encoder
    stream_encoder: Callable[[ChatRequest, InboundRequest, str, int, bool], StreamEncoder]
    encode_error: Callable[[GatewayError, str | None], bytes]
    stream_error: Callable[[GatewayError, str | None], bytes]  # one in-stream error frame, for passthroughs
    count_tokens_body: Callable[[int], bytes]  # the answer of a local token estimate


@dataclass(frozen=True, slots=True)
class Outbound:
    """An upstream wire."""

    name: ProtocolName
    path: Callable[[Operation, bool, str], str]  # operation, stream, upstream model → path under base_url
    credential_headers: Callable[[str | None], list[tuple[str, str]]]
    passthrough_body: Callable[[InboundRequest, str], bytes]  # same wire: the client's body, model rewritten
    build: Callable[[ChatRequest, str, str], bytes]  # another wire: (canonical request, upstream model, kind)
    decode_response: Callable[[bytes], ChatResponse]
    stream_decoder: Callable[[], StreamDecoder]
    # What a same-wire stream relay reads beside the bytes (None: OpenAI, whose passthrough is the OpenAIRelay).
    passthrough_reader: Callable[[], PassthroughReader] | None
    body_usage: Callable[[bytes], Usage | None]  # usage of a whole answer (a passthrough relays it untouched)
    error: Callable[[bytes], tuple[str, str | None]]  # an error body's message (scrubbed first) and type
    # (status, message, type) of an error answer → its routing class (providers/failure.py)
    failure_class: Callable[[int, str, str | None], FailureClass]


class DecodingReader:
    """A full ``StreamDecoder`` as a ``PassthroughReader`` (what the lean readers are tested against)."""

    __slots__ = ("_decoder", "_sse", "relayable")

    def __init__(self, decoder: StreamDecoder) -> None:
        self._decoder = decoder
        self._sse = SSEDecoder()  # the decoder splits for itself; this split is only what a relay passes on
        self.relayable = b""

    def feed(self, chunk: bytes) -> bool:
        """See ``PassthroughReader.feed``."""
        self.relayable = self._sse.feed(chunk)
        return any(isinstance(event, StreamError) for event in self._decoder.feed(chunk))

    def end(self) -> bool:
        """See ``PassthroughReader.end``."""
        self.relayable = self._sse.flush()
        return any(isinstance(event, StreamError) for event in self._decoder.end())

    @property
    def usage(self) -> Usage | None:
        """See ``PassthroughReader.usage``."""
        return self._decoder.usage

    @property
    def complete(self) -> bool:
        """See ``PassthroughReader.complete``."""
        return self._decoder.complete

    @property
    def output_bytes(self) -> int:
        """See ``PassthroughReader.output_bytes``."""
        return self._decoder.output_bytes


# --- inbound --------------------------------------------------------------------------------------


def _openai_credential(headers: Headers, query: bytes) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            return openai_in.bearer_credential(value)
    return None


def _openai_decode(operation: Operation, raw: bytes, model: str | None, stream: bool) -> InboundRequest:
    return openai_in.decode_request(operation, raw)


def _openai_encoder(
    canonical: ChatRequest, request: InboundRequest, response_id: str, input_estimate: int, sse: bool
) -> StreamEncoder:
    return openai_encode.OpenAIStreamEncoder(canonical, response_id)


def _openai_stream_error(err: GatewayError, request_id: str | None) -> bytes:
    return b"data: " + orjson.dumps(err.to_body(request_id)) + b"\n\n"


def _responses_encoder(
    canonical: ChatRequest, request: InboundRequest, response_id: str, input_estimate: int, sse: bool
) -> StreamEncoder:
    return responses_encode.ResponsesStreamEncoder(canonical, request, response_id)


def _anthropic_decode(operation: Operation, raw: bytes, model: str | None, stream: bool) -> InboundRequest:
    return anthropic_in.decode_request(operation, raw)


def _anthropic_encoder(
    canonical: ChatRequest, request: InboundRequest, response_id: str, input_estimate: int, sse: bool
) -> StreamEncoder:
    return AnthropicStreamEncoder(canonical, response_id, input_estimate)


def _anthropic_stream_error(err: GatewayError, request_id: str | None) -> bytes:
    return b"event: error\ndata: " + anthropic_in.encode_error(err, request_id) + b"\n\n"


def _gemini_decode(operation: Operation, raw: bytes, model: str | None, stream: bool) -> InboundRequest:
    return gemini_in.decode_request(operation, raw, model or "", stream=stream)


def _gemini_encoder(
    canonical: ChatRequest, request: InboundRequest, response_id: str, input_estimate: int, sse: bool
) -> StreamEncoder:
    return gemini_in.GeminiStreamEncoder(canonical, response_id, request.model, sse=sse)


def _gemini_stream_error(err: GatewayError, request_id: str | None) -> bytes:
    return b"data: " + gemini_in.encode_error(err, request_id) + b"\r\n\r\n"


INBOUND: dict[ProtocolName, Inbound] = {
    ProtocolName.OPENAI: Inbound(
        ProtocolName.OPENAI,
        _openai_credential,
        _openai_decode,
        openai_translate.openai_to_canonical,
        lambda answer, canonical, request: openai_encode.canonical_to_openai_response(answer, canonical),
        _openai_encoder,
        openai_encode.encode_error,
        _openai_stream_error,
        lambda tokens: orjson.dumps({"prompt_tokens": tokens}),
    ),
    ProtocolName.ANTHROPIC: Inbound(
        ProtocolName.ANTHROPIC,
        anthropic_in.credential,
        _anthropic_decode,
        anthropic_in.anthropic_to_canonical,
        lambda answer, canonical, request: anthropic_in.canonical_to_anthropic_response(answer, canonical),
        _anthropic_encoder,
        anthropic_in.encode_error,
        _anthropic_stream_error,
        lambda tokens: orjson.dumps({"input_tokens": tokens}),
    ),
    ProtocolName.GEMINI: Inbound(
        ProtocolName.GEMINI,
        gemini_in.credential,
        _gemini_decode,
        gemini_in.gemini_to_canonical,
        lambda answer, canonical, request: gemini_in.canonical_to_gemini_response(answer, canonical),
        _gemini_encoder,
        gemini_in.encode_error,
        _gemini_stream_error,
        lambda tokens: orjson.dumps({"totalTokens": tokens}),
    ),
    ProtocolName.RESPONSES: Inbound(
        ProtocolName.RESPONSES,
        _openai_credential,
        lambda operation, raw, model, stream: responses_in.decode_request(raw),
        responses_to_canonical,
        responses_encode.canonical_to_responses_response,
        _responses_encoder,
        responses_encode.encode_error,
        # A passthrough's stream errors are ResponsesRelay's (numbered after the upstream's last event).
        lambda err, request_id: responses_encode.failed_event(err, 0),
        lambda tokens: orjson.dumps({"input_tokens": tokens}),
    ),
}


# --- outbound -------------------------------------------------------------------------------------


_OPENAI_PATHS = {Operation.EMBEDDINGS: "/embeddings", Operation.COMPLETIONS: "/completions"}


def _openai_path(operation: Operation, stream: bool, model: str) -> str:
    return _OPENAI_PATHS.get(operation, "/chat/completions")


def _only_passthrough(*args: object) -> NoReturn:
    """A Responses upstream serves only Responses clients, by passthrough: nothing is translated to or from it."""
    raise AssertionError("a Responses upstream is only called by a Responses client, as a passthrough")


def _openai_build(req: ChatRequest, upstream_model: str, kind: str) -> bytes:
    return openai_out.canonical_to_openai_request(req, upstream_model, extensions=kind == "openai-compatible")


def _bearer(secret: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {secret}")] if secret else []


def _openai_body_usage(payload: bytes) -> Usage | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return openai_out.openai_usage(data.get("usage")) if isinstance(data, dict) else None


def _anthropic_path(operation: Operation, stream: bool, model: str) -> str:
    return "/messages/count_tokens" if operation is Operation.COUNT_TOKENS else "/messages"


def _anthropic_credential(secret: str | None) -> list[tuple[str, str]]:
    return [("x-api-key", secret)] if secret else []


def _with_model(request: InboundRequest, upstream_model: str) -> bytes:
    """The client's JSON body with ``model`` rewritten (the raw bytes when it is already right)."""
    if request.body.get("model") == upstream_model:
        return request.raw
    return orjson.dumps({**request.body, "model": upstream_model})


def _anthropic_body_usage(payload: bytes) -> Usage | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return anthropic_out.anthropic_usage(data.get("usage")) if isinstance(data, dict) else None


def _gemini_path(operation: Operation, stream: bool, model: str) -> str:
    if operation is Operation.COUNT_TOKENS:
        return f"/models/{model}:countTokens"
    return f"/models/{model}:streamGenerateContent?alt=sse" if stream else f"/models/{model}:generateContent"


def _gemini_credential(secret: str | None) -> list[tuple[str, str]]:
    return [("x-goog-api-key", secret)] if secret else []


def _gemini_body_usage(payload: bytes) -> Usage | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return gemini_out.gemini_usage(data.get("usageMetadata")) if isinstance(data, dict) else None


OUTBOUND: dict[ProtocolName, Outbound] = {
    ProtocolName.OPENAI: Outbound(
        ProtocolName.OPENAI,
        _openai_path,
        _bearer,
        openai_in.upstream_body,
        _openai_build,
        openai_out.openai_response_to_canonical,
        OpenAIStreamDecoder,
        None,
        _openai_body_usage,
        openai_out.upstream_error,
        openai_out.failure_class,
    ),
    ProtocolName.ANTHROPIC: Outbound(
        ProtocolName.ANTHROPIC,
        _anthropic_path,
        _anthropic_credential,
        _with_model,
        lambda req, model, kind: anthropic_out.canonical_to_anthropic_request(req, model),
        anthropic_out.anthropic_response_to_canonical,
        anthropic_out.AnthropicStreamDecoder,
        AnthropicPassthroughReader,
        _anthropic_body_usage,
        anthropic_out.upstream_error,
        anthropic_out.failure_class,
    ),
    ProtocolName.GEMINI: Outbound(
        ProtocolName.GEMINI,
        _gemini_path,
        _gemini_credential,
        lambda request, model: request.raw,  # the model is in the path
        lambda req, model, kind: gemini_out.canonical_to_gemini_request(req, model),
        gemini_out.gemini_response_to_canonical,
        gemini_out.GeminiStreamDecoder,
        GeminiPassthroughReader,
        _gemini_body_usage,
        gemini_out.upstream_error,
        gemini_out.failure_class,
    ),
    ProtocolName.RESPONSES: Outbound(
        ProtocolName.RESPONSES,
        lambda operation, stream, model: "/responses",
        _bearer,
        responses_in.upstream_body,
        _only_passthrough,
        _only_passthrough,
        _only_passthrough,
        ResponsesPassthroughReader,
        responses_body_usage,
        openai_out.upstream_error,  # the Responses API answers errors in OpenAI's shape
        openai_out.failure_class,
    ),
}


def anthropic_headers(headers: Headers) -> list[tuple[str, str]]:
    """The client's ``anthropic-version`` and ``anthropic-beta`` headers (every line, in order)."""
    found: list[tuple[str, str]] = []
    for name, value in headers:
        if name in (b"anthropic-version", b"anthropic-beta"):
            found.append((name.decode(), value.decode("latin-1")))
    return found


def anthropic_head_lines(client: list[tuple[str, str]], *, same_wire: bool) -> bytes:
    """Header lines for a call to an Anthropic upstream.

    The client's version (or ``ANTHROPIC_VERSION``) and, from an Anthropic client only, its beta flags.
    Never sent to other kinds of upstream.
    """
    version = next((value for name, value in client if name == "anthropic-version"), ANTHROPIC_VERSION)
    lines = [f"anthropic-version: {version}\r\n".encode("latin-1")]
    if same_wire:
        lines += [
            f"anthropic-beta: {value}\r\n".encode("latin-1") for name, value in client if name == "anthropic-beta"
        ]
    return b"".join(lines)
