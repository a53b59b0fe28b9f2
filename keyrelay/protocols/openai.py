"""The OpenAI wire as clients speak it: credential, request decoding, SSE usage sniffing.

Requests are parsed once with orjson. The raw bytes are forwarded untouched unless the model id
must be rewritten or usage must be requested from the upstream for a stream.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError

IMAGE_TOKEN_BOUND = 2_000


class Operation(StrEnum):
    """What an LLM endpoint does."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


@dataclass(slots=True)
class InboundRequest:
    """What the pipeline needs from a client request body."""

    operation: Operation
    model: str
    stream: bool
    client_wants_usage: bool
    max_output_tokens: int | None
    raw: bytes
    body: dict[str, Any]
    choices: int = 1  # ``n``: every choice can produce max_output_tokens

    @property
    def prompt_token_bound(self) -> int:
        """An upper bound on prompt tokens.

        A text token is at least one byte, so the body's byte count bounds the text. An image part
        is billed by its pixels, not its bytes: each counts as IMAGE_TOKEN_BOUND more (OpenAI's
        largest high-detail image is below that). Audio input is not bounded this way (documented).
        """
        images = self.raw.count(b'"image_url"') if self.operation is Operation.CHAT else 0
        return len(self.raw) + images * IMAGE_TOKEN_BOUND


def bearer_credential(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token.decode("latin-1") if token else None


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GatewayError(ErrorType.INVALID_REQUEST, f"{name} must be a positive integer.", field=name)
    return value


def decode_request(operation: Operation, raw: bytes) -> InboundRequest:
    """Parse and check a chat or embeddings request body.

    Raises:
        GatewayError: INVALID_REQUEST naming the field at fault.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayError(ErrorType.INVALID_REQUEST, "The request body is not valid JSON.", field="body") from None
    if not isinstance(body, dict):
        raise GatewayError(ErrorType.INVALID_REQUEST, "The request body must be a JSON object.", field="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(ErrorType.INVALID_REQUEST, "model is required (a string).", field="model")
    if operation is Operation.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(ErrorType.INVALID_REQUEST, "messages must be a non-empty array.", field="messages")
        max_out = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
    else:
        if "input" not in body:
            raise GatewayError(ErrorType.INVALID_REQUEST, "input is required.", field="input")
        max_out = 0
    stream = body.get("stream") is True
    options = body.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    choices = _int_field(body, "n") or 1 if operation is Operation.CHAT else 1
    return InboundRequest(operation, model, stream, wants_usage, max_out, raw, body, choices)


def upstream_body(request: InboundRequest, upstream_model: str) -> bytes:
    """The body to send upstream: the client's bytes, unless the model or stream options must change."""
    needs_usage = request.stream and not request.client_wants_usage
    if upstream_model == request.model and not needs_usage:
        return request.raw
    body = dict(request.body)
    body["model"] = upstream_model
    if needs_usage:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(body)


def response_usage(payload: bytes) -> tuple[Usage | None, int]:
    """Usage from a non-streaming JSON answer, and the answer's text length (for estimates)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, len(payload)
    if not isinstance(data, dict):
        return None, len(payload)
    usage = _usage_of(data.get("usage"))
    if usage is not None:
        return usage, 0
    text = 0
    for choice in data.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            text += len(message["content"].encode())
    return None, text


def _usage_of(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def estimate_tokens(text_bytes: int) -> int:
    """A conservative token estimate from UTF-8 byte count (about four bytes per token, rounded up)."""
    return math.ceil(text_bytes / 4)


# The text of a "content" string (escapes kept: a size estimate, not the decoded text).
_CONTENT = re.compile(rb'"content":"((?:[^"\\]|\\.)*)"')


class StreamRelay:
    """Cuts an OpenAI SSE stream into events and notes usage and content size.

    Hides the usage chunk when only the gateway asked for it. Frames split across network chunks
    are reassembled before they are passed on.
    """

    def __init__(self, *, hide_usage_chunk: bool) -> None:
        self._hide = hide_usage_chunk
        self._buffer = b""
        self.usage: Usage | None = None
        self.content_bytes = 0
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to pass to the client for this network chunk (complete events only)."""
        data = self._buffer + chunk if self._buffer else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return b""
        self._buffer = data[end + 2 :]
        complete = data[: end + 2]
        if b'"usage":{' not in complete:
            # The common case (every chunk but the last): relay the bytes as they are, after two C-level
            # scans, one for the content size (the no-usage estimate) and one for the end marker.
            self.content_bytes += sum(map(len, _CONTENT.findall(complete)))
            if b"data: [DONE]" in complete:
                self.done = True
            return complete.replace(b',"usage":null', b"") if self._hide else complete
        out = self._scan(complete)
        if self._hide:
            # Asking for usage makes OpenAI add "usage":null to every chunk; the client did not ask.
            out = out.replace(b',"usage":null', b"")
        return out

    def _count_content(self, event: bytes) -> None:
        self.content_bytes += sum(map(len, _CONTENT.findall(event)))

    def _scan(self, events: bytes) -> bytes:
        kept: list[bytes] = []
        for event in events.split(b"\n\n"):
            if not event:
                continue
            payload = event[6:] if event.startswith(b"data: ") else None
            if payload is not None and b'"usage":{' in payload:
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict):
                    usage = _usage_of(data.get("usage"))
                    if usage is not None:
                        self.usage = usage
                    if self._hide and not data.get("choices"):
                        continue
                    if self._hide:
                        data.pop("usage", None)
                        event = b"data: " + orjson.dumps(data)
            if event == b"data: [DONE]":
                self.done = True
            self._count_content(event)
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def flush(self) -> bytes:
        """Whatever partial frame is left when the stream ends."""
        rest, self._buffer = self._buffer, b""
        return rest
