"""An OpenAI Chat Completions client served by another wire: its request → canonical ``ChatRequest``.

Used only when the upstream speaks Anthropic or Gemini; OpenAI → OpenAI is the byte passthrough of
``protocols/openai.py``. Reference: https://platform.openai.com/docs/api-reference/chat/create and the
``openai`` SDK's ``types/chat`` (the exact field set).

Every field the other wires cannot express is refused with INVALID_REQUEST naming it, unless it holds
its default value (``n: 1``, ``logprobs: false``, ``presence_penalty: 0``, ...), which is accepted. A few
hints that do not change the answer are accepted and ignored (``_IGNORED``). The answer (body and
stream) is ``protocols/openai_encode.py``.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from keyrelay.errors import GatewayError
from keyrelay.protocols.base import InboundRequest
from keyrelay.protocols.canonical import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    Reasoning,
    Role,
    TextPart,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from keyrelay.protocols.json_fields import array as _array
from keyrelay.protocols.json_fields import invalid as _invalid
from keyrelay.protocols.json_fields import number as _number
from keyrelay.protocols.json_fields import obj as _object
from keyrelay.protocols.json_fields import part_type as _part_type
from keyrelay.protocols.json_fields import positive as _positive
from keyrelay.protocols.json_fields import text as _text
from keyrelay.protocols.json_fields import unknown_key, untranslatable

__all__ = ["openai_to_canonical", "parse_data_url"]

# Fields translated below.
_TRANSLATED = frozenset(
    {
        "model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "top_k", "stop",
        "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort",
        "response_format", "n", "user", "safety_identifier",
    }
)  # fmt: skip
# Hints about OpenAI's own caching and abuse tracking: they do not change the answer, so another wire may
# ignore them (documented).
_IGNORED = frozenset({"prompt_cache_key", "prompt_cache_retention", "prompt_cache_options"})
# Fields another wire cannot express, with the values that mean "not used" (accepted silently).
_DEFAULTS: dict[str, tuple[object, ...]] = {
    "seed": (),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "prediction": (),
    "audio": (),
    "modalities": (["text"],),
    "web_search_options": (),
    "service_tier": ("auto", "default"),
    "store": (False,),
    "metadata": ({},),
    "verbosity": ("medium",),
    "moderation": (),
}
_KNOWN = _TRANSLATED | _IGNORED  # fields a request may hold whatever their value
_LEGACY = ("function_call", "functions")
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _refuse(field: str, what: str | None = None) -> GatewayError:
    return _invalid(f"{what or field} is not supported when this model is served by a non-OpenAI upstream.", field)


def _check_keys(value: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    """Refuse any key of ``value`` outside ``allowed`` that holds a value (null means absent)."""
    key = unknown_key(value, allowed)
    if key is not None:
        raise _refuse(f"{path}.{key}")


# --- messages -------------------------------------------------------------------------------------

_TEXT_PART_KEYS = frozenset({"type", "text"})
_IMAGE_PART_KEYS = frozenset({"type", "image_url", "prompt_cache_breakpoint"})


def parse_data_url(url: str, field: str) -> ImagePart:
    """An ``ImagePart`` from a base64 ``data:`` URL (RFC 2397): ``data:<type>/<subtype>[;param=v]*;base64,<data>``.

    Raises:
        GatewayError: INVALID_REQUEST naming ``field`` for anything else (no media type, not base64,
            percent-encoded data, bad base64 text).
    """
    head, comma, data = url[5:].partition(",")
    params = head.split(";")
    if not comma or len(params) < 2 or params[-1].lower() != "base64" or not _MEDIA_TYPE.fullmatch(params[0]):
        raise _invalid(f"{field} must be a base64 data URL (data:<media type>;base64,<data>).", field)
    if len(data) % 4 or not _BASE64.fullmatch(data):
        raise _invalid(f"{field} holds data that is not valid base64.", field)
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise _invalid(f"{field} holds data that is not valid base64.", field) from None
    return ImagePart(media_type=params[0].lower(), data=data)


def _image(part: dict[str, Any], field: str) -> ImagePart:
    _check_keys(part, _IMAGE_PART_KEYS, field)
    image = _object(part.get("image_url"), f"{field}.image_url")
    _check_keys(image, frozenset({"url", "detail"}), f"{field}.image_url")
    url = _text(image.get("url"), f"{field}.image_url.url")
    detail = image.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise _invalid(f"{field}.image_url.detail must be a string.", f"{field}.image_url.detail")
    lowered = url[:8].lower()
    if lowered.startswith("data:"):
        parsed = parse_data_url(url, f"{field}.image_url.url")
        return ImagePart(media_type=parsed.media_type, data=parsed.data, detail=detail)
    if lowered.startswith(("http://", "https://")):
        return ImagePart(url=url, detail=detail)
    raise _invalid(f"{field}.image_url.url must be an http(s) URL or a base64 data URL.", f"{field}.image_url.url")


def _text_part(part: dict[str, Any], field: str) -> TextPart:
    _check_keys(part, _TEXT_PART_KEYS, field)
    return TextPart(_text(part.get("text"), f"{field}.text"))


def _user_parts(content: object, field: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(_array(content, field)):
        path = f"{field}[{i}]"
        part, kind = _part_type(raw, path)
        if kind == "text":
            parts.append(_text_part(part, path))
        elif kind == "image_url":
            parts.append(_image(part, path))
        elif kind in ("input_audio", "file"):
            raise _refuse(path, f"A content part of type {kind!r} ({path})")
        else:
            raise _invalid(f"{path}.type {kind!r} is not a known content part type.", f"{path}.type")
    return parts


def _text_parts(content: object, field: str, refusal: bool = False) -> list[TextPart]:
    """Content that may be a string or text parts (system, developer, tool; assistant with refusal parts)."""
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[TextPart] = []
    for i, raw in enumerate(_array(content, field)):
        path = f"{field}[{i}]"
        part, kind = _part_type(raw, path)
        if kind == "text":
            parts.append(_text_part(part, path))
        elif kind == "refusal" and refusal:
            _check_keys(part, frozenset({"type", "refusal"}), path)
            parts.append(TextPart(_text(part.get("refusal"), f"{path}.refusal")))
        else:
            raise _invalid(f"{path}.type must be 'text' here, not {kind!r}.", f"{path}.type")
    return parts


def _tool_calls(value: object, field: str) -> list[Part]:
    calls: list[Part] = []
    for i, raw in enumerate(_array(value, field)):
        path = f"{field}[{i}]"
        call, kind = _part_type(raw, path)
        if kind != "function":
            raise _refuse(f"{path}.type", f"A tool call of type {kind!r} ({path})")
        _check_keys(call, frozenset({"id", "type", "function"}), path)
        function = _object(call.get("function"), f"{path}.function")
        _check_keys(function, frozenset({"name", "arguments"}), f"{path}.function")
        calls.append(
            ToolCallPart(
                _text(call.get("id"), f"{path}.id"),
                _text(function.get("name"), f"{path}.function.name"),
                _text(function.get("arguments"), f"{path}.function.arguments"),
            )
        )
    return calls


_ASSISTANT_KEYS = frozenset({"role", "content", "name", "refusal", "tool_calls", "reasoning_content"})


def _assistant(message: dict[str, Any], field: str) -> Message:
    _check_keys(message, _ASSISTANT_KEYS, field)
    parts: list[Part] = []
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        parts.append(ThinkingPart(_text(reasoning, f"{field}.reasoning_content")))
    content = message.get("content")
    if content is not None:
        parts.extend(_text_parts(content, f"{field}.content", refusal=True))
    refusal = message.get("refusal")
    if refusal is not None:
        parts.append(TextPart(_text(refusal, f"{field}.refusal")))
    if message.get("tool_calls") is not None:
        parts.extend(_tool_calls(message["tool_calls"], f"{field}.tool_calls"))
    return Message(Role.ASSISTANT, parts, _name(message, field))


def _name(message: dict[str, Any], field: str) -> str | None:
    name = message.get("name")
    return None if name is None else _text(name, f"{field}.name")


def _messages(value: object) -> tuple[list[TextPart], list[Message]]:
    system: list[TextPart] = []
    messages: list[Message] = []
    names: dict[str, str] = {}
    for i, raw in enumerate(_array(value, "messages")):
        field = f"messages[{i}]"
        message = _object(raw, field)
        role = message.get("role")
        if role in ("system", "developer"):
            _check_keys(message, frozenset({"role", "content", "name"}), field)
            system.extend(_text_parts(message.get("content"), f"{field}.content"))
        elif role == "user":
            _check_keys(message, frozenset({"role", "content", "name"}), field)
            messages.append(
                Message(Role.USER, _user_parts(message.get("content"), f"{field}.content"), _name(message, field))
            )
        elif role == "assistant":
            for legacy in ("function_call", "audio"):
                if message.get(legacy) is not None:
                    raise _refuse(f"{field}.{legacy}")
            assistant = _assistant(message, field)
            names.update((p.id, p.name) for p in assistant.parts if isinstance(p, ToolCallPart))
            messages.append(assistant)
        elif role == "tool":
            _check_keys(message, frozenset({"role", "content", "tool_call_id"}), field)
            call_id = _text(message.get("tool_call_id"), f"{field}.tool_call_id")
            content = tuple(_text_parts(message.get("content"), f"{field}.content"))
            result = ToolResultPart(call_id, content, names.get(call_id))
            if messages and messages[-1].role is Role.TOOL:
                messages[-1].parts.append(result)  # consecutive results answer one assistant turn
            else:
                messages.append(Message(Role.TOOL, [result]))
        elif role == "function":
            raise _invalid(
                f"{field}: role 'function' (the legacy function calling) is not supported when this model is"
                " served by a non-OpenAI upstream; use tool_calls and role 'tool'.",
                f"{field}.role",
            )
        else:
            raise _invalid(f"{field}.role must be system, developer, user, assistant or tool.", f"{field}.role")
    if not messages and not system:
        raise _invalid("messages must be a non-empty array.", "messages")
    return system, messages


# --- tools ----------------------------------------------------------------------------------------


def _tools(value: object) -> list[Tool]:
    tools: list[Tool] = []
    for i, raw in enumerate(_array(value, "tools")):
        field = f"tools[{i}]"
        tool, kind = _part_type(raw, field)
        if kind != "function":
            raise _refuse(f"{field}.type", f"A tool of type {kind!r} ({field})")
        _check_keys(tool, frozenset({"type", "function"}), field)
        function = _object(tool.get("function"), f"{field}.function")
        # strict (structured outputs for arguments) is accepted and not enforced by the other wires: documented.
        _check_keys(function, frozenset({"name", "description", "parameters", "strict"}), f"{field}.function")
        description = function.get("description")
        parameters = function.get("parameters")
        tools.append(
            Tool(
                _text(function.get("name"), f"{field}.function.name"),
                None if description is None else _text(description, f"{field}.function.description"),
                None if parameters is None else _object(parameters, f"{field}.function.parameters"),
            )
        )
    return tools


def _tool_choice(body: dict[str, Any], tools: list[Tool]) -> ToolChoice | None:
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("parallel_tool_calls must be true or false.", "parallel_tool_calls")
    choice = body.get("tool_choice")
    if choice is None:
        return ToolChoice("auto", parallel=parallel) if tools and parallel is not None else None
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice, parallel=parallel)
    obj, kind = _part_type(choice, "tool_choice")
    if kind != "function":
        raise _refuse("tool_choice", f"tool_choice of type {kind!r}")
    _check_keys(obj, frozenset({"type", "function"}), "tool_choice")
    function = _object(obj.get("function"), "tool_choice.function")
    _check_keys(function, frozenset({"name"}), "tool_choice.function")
    return ToolChoice("tool", _text(function.get("name"), "tool_choice.function.name"), parallel)


# --- the request ----------------------------------------------------------------------------------


def _refuse_untranslatable(body: dict[str, Any]) -> None:
    for name in _LEGACY:
        if body.get(name) is not None:
            raise _invalid(
                f"{name} (the legacy function calling) is not supported when this model is served by a"
                " non-OpenAI upstream; use tools and tool_choice.",
                name,
            )
    field = untranslatable(body, _KNOWN, _DEFAULTS)
    if field is not None:
        raise _refuse(field)


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [_text(item, f"stop[{i}]") for i, item in enumerate(_array(value, "stop"))]


def _reasoning(value: object) -> Reasoning | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in _EFFORTS:
        raise _invalid(f"reasoning_effort must be one of {', '.join(sorted(_EFFORTS))}.", "reasoning_effort")
    return Reasoning(effort=str(value))


def _response_format(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    obj, kind = _part_type(value, "response_format")
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise _invalid("response_format.type must be text, json_object or json_schema.", "response_format.type")
    if kind == "json_schema":
        schema = _object(obj.get("json_schema"), "response_format.json_schema")
        _text(schema.get("name"), "response_format.json_schema.name")
    return obj


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    options = _object(options, "stream_options")
    # include_obfuscation pads chunks against side channels on OpenAI's own stream: not produced here.
    _check_keys(options, frozenset({"include_usage", "include_obfuscation"}), "stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise _invalid("stream_options.include_usage must be true or false.", "stream_options.include_usage")
    return include is True


def openai_to_canonical(request: InboundRequest) -> ChatRequest:
    """The full translation of an OpenAI chat request body into a ``ChatRequest``.

    Raises:
        GatewayError: INVALID_REQUEST naming the field that is malformed or that another wire cannot express.
    """
    body = request.body
    _refuse_untranslatable(body)
    if (n := _positive(body, "n")) not in (None, 1):
        raise _refuse("n", "n greater than 1")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream must be true or false.", "stream")
    system, messages = _messages(body.get("messages"))
    tools = _tools(body["tools"]) if body.get("tools") is not None else []
    limits = [v for v in (_positive(body, "max_completion_tokens"), _positive(body, "max_tokens")) if v]
    user = body.get("user") if body.get("user") is not None else body.get("safety_identifier")
    return ChatRequest(
        model=request.model,
        messages=messages,
        system=system,
        max_tokens=max(limits) if limits else None,
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=_positive(body, "top_k"),  # an extension of vLLM and other OpenAI-compatible servers
        stop=_stop(body.get("stop")),
        stream=stream is True,
        include_usage=_include_usage(body) and stream is True,
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        reasoning=_reasoning(body.get("reasoning_effort")),
        response_format=_response_format(body.get("response_format")),
        user=None if user is None else _text(user, "user"),
        n=n or 1,
    )
