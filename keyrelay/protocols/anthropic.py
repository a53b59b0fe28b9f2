"""The Anthropic Messages wire as clients speak it (Claude Code, the anthropic SDKs).

Credential, judged request decoding, the request → canonical translation, the canonical → Anthropic
response body and error body. The stream encoder is ``protocols.anthropic_stream``; the block ↔ part
helpers here are shared with ``providers.anthropic``.

Wire format: https://docs.anthropic.com/en/api/messages, errors: https://docs.anthropic.com/en/api/errors.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import InboundRequest, Operation, ProtocolName
from keyrelay.protocols.canonical import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    Part,
    Reasoning,
    Role,
    StopReason,
    TextPart,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from keyrelay.protocols.json_fields import body_object, escapes_of, spelled_plainly
from keyrelay.protocols.judged import JudgedFields

__all__ = [
    "STOP_REASONS",
    "anthropic_to_canonical",
    "canonical_to_anthropic_response",
    "credential",
    "decode_request",
    "encode_error",
    "error_body",
    "usage_object",
]

# The fields keyrelay judges a request by (whitelist, price, cost bound, image bound): each must appear once.
_JUDGED = JudgedFields(("model", "stream", "max_tokens", "messages"))

# Top-level request fields the translation understands. Anything else (service_tier, container,
# mcp_servers, output_config, context_management, inference_geo, speed, top-level cache_control, ...)
# has no canonical form and is refused by name.
_KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
    }
)

STOP_REASONS: dict[StopReason, str] = {
    StopReason.STOP: "end_turn",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.LENGTH: "max_tokens",
    StopReason.TOOL_CALLS: "tool_use",
    StopReason.CONTENT_FILTER: "refusal",
    StopReason.OTHER: "end_turn",  # lossy: a canonical OTHER has no Anthropic word a client can act on
}

# Error ``type`` per HTTP status (https://docs.anthropic.com/en/api/errors; 402, 409 and 504 from the
# SDK's ``types/shared/error_type.py``). Other 4xx are invalid_request_error, as the docs say.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _invalid(message: str, field: str) -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, message, field=field)


# --- credential and judging -----------------------------------------------------------------------


def credential(headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
    """The client's keyrelay key: ``x-api-key``, else ``Authorization: Bearer`` (Claude Code sends either)."""
    authorization: bytes | None = None
    for name, value in headers:
        if name == b"x-api-key":
            token = value.strip()
            if token:
                return token.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value
    if not authorization:
        return None
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token.decode("latin-1") if token else None


