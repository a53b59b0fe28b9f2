"""The Gemini generateContent wire as clients speak it (Gemini CLI, google-genai): credential, judging, answers, errors.

Routes: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent`` (``?alt=sse`` for SSE,
else a JSON array) and ``:countTokens`` (https://ai.google.dev/api/generate-content,
https://ai.google.dev/api/tokens). The model and whether to stream come from the path, not the body. The
full translation to canonical is ``gemini_to_canonical`` (``gemini_request``); the stream encoder is
``GeminiStreamEncoder`` (``gemini_stream``).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import InboundRequest, Operation, ProtocolName
from keyrelay.protocols.canonical import ChatRequest, ChatResponse
from keyrelay.protocols.gemini_parts import (
    FINISH_FROM_CANONICAL,
    answer_parts,
    camel,
    error_object,
    rpc_status,
    usage_metadata,
)
from keyrelay.protocols.gemini_request import gemini_to_canonical
from keyrelay.protocols.gemini_stream import GeminiStreamEncoder
from keyrelay.protocols.json_fields import body_object, escapes_of, spelled_plainly

__all__ = [
    "GeminiStreamEncoder",
    "canonical_to_gemini_response",
    "credential",
    "decode_request",
    "encode_error",
    "gemini_to_canonical",
    "rpc_status",
]

MAX_CANDIDATES = 8  # Gemini's own bound on generationConfig.candidateCount
# Judged fields (each in camelCase or snake_case): one of each per object, or a parser that keeps the first
# would read another bound than keyrelay did.
_JUDGED = ("contents", "generationConfig", "generateContentRequest", "maxOutputTokens", "candidateCount")
_JUDGED_NAMES = frozenset(_JUDGED)
_JUDGED_KEY = re.compile(
    rb'"(contents|generation_?[cC]onfig|generate_?[cC]ontent_?[rR]equest|max_?[oO]utput_?[tT]okens|candidate_?[cC]ount)"\s*:'
)
# The escapes that could spell a letter of them, in either case, or an underscore (``json_fields.escapes_of``).
_JUDGED_ESCAPES = escapes_of([name.lower() + name.upper() + "_" for name in _JUDGED])
_IMAGE_KEYS = (b'"inlineData"', b'"inline_data"', b'"fileData"', b'"file_data"')
_IMAGE_ESCAPES = escapes_of(key.decode().strip('"') for key in _IMAGE_KEYS)


def credential(headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
    """The client's key: the ``x-goog-api-key`` header, else the first ``key`` query parameter."""
    for name, value in headers:
        if name == b"x-goog-api-key":
            token = value.strip()
            if token:
                return token.decode("latin-1")
            break
    if b"key=" not in query:
        return None
    for param, text in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if param == "key":
            return text or None
    return None


def _invalid(message: str, path: str) -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, message, field=path)


def _duplicate_judged(raw: bytes) -> str | None:
    r"""A judged field that some object of ``raw`` holds twice (its camel and snake names count as one).

    One C-level scan finds candidates; only then is the body parsed again by the stdlib with a hook on
    every object. A body holding an escape that could spell a judged name (``"cont\u0065nts"``) is always parsed.
    """
    if _JUDGED_ESCAPES.search(raw) is None:
        seen = [camel(name.decode()) for name in _JUDGED_KEY.findall(raw)]
        if len(seen) == len(set(seen)):
            return None
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [camel(name) for name, _ in items if camel(name) in _JUDGED_NAMES]
        if len(names) != len(set(names)) and not found:
            found.append(next(n for n in names if names.count(n) > 1))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return "body"  # orjson read it but the stdlib cannot: whether names repeat cannot be told
    return found[0] if found else None


def _positive(config: dict[str, Any], name: str, maximum: int | None = None) -> int | None:
    value = config.get(name)
    if value is None:
        value = config.get(_SNAKE[name])
    if value is None:
        return None
    path = f"generationConfig.{name}"
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(f"{path} must be a positive integer.", path)
    if maximum is not None and value > maximum:
        raise _invalid(f"{path} must be at most {maximum}.", path)
    return value


_SNAKE = {"maxOutputTokens": "max_output_tokens", "candidateCount": "candidate_count"}


def _count_keys(value: object) -> int:
    """Image parts (inlineData/fileData objects) anywhere inside a parsed JSON value."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += sum(1 for key in item if key in ("inlineData", "inline_data", "fileData", "file_data"))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _counted_request(body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent body a countTokens body counts: its ``generateContentRequest``, or itself."""
    wrapped = body.get("generateContentRequest", body.get("generate_content_request"))
    if wrapped is None:
        return body
    if not isinstance(wrapped, dict):
        raise _invalid("generateContentRequest must be an object.", "generateContentRequest")
    return wrapped


def decode_request(
    operation: Operation, raw: bytes, model: str | None = None, *, stream: bool = False
) -> InboundRequest:
    """Parse and judge a generateContent or countTokens body; ``model`` and ``stream`` come from the route.

    countTokens takes ``contents`` or ``generateContentRequest`` (a whole generateContent body); its output
    bound is 0.

    Raises:
        GatewayError: INVALID_REQUEST naming the field at fault.
    """
    if model is not None and model.startswith("models/"):
        model = model[len("models/") :]
    if not model:
        raise _invalid("The model is required in the path (models/{model}:generateContent).", "model")
    body = body_object(raw)
    duplicate = _duplicate_judged(raw)
    if duplicate is not None:
        raise _invalid(f"The request body holds the field {duplicate!r} more than once.", duplicate)
    request = _counted_request(body) if operation is Operation.COUNT_TOKENS else body
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("contents must be a non-empty array.", "contents")
    config = request.get("generationConfig", request.get("generation_config"))
    if config is not None and not isinstance(config, dict):
        raise _invalid("generationConfig must be an object.", "generationConfig")
    max_out: int | None = 0
    choices = 1
    if operation is Operation.CHAT:
        max_out = _positive(config, "maxOutputTokens") if config else None
        choices = (_positive(config, "candidateCount", MAX_CANDIDATES) if config else None) or 1
    if not spelled_plainly(raw, _IMAGE_ESCAPES):
        images = _count_keys(contents) + _count_keys(request.get("systemInstruction"))
    else:
        images = sum(raw.count(key) for key in _IMAGE_KEYS)
    # A Gemini stream always carries usageMetadata: the client "wants" usage whenever it streams.
    return InboundRequest(operation, model, stream, stream, max_out, raw, body, choices, images, ProtocolName.GEMINI)


def canonical_to_gemini_response(resp: ChatResponse, request: ChatRequest) -> bytes:
    """A ``GenerateContentResponse`` body for one canonical answer."""
    show = request.reasoning is not None and request.reasoning.include_thoughts
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": answer_parts(resp.parts, show)}, "index": 0}
    if resp.stop_reason is not None:
        candidate["finishReason"] = FINISH_FROM_CANONICAL[resp.stop_reason]
    body: dict[str, Any] = {"candidates": [candidate]}
    if resp.usage is not None:
        body["usageMetadata"] = usage_metadata(resp.usage)
    body["modelVersion"] = request.model  # the client's model name, as in streams and the other wires' answers
    body["responseId"] = resp.id
    return orjson.dumps(body)


def encode_error(err: GatewayError, request_id: str | None) -> bytes:
    """The JSON error body in Google's shape (https://cloud.google.com/apis/design/errors#http_mapping)."""
    return orjson.dumps(error_object(err, request_id))
