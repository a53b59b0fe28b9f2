"""Gemini content parts, finish reasons, usage metadata and error objects: the pieces every Gemini translator shares.

Wire reference: https://ai.google.dev/api/caching#Content (``Content``, ``Part``) and
https://ai.google.dev/api/generate-content (``FinishReason``, ``UsageMetadata``); field names as the
google-genai SDK's ``types.py`` spells them. The REST API reads proto JSON, which accepts each field in
lowerCamelCase or in its original snake_case name: both are read (``field`` below), camelCase is written.

Thought signatures: Gemini puts a ``thoughtSignature`` on thought parts and also on the first
non-thought part after its (possibly hidden) thinking, a ``text`` or a ``functionCall`` part. Canonical
parts carry a signature only on ``ThinkingPart``, so a signature on a non-thought part becomes the
signature of the ``ThinkingPart`` just before it (when that one has none yet), or of an empty
``ThinkingPart`` put before it; writing Gemini, an unshown or empty ``ThinkingPart``'s signature goes back
onto the next part. Consecutive thought parts are one ``ThinkingPart`` (Gemini streams thinking in
pieces) until one of them holds a signature.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.canonical import (
    ImagePart,
    Part,
    StopReason,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    Usage,
)

# Gemini finishReason → canonical (STOP with a functionCall becomes TOOL_CALLS where parts are known).
FINISH_TO_CANONICAL: dict[str, StopReason] = {
    "STOP": StopReason.STOP,
    "MAX_TOKENS": StopReason.LENGTH,
    "SAFETY": StopReason.CONTENT_FILTER,
    "RECITATION": StopReason.CONTENT_FILTER,
    "BLOCKLIST": StopReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": StopReason.CONTENT_FILTER,
    "SPII": StopReason.CONTENT_FILTER,
    "IMAGE_SAFETY": StopReason.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": StopReason.CONTENT_FILTER,
    "IMAGE_RECITATION": StopReason.CONTENT_FILTER,
    "MODEL_ARMOR": StopReason.CONTENT_FILTER,
    "PUP_LIMITED_DISABLED": StopReason.CONTENT_FILTER,
}
# canonical → Gemini finishReason (the StopReason table in canonical.py).
FINISH_FROM_CANONICAL: dict[StopReason, str] = {
    StopReason.STOP: "STOP",
    StopReason.STOP_SEQUENCE: "STOP",
    StopReason.LENGTH: "MAX_TOKENS",
    StopReason.TOOL_CALLS: "STOP",
    StopReason.CONTENT_FILTER: "SAFETY",
    StopReason.OTHER: "OTHER",
}


def stop_reason(finish: object, has_calls: bool) -> StopReason | None:
    """The canonical stop reason of a Gemini ``finishReason`` (None when absent)."""
    if not isinstance(finish, str) or not finish:
        return None
    reason = FINISH_TO_CANONICAL.get(finish, StopReason.OTHER)
    return StopReason.TOOL_CALLS if reason is StopReason.STOP and has_calls else reason


@lru_cache(maxsize=256)
def snake(name: str) -> str:
    """The proto field name of a lowerCamelCase JSON name (``inlineData`` → ``inline_data``)."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def field(obj: dict[str, Any], name: str) -> Any:
    """A field read under its camelCase name, else its snake_case name (None when neither is present)."""
    value = obj.get(name)
    if value is None:
        value = obj.get(snake(name))
    return value


def invalid(message: str, path: str) -> GatewayError:
    """The 400 naming the JSON path at fault."""
    return GatewayError(ErrorType.INVALID_REQUEST, f"{path}: {message}", field=path)


def want_object(value: object, path: str) -> dict[str, Any]:
    """``value`` when it is a JSON object."""
    if not isinstance(value, dict):
        raise invalid("must be an object.", path)
    return value


def want_list(value: object, path: str) -> list[Any]:
    """``value`` when it is a JSON array."""
    if not isinstance(value, list):
        raise invalid("must be an array.", path)
    return value


def want_str(value: object, path: str) -> str:
    """``value`` when it is a JSON string."""
    if not isinstance(value, str):
        raise invalid("must be a string.", path)
    return value


def keys_of(obj: dict[str, Any]) -> set[str]:
    """The field names of an object, snake_case names read as camelCase."""
    return {camel(key) for key in obj}


