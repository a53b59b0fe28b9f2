"""The LLM routes: (method, path) → (inbound protocol, operation), and which wire answers an unknown path.

Paths served (the query string never chooses a route; ``?beta=true``, ``?alt=sse`` and ``?key=`` are read
by the protocols):

=========================================================  =========  ==========================
path                                                       protocol   operation
=========================================================  =========  ==========================
POST /v1/chat/completions                                  openai     chat
POST /v1/completions (legacy)                              openai     completions
POST /v1/responses                                         responses  chat
POST /v1/embeddings                                        openai     embeddings
POST /v1/messages                                          anthropic  chat
POST /v1/messages/count_tokens                             anthropic  count_tokens
POST /v1beta/models/{model}:generateContent (also /v1/)    gemini     chat
POST /v1beta/models/{model}:streamGenerateContent (+ /v1/) gemini     chat, streamed
POST /v1beta/models/{model}:countTokens (also /v1/)        gemini     count_tokens
GET  /v1/models, /v1/models/{id}                           openai, anthropic (``anthropic-version``
                                                           header) or gemini (``x-goog-api-key``
                                                           header or ``key`` query parameter)
GET  /v1beta/models, /v1beta/models/{id}                   gemini
GET  /v1/key                                               openai
=========================================================  =========  ==========================

``HEAD`` is accepted wherever ``GET`` is. ``/v1/responses/{id}`` and what lies under it (retrieving, cancelling,
deleting a stored response, its input items) answer 400: keyrelay stores no response; ``/v1/responses/input_tokens``
and ``/v1/responses/compact`` are not offered (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import Operation, ProtocolName
from keyrelay.protocols.responses import NOT_STORED


class Read(StrEnum):
    """A GET route: what a key may read about itself."""

    MODELS = "models"
    MODEL = "model"
    KEY = "key"


@dataclass(frozen=True, slots=True)
class Route:
    """What a request path means.

    ``operation`` is set for LLM calls and ``read`` for GET routes; ``model`` is the model named in the
    path (Gemini, and ``/v1/models/{id}``); ``stream`` is True for ``:streamGenerateContent``.
    """

    protocol: ProtocolName
    operation: Operation | None = None
    read: Read | None = None
    model: str | None = None
    stream: bool = False


_POST: dict[str, Route] = {
    "/v1/chat/completions": Route(ProtocolName.OPENAI, Operation.CHAT),
    "/v1/completions": Route(ProtocolName.OPENAI, Operation.COMPLETIONS),
    "/v1/responses": Route(ProtocolName.RESPONSES, Operation.CHAT),
    "/v1/embeddings": Route(ProtocolName.OPENAI, Operation.EMBEDDINGS),
    "/v1/messages": Route(ProtocolName.ANTHROPIC, Operation.CHAT),
    "/v1/messages/count_tokens": Route(ProtocolName.ANTHROPIC, Operation.COUNT_TOKENS),
}
_GEMINI_METHODS: dict[str, tuple[Operation, bool]] = {
    "generateContent": (Operation.CHAT, False),
    "streamGenerateContent": (Operation.CHAT, True),
    "countTokens": (Operation.COUNT_TOKENS, False),
}
_GEMINI_PREFIXES = ("/v1beta/models/", "/v1/models/")
# Responses API endpoints that are not about a stored response, and that keyrelay does not offer: 404.
_RESPONSES_NOT_OFFERED = frozenset({"/v1/responses/input_tokens", "/v1/responses/compact"})


def _read_protocol(headers: list[tuple[bytes, bytes]], query: bytes) -> ProtocolName:
    """Which wire a GET of /v1/models speaks: Anthropic's with ``anthropic-version``, Gemini's with its key."""
    for name, _ in headers:
        if name == b"anthropic-version":
            return ProtocolName.ANTHROPIC
        if name == b"x-goog-api-key":
            return ProtocolName.GEMINI
    if query.startswith(b"key=") or b"&key=" in query:
        return ProtocolName.GEMINI
    return ProtocolName.OPENAI


def error_protocol(path: str, headers: list[tuple[bytes, bytes]], query: bytes) -> ProtocolName:
    """The wire an error answer to this request is written in, when the route itself is unknown or refused."""
    if path.startswith("/v1beta/") or ":" in path.rpartition("/")[2]:
        return ProtocolName.GEMINI
    if path.startswith("/v1/messages"):
        return ProtocolName.ANTHROPIC
    return _read_protocol(headers, query)


def match(method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes) -> Route:
    """The route of a request.

    Raises:
        GatewayError: NOT_FOUND naming the path when there is no such route (whatever the method);
            METHOD_NOT_ALLOWED with ``Allow`` for a known path and another method; INVALID_REQUEST for a
            stored response's path (``/v1/responses/{id}`` and below).
    """
    route = _POST.get(path)
    if route is not None:
        _require(method, "POST", path)
        return route
    for prefix in _GEMINI_PREFIXES:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        model, colon, action = rest.rpartition(":")
        entry = _GEMINI_METHODS.get(action) if colon else None
        if entry is not None and model and "/" not in model:
            _require(method, "POST", path)
            operation, stream = entry
            return Route(ProtocolName.GEMINI, operation, model=model, stream=stream)
        # A model to read. OpenAI ids may hold "/" and ":" ("meta-llama/...", "ft:gpt-4o-mini:org::id"); Gemini's hold
        # neither. A POST here is a Gemini method keyrelay does not serve.
        gemini = prefix == "/v1beta/models/"
        if rest and not (gemini and "/" in rest) and not (method == "POST" and colon):
            _require(method, "GET", path)
            protocol = ProtocolName.GEMINI if gemini else _read_protocol(headers, query)
            return Route(protocol, read=Read.MODEL, model=rest)
        break
    if path in ("/v1/models", "/v1beta/models"):
        _require(method, "GET", path)
        protocol = ProtocolName.GEMINI if path == "/v1beta/models" else _read_protocol(headers, query)
        return Route(protocol, read=Read.MODELS)
    if path == "/v1/key":
        _require(method, "GET", path)
        return Route(ProtocolName.OPENAI, read=Read.KEY)
    if path.startswith("/v1/responses/") and path not in _RESPONSES_NOT_OFFERED:
        raise GatewayError(ErrorType.INVALID_REQUEST, f"{path} is not served: {NOT_STORED}")
    raise GatewayError(ErrorType.NOT_FOUND, f"No such endpoint: {path}. See the README for the routes.")


def _require(method: str, allowed: str, path: str) -> None:
    if method == allowed or (method == "HEAD" and allowed == "GET"):  # HEAD is GET without the body
        return
    allow = "GET, HEAD" if allowed == "GET" else allowed
    raise GatewayError(ErrorType.METHOD_NOT_ALLOWED, f"Use {allowed} for {path}.", allow=allow)