def _count_blocks(value: object) -> int:
    """Image and document blocks inside a parsed JSON value (iterative: any depth)."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += item.get("type") in ("image", "document")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


_BLOCK_ESCAPES = escapes_of(["image", "document"])


def image_blocks(raw: bytes, body: dict[str, Any]) -> int:
    r"""An upper bound on the image and document blocks of a body.

    Every JSON string ``"image"`` or ``"document"`` counts (a block's ``type`` is one; a text that is
    exactly that word only raises the bound). A body with escapes that could spell one is counted parsed, since
    ``"im\\u0061ge"`` is the same string (``json_fields.escapes_of``).
    """
    if not spelled_plainly(raw, _BLOCK_ESCAPES):
        return _count_blocks(body.get("messages")) + _count_blocks(body.get("system"))
    return raw.count(b'"image"') + raw.count(b'"document"')


def decode_request(operation: Operation, raw: bytes, model: str | None = None) -> InboundRequest:
    """Parse and judge a Messages (CHAT) or count_tokens (COUNT_TOKENS) body.

    ``max_tokens`` is required for CHAT, a positive integer, as Anthropic requires it; count_tokens
    takes none (its output bound is 0). Image and document blocks each raise the prompt bound.

    Raises:
        GatewayError: INVALID_REQUEST naming the field at fault.
    """
    body = body_object(raw)
    _JUDGED.refuse_duplicates(raw)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _invalid("model is required (a string).", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty array.", "messages")
    max_out: int | None = 0
    if operation is Operation.CHAT:
        max_out = body.get("max_tokens")
        if max_out is None:
            raise _invalid("max_tokens is required.", "max_tokens")
        if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out < 1:
            raise _invalid("max_tokens must be a positive integer.", "max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream must be true or false.", "stream")
    streaming = stream is True and operation is Operation.CHAT
    # Anthropic always reports usage (message_start and message_delta): the client always wants it.
    return InboundRequest(
        operation,
        name,
        streaming,
        True,
        max_out,
        raw,
        body,
        1,
        image_blocks(raw, body),
        ProtocolName.ANTHROPIC,
    )


# --- request → canonical --------------------------------------------------------------------------


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a string.", field)
    return value


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{field} must be a number.", field)
    return float(value)


def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{field} must be an object.", field)
    return value


def _array(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"{field} must be an array.", field)
    return value


def _only(block: dict[str, Any], allowed: frozenset[str], field: str) -> None:
    """Refuse keys the translation cannot carry (``cache_control`` is always allowed: a dropped hint)."""
    for key in block:
        if key not in allowed and key != "cache_control":
            raise _invalid(f"{field}.{key} cannot be translated to the upstream's wire.", f"{field}.{key}")
    hint = block.get("cache_control")
    if hint is not None and not isinstance(hint, dict):
        raise _invalid(f"{field}.cache_control must be an object.", f"{field}.cache_control")


_TEXT_KEYS = frozenset({"type", "text", "citations"})
_IMAGE_KEYS = frozenset({"type", "source"})
_TOOL_USE_KEYS = frozenset({"type", "id", "name", "input"})
_TOOL_RESULT_KEYS = frozenset({"type", "tool_use_id", "content", "is_error"})
_THINKING_KEYS = frozenset({"type", "thinking", "signature"})
_REDACTED_KEYS = frozenset({"type", "data"})


def text_from_block(block: dict[str, Any], field: str) -> TextPart:
    """A ``text`` block → TextPart (request citations, null or empty, are accepted and dropped)."""
    _only(block, _TEXT_KEYS, field)
    citations = block.get("citations")
    if citations is not None and citations != []:
        raise _invalid(f"{field}.citations cannot be translated to the upstream's wire.", f"{field}.citations")
    return TextPart(_string(block.get("text"), f"{field}.text"))


def image_from_block(block: dict[str, Any], field: str) -> ImagePart:
    """An ``image`` block (base64 or url source) → ImagePart."""
    _only(block, _IMAGE_KEYS, field)
    source = _object(block.get("source"), f"{field}.source")
    kind = source.get("type")
    if kind == "base64":
        _only(source, frozenset({"type", "media_type", "data"}), f"{field}.source")
        media_type = _string(source.get("media_type"), f"{field}.source.media_type")
        return ImagePart(media_type=media_type, data=_string(source.get("data"), f"{field}.source.data"))
    if kind == "url":
        _only(source, frozenset({"type", "url"}), f"{field}.source")
        return ImagePart(url=_string(source.get("url"), f"{field}.source.url"))
    raise _invalid(f"{field}.source: only base64 and url image sources can be translated.", f"{field}.source")


def _tool_result_content(value: object, field: str) -> tuple[TextPart | ImagePart, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (TextPart(value),)
    parts: list[TextPart | ImagePart] = []
    for j, item in enumerate(_array(value, field)):
        where = f"{field}[{j}]"
        block = _object(item, where)
        kind = block.get("type")
        if kind == "text":
            parts.append(text_from_block(block, where))
        elif kind == "image":
            parts.append(image_from_block(block, where))
        else:
            raise _invalid(f"{where}: a {kind!r} block in a tool result cannot be translated.", where)
    return tuple(parts)


def part_from_block(block: dict[str, Any], role: str, field: str, names: dict[str, str]) -> Part:
    """One content block of a ``role`` message → a canonical part.

    ``names`` maps the tool_use ids seen so far to their tool names (a tool_result gets its name from it).
    """
    kind = block.get("type")
    if kind == "text":
        return text_from_block(block, field)
    if kind == "image" and role == "user":
        return image_from_block(block, field)
    if kind == "tool_use" and role == "assistant":
        _only(block, _TOOL_USE_KEYS, field)
        call_id = _string(block.get("id"), f"{field}.id")
        name = _string(block.get("name"), f"{field}.name")
        arguments = _object(block.get("input"), f"{field}.input")
        names[call_id] = name
        return ToolCallPart(call_id, name, orjson.dumps(arguments).decode())
    if kind == "tool_result" and role == "user":
        _only(block, _TOOL_RESULT_KEYS, field)
        call_id = _string(block.get("tool_use_id"), f"{field}.tool_use_id")
        is_error = block.get("is_error", False)
        if not isinstance(is_error, bool):
            raise _invalid(f"{field}.is_error must be true or false.", f"{field}.is_error")
        content = _tool_result_content(block.get("content"), f"{field}.content")
        return ToolResultPart(call_id, content, names.get(call_id), is_error)
    if kind == "thinking" and role == "assistant":
        _only(block, _THINKING_KEYS, field)
        signature = block.get("signature")
        if signature is not None:
            signature = _string(signature, f"{field}.signature")
        return ThinkingPart(_string(block.get("thinking"), f"{field}.thinking"), signature or None)
    if kind == "redacted_thinking" and role == "assistant":
        _only(block, _REDACTED_KEYS, field)
        return ThinkingPart("", redacted=_string(block.get("data"), f"{field}.data"))
    raise _invalid(f"{field}: a {kind!r} block in a {role} message cannot be translated.", field)


def _system_parts(value: object, field: str) -> list[TextPart]:
    if isinstance(value, str):
        return [TextPart(value)] if value else []
    parts: list[TextPart] = []
    for i, item in enumerate(_array(value, field)):
        block = _object(item, f"{field}[{i}]")
        if block.get("type") != "text":
            raise _invalid(f"{field}[{i}] must be a text block.", f"{field}[{i}]")
        part = text_from_block(block, f"{field}[{i}]")
        if part.text:  # an empty system text says nothing (and Anthropic refuses empty text blocks)
            parts.append(part)
    return parts


def _user_messages(parts: list[Part]) -> list[Message]:
    """A user turn → a TOOL message of its tool results, then a USER message of the rest (canonical rule)."""
    results: list[Part] = [p for p in parts if isinstance(p, ToolResultPart)]
    if not results:
        return [Message(Role.USER, parts)]
    rest: list[Part] = [p for p in parts if not isinstance(p, ToolResultPart)]
    return [Message(Role.TOOL, results)] + ([Message(Role.USER, rest)] if rest else [])


def _messages(value: list[Any], system: list[TextPart]) -> list[Message]:
    messages: list[Message] = []
    names: dict[str, str] = {}
    for i, item in enumerate(value):
        field = f"messages[{i}]"
        message = _object(item, field)
        _only(message, frozenset({"role", "content"}), field)
        role = message.get("role")
        content = message.get("content")
        if role == "system":  # newer Claude Code sends these: hoisted in order
            system.extend(_system_parts(content, f"{field}.content"))
            continue
        if role not in ("user", "assistant"):
            raise _invalid(f"{field}.role must be user or assistant.", f"{field}.role")
        if isinstance(content, str):
            parts: list[Part] = [TextPart(content)]
        else:
            blocks = _array(content, f"{field}.content")
            parts = [
                part_from_block(_object(b, f"{field}.content[{j}]"), role, f"{field}.content[{j}]", names)
                for j, b in enumerate(blocks)
            ]
        if role == "assistant":
            messages.append(Message(Role.ASSISTANT, parts))
        else:
            messages.extend(_user_messages(parts))
    return messages


def _tools(value: object) -> list[Tool]:
    tools: list[Tool] = []
    for i, item in enumerate(_array(value, "tools")):
        field = f"tools[{i}]"
        tool = _object(item, field)
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            # Server tools (web_search_*, bash_*, text_editor_*, computer_*, code_execution_*) run at Anthropic.
            raise _invalid(f"{field}: the Anthropic server tool {kind!r} cannot be translated.", field)
        _only(tool, frozenset({"type", "name", "description", "input_schema"}), field)
        description = tool.get("description")
        if description is not None:
            description = _string(description, f"{field}.description")
        schema = _object(tool.get("input_schema"), f"{field}.input_schema")
        tools.append(Tool(_string(tool.get("name"), f"{field}.name"), description, schema))
    return tools


def _tool_choice(value: object) -> ToolChoice:
    choice = _object(value, "tool_choice")
    kind = choice.get("type")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _invalid("tool_choice.disable_parallel_tool_use must be true or false.", "tool_choice")
    parallel = None if disable is None else not disable
    if kind == "tool":
        _only(choice, frozenset({"type", "name", "disable_parallel_tool_use"}), "tool_choice")
        return ToolChoice("tool", _string(choice.get("name"), "tool_choice.name"), parallel)
    if kind not in ("auto", "any", "none"):
        raise _invalid("tool_choice.type must be auto, any, tool or none.", "tool_choice.type")
    _only(choice, frozenset({"type", "disable_parallel_tool_use"}), "tool_choice")
    if kind == "any":
        return ToolChoice("required", None, parallel)
    return ToolChoice("auto" if kind == "auto" else "none", None, parallel)


def _thinking(value: object) -> Reasoning | None:
    thinking = _object(value, "thinking")
    kind = thinking.get("type")
    if kind == "disabled":
        _only(thinking, frozenset({"type"}), "thinking")
        return None
    if kind != "enabled":
        raise _invalid("thinking.type must be enabled or disabled to be translated.", "thinking.type")
    _only(thinking, frozenset({"type", "budget_tokens"}), "thinking")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise _invalid("thinking.budget_tokens must be a positive integer.", "thinking.budget_tokens")
    return Reasoning(budget_tokens=budget)


def _user(value: object) -> str | None:
    metadata = _object(value, "metadata")
    _only(metadata, frozenset({"user_id"}), "metadata")
    user = metadata.get("user_id")
    return None if user is None else _string(user, "metadata.user_id")


def _optional(body: dict[str, Any], request: ChatRequest) -> None:
    """The optional sampling and tool fields, onto ``request``."""
    if body.get("stop_sequences") is not None:
        stops = _array(body["stop_sequences"], "stop_sequences")
        request.stop = [_string(s, f"stop_sequences[{i}]") for i, s in enumerate(stops)]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            setattr(request, name, _number(body[name], name))
    top_k = body.get("top_k")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise _invalid("top_k must be a non-negative integer.", "top_k")
        request.top_k = top_k
    if body.get("tools") is not None:
        request.tools = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        request.tool_choice = _tool_choice(body["tool_choice"])
    if body.get("thinking") is not None:
        request.reasoning = _thinking(body["thinking"])
    if body.get("metadata") is not None:
        request.user = _user(body["metadata"])


def anthropic_to_canonical(request: InboundRequest) -> ChatRequest:
    """Translate a judged Messages body to a canonical ChatRequest (for an upstream of another wire).

    ``cache_control`` hints (on system, blocks and tools) are dropped: the other wires cache on their own.

    Raises:
        GatewayError: INVALID_REQUEST naming the field that is malformed or has no canonical form.
    """
    body = request.body
    for key in body:
        if key not in _KNOWN_FIELDS:
            raise _invalid(f"{key} cannot be translated to the upstream's wire.", key)
    system = [] if body.get("system") is None else _system_parts(body["system"], "system")
    messages = _messages(body["messages"], system)
    chat = ChatRequest(
        model=request.model,
        messages=messages,
        system=system,
        max_tokens=request.max_output_tokens or None,
        stream=request.stream,
        include_usage=request.stream,
    )
    _optional(body, chat)
    return chat


# --- canonical → response -------------------------------------------------------------------------


def usage_object(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage object: ``input_tokens`` excludes the cache reads and writes counted beside it."""
    if usage is None:
        return {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": usage.uncached_prompt_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.completion_tokens,
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments text as the object Anthropic's ``input`` holds (``""`` is ``{}``).

    Raises:
        ValueError: the text is not a JSON object.
    """
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise ValueError("arguments are not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("arguments are not a JSON object")
    return value


def thinking_block(part: ThinkingPart) -> dict[str, Any]:
    """A ThinkingPart → a ``thinking`` or ``redacted_thinking`` block."""
    if part.redacted is not None:
        return {"type": "redacted_thinking", "data": part.redacted}
    return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}


def _response_block(part: Part) -> dict[str, Any]:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ToolCallPart(id=call_id, name=name, arguments=arguments):
            try:
                return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input(arguments)}
            except ValueError as exc:
                raise GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream's tool call {exc}.") from None
        case ThinkingPart():
            return thinking_block(part)
        case _:
            raise GatewayError(
                ErrorType.UPSTREAM_ERROR, f"The upstream answered a {type(part).__name__}: Anthropic cannot carry it."
            )


def message_id(response_id: str) -> str:
    """An Anthropic-style ``msg_`` id for an upstream's id."""
    return response_id if response_id.startswith("msg_") else "msg_" + response_id


def canonical_to_anthropic_response(resp: ChatResponse, request: ChatRequest) -> bytes:
    """The Messages response body for the client: ``model`` is the model the client asked for.

    Raises:
        GatewayError: UPSTREAM_ERROR when the answer holds what a Message cannot (an image, a tool result,
            tool-call arguments that are not a JSON object).
    """
    reason = STOP_REASONS[resp.stop_reason] if resp.stop_reason is not None else "end_turn"
    body = {
        "id": message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [_response_block(part) for part in resp.parts],
        "stop_reason": reason,
        "stop_sequence": resp.stop_sequence if reason == "stop_sequence" else None,
        "usage": usage_object(resp.usage),
    }
    return orjson.dumps(body)


# --- errors ---------------------------------------------------------------------------------------


def error_body(err: GatewayError, request_id: str | None) -> dict[str, Any]:
    """Anthropic's error object for ``err``, with keyrelay's own type and code beside it."""
    own: dict[str, Any] = {"type": err.error_type.name, "code": err.code}
    if err.field is not None:
        own["param"] = err.field
    if err.limit_source is not None:
        own["limit_source"] = err.limit_source
    kind = _ERROR_TYPES.get(err.status) or ("api_error" if err.status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": err.message, "keyrelay": own}}
    body["request_id"] = request_id
    return body


def encode_error(err: GatewayError, request_id: str | None) -> bytes:
    """The JSON error body in Anthropic's shape (the status stays ``err.status``)."""
    return orjson.dumps(error_body(err, request_id))