@lru_cache(maxsize=256)
def camel(name: str) -> str:
    """The lowerCamelCase JSON name of a proto field name (``inline_data`` → ``inlineData``)."""
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def refuse_unknown(obj: dict[str, Any], known: frozenset[str], path: str) -> None:
    """Refuse fields this translation does not know (Google refuses unknown names too: "Cannot find field")."""
    for key in obj:
        if camel(key) not in known:
            raise invalid(f"the field {key!r} cannot be translated to another provider's API.", f"{path}.{key}")


# --- Gemini model parts → canonical ---------------------------------------------------------------

_MODEL_PART_KEYS = frozenset({"text", "thought", "thoughtSignature", "functionCall"})


def attach_signature(parts: list[Part], signature: str) -> None:
    """Put a signature found on a non-thought part onto the ThinkingPart before it (or a new empty one)."""
    last = parts[-1] if parts else None
    if isinstance(last, ThinkingPart) and last.signature is None:
        parts[-1] = ThinkingPart(last.text, signature, last.redacted)
    else:
        parts.append(ThinkingPart("", signature))


def model_parts(raw_parts: object, path: str, new_id: Any) -> list[Part]:
    """Canonical parts of a Gemini ``model`` turn (text, thoughts, function calls).

    Args:
        raw_parts: The ``parts`` array.
        path: Its JSON path, for errors.
        new_id: Called with a function name when a ``functionCall`` has no ``id``; returns the id to use.

    Raises:
        GatewayError: INVALID_REQUEST naming the part at fault.
    """
    out: list[Part] = []
    open_thought = False  # the last part is a ThinkingPart that later thought pieces extend
    for j, raw in enumerate(want_list(raw_parts, path)):
        at = f"{path}[{j}]"
        part = want_object(raw, at)
        refuse_unknown(part, _MODEL_PART_KEYS, at)
        signature = field(part, "thoughtSignature")
        if signature is not None:
            want_str(signature, f"{at}.thoughtSignature")
        call = field(part, "functionCall")
        text = part.get("text")
        if call is not None:
            if text is not None:
                raise invalid("a part holds one of text or functionCall.", at)
            if signature:
                attach_signature(out, signature)
            out.append(tool_call(call, f"{at}.functionCall", new_id))
            open_thought = False
            continue
        text = want_str(text if text is not None else "", f"{at}.text")
        thought = part.get("thought")
        if thought is not None and not isinstance(thought, bool):
            raise invalid("must be true or false.", f"{at}.thought")
        if thought:
            last = out[-1] if out else None
            if open_thought and isinstance(last, ThinkingPart):
                out[-1] = ThinkingPart(last.text + text, signature or None)
            else:
                out.append(ThinkingPart(text, signature or None))
            open_thought = not signature
            continue
        if signature:
            attach_signature(out, signature)
        if text or not signature:
            out.append(TextPart(text))
        open_thought = False
    return out


def tool_call(raw: object, path: str, new_id: Any) -> ToolCallPart:
    """A canonical tool call from a Gemini ``functionCall`` object ``{name, args, id?}``."""
    call = want_object(raw, path)
    refuse_unknown(call, frozenset({"name", "args", "id"}), path)
    name = want_str(call.get("name"), f"{path}.name")
    args = call.get("args")
    args = {} if args is None else want_object(args, f"{path}.args")
    call_id = call.get("id")
    call_id = new_id(name) if call_id is None else want_str(call_id, f"{path}.id")
    return ToolCallPart(call_id, name, orjson.dumps(args).decode())


# --- canonical → Gemini parts ---------------------------------------------------------------------


