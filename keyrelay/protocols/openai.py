"""The OpenAI wire as clients speak it: credential, request decoding, SSE usage sniffing.

Requests are parsed once with orjson. The raw bytes are forwarded untouched unless the model id
must be rewritten or usage must be requested from the upstream for a stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import IMAGE_TOKEN_BOUND, InboundRequest, Operation, ProtocolName, ProviderPreferences
from keyrelay.protocols.json_fields import body_object, count_objects, escapes_of, spelled_plainly
from keyrelay.protocols.judged import JudgedFields

__all__ = ["IMAGE_TOKEN_BOUND", "InboundRequest", "Operation", "bearer_credential", "decode_request", "upstream_body"]

MAX_CHOICES = 128  # OpenAI's own bound on ``n`` (https://platform.openai.com/docs/api-reference/chat/create)
# The fields keyrelay judges a request by (whitelist, price, cost bound, usage): each must appear once.
_JUDGED = JudgedFields(("model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "provider"))
MAX_PREFERRED = 32  # names in provider.order or provider.only
# The legacy Completions API's own default output bound, when the body gives no max_tokens
# (https://platform.openai.com/docs/api-reference/completions/create); sent upstream when the body has none.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_JUDGED_COMPLETIONS = JudgedFields(("model", "stream", "stream_options", "max_tokens", "n", "best_of", "provider"))


_IMAGE_ESCAPES = escapes_of(["image_url"])  # what could spell it escaped ("image_\\u0075rl")


def image_parts(raw: bytes, body: dict[str, Any]) -> int:
    """How many ``image_url`` parts a chat body holds (keys written with escapes are counted parsed)."""
    if not spelled_plainly(raw, _IMAGE_ESCAPES):
        return count_objects(body.get("messages"), lambda item: "image_url" in item)
    return raw.count(b'"image_url"')


def bearer_credential(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token.decode("latin-1") if token else None


def _int_field(body: dict[str, Any], name: str, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GatewayError(ErrorType.INVALID_REQUEST, f"{name} must be a positive integer.", field=name)
    if maximum is not None and value > maximum:
        raise GatewayError(ErrorType.INVALID_REQUEST, f"{name} must be at most {maximum}.", field=name)
    return value


def decode_request(operation: Operation, raw: bytes) -> InboundRequest:
    """Parse and check a chat, legacy completions or embeddings request body.

    Raises:
        GatewayError: INVALID_REQUEST naming the field at fault.
    """
    body = body_object(raw)
    (_JUDGED_COMPLETIONS if operation is Operation.COMPLETIONS else _JUDGED).refuse_duplicates(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(ErrorType.INVALID_REQUEST, "model is required (a string).", field="model")
    if operation is Operation.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(ErrorType.INVALID_REQUEST, "messages must be a non-empty array.", field="messages")
        # Both may be sent, and an upstream may read either: bound by the larger.
        limits = [v for v in (_int_field(body, "max_completion_tokens"), _int_field(body, "max_tokens")) if v]
        max_out = max(limits) if limits else None
    elif operation is Operation.COMPLETIONS:
        if not _is_prompt(body.get("prompt")):
            raise GatewayError(
                ErrorType.INVALID_REQUEST,
                "prompt is required: a string, an array of strings, or token arrays.",
                field="prompt",
            )
        max_out = _int_field(body, "max_tokens") or COMPLETIONS_DEFAULT_MAX_TOKENS
    else:
        if "input" not in body:
            raise GatewayError(ErrorType.INVALID_REQUEST, "input is required.", field="input")
        max_out = 0
    stream_value = body.get("stream")
    if stream_value is not None and not isinstance(stream_value, bool):
        raise GatewayError(ErrorType.INVALID_REQUEST, "stream must be true or false.", field="stream")
    stream = stream_value is True
    options = body.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    choices = _int_field(body, "n", MAX_CHOICES) or 1 if operation is not Operation.EMBEDDINGS else 1
    if operation is Operation.COMPLETIONS:
        # best_of completions are generated (the best n returned), for each prompt of a batch.
        choices = max(choices, _int_field(body, "best_of", MAX_CHOICES) or 1) * _prompt_count(body["prompt"])
    images = image_parts(raw, body) if operation is Operation.CHAT else 0
    routing = None
    if "provider" in body:
        # keyrelay's own field (as OpenRouter's): read here, never sent upstream.
        routing = provider_preferences(body.pop("provider"))
        raw = orjson.dumps(body)
    return InboundRequest(
        operation, model, stream, wants_usage, max_out, raw, body, choices, images, ProtocolName.OPENAI, routing
    )


def _is_prompt(value: object) -> bool:
    """A legacy ``prompt``: a string, an array of strings, an array of token ids, or an array of such arrays."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(item, str) for item in value) or all(_is_token(item) for item in value):
        return True
    return all(isinstance(item, list) and item and all(_is_token(t) for t in item) for item in value)


def _prompt_count(prompt: object) -> int:
    """How many prompts a legacy ``prompt`` holds: one string or token array, or each of a list of them."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return len(prompt)
    return 1


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def provider_preferences(value: Any) -> ProviderPreferences:
    """The body's ``provider`` object: ``{"order": [...], "only": [...], "allow_fallbacks": bool}``.

    Raises:
        GatewayError: INVALID_REQUEST naming the field at fault (``provider.order``, ...).
    """
    if not isinstance(value, dict):
        raise GatewayError(ErrorType.INVALID_REQUEST, "provider must be an object.", field="provider")
    unknown = sorted(set(value) - {"order", "only", "allow_fallbacks"})
    if unknown:
        raise GatewayError(
            ErrorType.INVALID_REQUEST,
            f"provider.{unknown[0][:50]} is not supported; keyrelay reads order, only and allow_fallbacks.",
            field=f"provider.{unknown[0][:50]}",
        )
    fallbacks = value.get("allow_fallbacks", True)
    if not isinstance(fallbacks, bool):
        raise GatewayError(
            ErrorType.INVALID_REQUEST,
            "provider.allow_fallbacks must be true or false.",
            field="provider.allow_fallbacks",
        )
    only = value.get("only")
    return ProviderPreferences(
        order=_names(value.get("order"), "order") or (),
        only=None if only is None else _names(only, "only"),
        allow_fallbacks=fallbacks,
    )


def _names(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_PREFERRED
        or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)
    ):
        raise GatewayError(
            ErrorType.INVALID_REQUEST,
            f"provider.{name} must be a list of at most {MAX_PREFERRED} provider names.",
            field=f"provider.{name}",
        )
    return tuple(value)


def upstream_body(request: InboundRequest, upstream_model: str) -> bytes:
    """The body to send upstream: the client's bytes, unless the model or stream options must change.

    A legacy completion without ``max_tokens`` gets the 16 keyrelay bounded its cost by (OpenAI's and vLLM's
    default; other servers, Ollama's among them, would otherwise generate without a limit).
    """
    needs_usage = request.stream and not request.client_wants_usage
    needs_limit = request.operation is Operation.COMPLETIONS and request.body.get("max_tokens") is None
    if upstream_model == request.model and not needs_usage and not needs_limit:
        return request.raw
    body = dict(request.body)
    body["model"] = upstream_model
    if needs_limit:
        body["max_tokens"] = COMPLETIONS_DEFAULT_MAX_TOKENS
    if needs_usage:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(body)