def call_args(arguments: str) -> dict[str, Any] | None:
    """The object a tool call's JSON ``arguments`` hold (None when they are not a JSON object)."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def function_call(part: ToolCallPart, args: dict[str, Any]) -> dict[str, Any]:
    """A Gemini ``functionCall`` part body."""
    return {"functionCall": {"id": part.id, "name": part.name, "args": args}}


def answer_parts(parts: list[Part], show_thoughts: bool) -> list[dict[str, Any]]:
    """Gemini parts of a canonical answer (the response side: never refuses, see docs/protocols.md).

    Thinking is shown as ``thought`` parts only when the client asked for it (``includeThoughts``); a hidden
    or empty thinking part's signature goes onto the next part. Tool-call arguments that are not a JSON
    object become ``{}`` (Gemini's ``args`` is an object); Anthropic ``redacted_thinking`` is not shown.
    """
    out: list[dict[str, Any]] = []
    signature: str | None = None
    for part in parts:
        item: dict[str, Any]
        if isinstance(part, ThinkingPart):
            if show_thoughts and part.text:
                item = {"text": part.text, "thought": True}
                if part.signature:
                    item["thoughtSignature"] = part.signature
                out.append(item)
            elif part.signature:
                signature = part.signature
            continue
        if isinstance(part, TextPart):
            item = {"text": part.text}
        elif isinstance(part, ToolCallPart):
            item = function_call(part, call_args(part.arguments) or {})
        else:
            continue  # images and tool results never appear in an answer
        if signature is not None:
            item["thoughtSignature"] = signature
            signature = None
        out.append(item)
    if signature is not None:
        out.append({"text": "", "thoughtSignature": signature})
    return out


def image_part(part: ImagePart) -> dict[str, Any] | None:
    """``inlineData`` for an image with data (None for a URL image)."""
    if part.data is None:
        return None
    return {"inlineData": {"mimeType": part.media_type or "application/octet-stream", "data": part.data}}


# --- usage ----------------------------------------------------------------------------------------


def usage_metadata(usage: Usage) -> dict[str, int]:
    """A Gemini ``usageMetadata`` object for canonical usage (thoughts reported apart, as Gemini does)."""
    reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
    meta = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.completion_tokens - reasoning,
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
    }
    if reasoning:
        meta["thoughtsTokenCount"] = reasoning
    if usage.cache_read_tokens:
        meta["cachedContentTokenCount"] = usage.cache_read_tokens
    return meta


_USAGE_COUNTS = (
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
    "cachedContentTokenCount",
)
_SNAKE_USAGE_COUNTS = frozenset(snake(name) for name in _USAGE_COUNTS)


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def gemini_usage(obj: object) -> Usage | None:
    """Canonical usage from a Gemini ``usageMetadata`` object (None when absent or holding no counts).

    ``promptTokenCount`` includes ``cachedContentTokenCount``; ``toolUsePromptTokenCount`` (results of
    Google's own tools) is input too and is added to it. Gemini counts thoughts outside
    ``candidatesTokenCount``: completion = candidates + thoughts. Read on every chunk of a stream: the
    snake_case names are looked up only when the object holds one.
    """
    if not isinstance(obj, dict):
        return None
    if _SNAKE_USAGE_COUNTS.isdisjoint(obj):
        get = obj.get
        prompt, candidates, thoughts, tool_use, cached = (_count(get(name)) for name in _USAGE_COUNTS)
    else:
        prompt, candidates, thoughts, tool_use, cached = (_count(field(obj, name)) for name in _USAGE_COUNTS)
    thoughts = thoughts or 0
    if prompt is None and candidates is None and not thoughts:
        return None
    prompt = (prompt or 0) + (tool_use or 0)
    cached = min(cached or 0, prompt)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=(candidates or 0) + thoughts,
        cache_read_tokens=cached,
        reasoning_tokens=thoughts,
    )


# --- errors ---------------------------------------------------------------------------------------

# google.rpc.Code names for keyrelay's statuses (https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto).
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",  # billing: Google answers 400 FAILED_PRECONDITION; the status code stays 402
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",  # the method is not supported on this path
    408: "DEADLINE_EXCEEDED",  # the client's request headers came too late (code.proto: expired before completion)
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    431: "INVALID_ARGUMENT",  # the request headers are too large
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",  # the upstream failed: code.proto's "service is currently unavailable", retryable
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def rpc_status(status: int) -> str:
    """The google.rpc status name Gemini clients expect beside an HTTP status."""
    return _RPC_STATUS.get(status) or ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def error_object(err: GatewayError, request_id: str | None) -> dict[str, Any]:
    """The ``{"error": {...}}`` object of a Google API error, with keyrelay's details as an ErrorInfo."""
    metadata = {"code": err.code}
    if err.limit_source is not None:
        metadata["limit_source"] = err.limit_source
    if err.field is not None:
        metadata["param"] = err.field
    if request_id is not None:
        metadata["request_id"] = request_id
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": err.error_type.name,
        "domain": "keyrelay",
        "metadata": metadata,
    }
    return {"error": {"code": err.status, "message": err.message, "status": rpc_status(err.status), "details": [info]}}
