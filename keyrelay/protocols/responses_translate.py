"""An OpenAI Responses client served by another wire: its request → canonical ``ChatRequest``.

Used for every upstream but ``kind: openai`` (which gets the bytes, ``protocols/responses.py``).
Reference: https://platform.openai.com/docs/api-reference/responses/create and the ``openai`` SDK's
``types/responses/response_create_params.py`` and ``response_input_item_param.py``.

``input`` items become messages in order:

==============================================  ================================================
Responses item                                  canonical
==============================================  ================================================
``message`` (role user), ``input_text``,        ``Message(USER)`` with ``TextPart``, ``ImagePart``
``input_image``
``message`` (role system or developer),         ``ChatRequest.system`` (hoisted, in order, after
``instructions``                                ``instructions``)
``message`` (role assistant), ``output_text``,  ``TextPart`` of an assistant message
``refusal``
``reasoning``                                   ``ThinkingPart`` (text and signature from keyrelay's
                                                own ``encrypted_content``; any other is dropped)
``function_call``                               ``ToolCallPart`` (``call_id``, ``name``, ``arguments``)
``custom_tool_call``                            ``ToolCallPart`` with ``{"input": <input>}``
``function_call_output``,                       ``ToolResultPart`` in a ``TOOL`` message
``custom_tool_call_output``
==============================================  ================================================

Consecutive assistant-side items (reasoning, messages, calls) form one assistant turn, as the API's own
output items of one response do. A ``custom`` tool becomes a function with one string parameter
``input`` (``canonical.FREE_FORM_PARAMETERS``; a grammar is given to the model in the description).
Every field another wire cannot express is refused with INVALID_REQUEST naming it (``tools[0].type``,
``include[1]``, ...) unless it holds its default; hints that do not change the answer are accepted and
ignored (``_IGNORED``). The answer (body and stream) is ``protocols/responses_encode.py``.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.errors import GatewayError
from keyrelay.protocols.base import InboundRequest
from keyrelay.protocols.canonical import (
    FREE_FORM_PARAMETERS,
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
from keyrelay.protocols.json_fields import array, invalid, number, obj, part_type, text, unknown_key, untranslatable
from keyrelay.protocols.openai_translate import parse_data_url
from keyrelay.protocols.responses import open_reasoning

__all__ = ["free_form_input", "responses_to_canonical"]

_TRANSLATED = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
        "max_output_tokens", "temperature", "top_p", "text", "include", "stream", "user", "safety_identifier",
        "store", "stream_options",
    }
)  # fmt: skip
# Hints about OpenAI's own caching, storage tags and service: they do not change the answer (documented).
_IGNORED = frozenset({"prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "metadata"})
# Fields another wire cannot express, with the values that mean "not used" (accepted silently).
_DEFAULTS: dict[str, tuple[object, ...]] = {
    "background": (False,),
    "service_tier": ("auto", "default"),
    "truncation": ("disabled",),
    "top_logprobs": (0,),
    "max_tool_calls": (),
    "prompt": (),
    "context_management": (),
}
_KNOWN = _TRANSLATED | _IGNORED  # fields a request may hold whatever their value
_INCLUDE = frozenset({"reasoning.encrypted_content"})  # what a translation can give (responses_encode)
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_USER_ROLES = frozenset({"user", "system", "developer"})


def _refuse(field: str, what: str | None = None) -> GatewayError:
    return invalid(
        f"{what or field} is not supported when this model is served by an upstream other than OpenAI's Responses API.",
        field,
    )


def _check_keys(value: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    """Refuse any key of ``value`` outside ``allowed`` that holds a value (null means absent)."""
    key = unknown_key(value, allowed)
    if key is not None:
        raise _refuse(f"{path}.{key}")


# --- content parts --------------------------------------------------------------------------------

_ITEM_META = frozenset({"type", "id", "status"})  # what the API adds to items it returned: read, not used


def _image(part: dict[str, Any], field: str) -> ImagePart:
    _check_keys(part, frozenset({"type", "image_url", "detail", "file_id"}), field)
    if part.get("file_id") is not None:
        raise _refuse(f"{field}.file_id", "An image by file_id (OpenAI's file storage)")
    url = text(part.get("image_url"), f"{field}.image_url")
    detail = part.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise invalid(f"{field}.detail must be a string.", f"{field}.detail")
    lowered = url[:8].lower()
    if lowered.startswith("data:"):
        parsed = parse_data_url(url, f"{field}.image_url")
        return ImagePart(media_type=parsed.media_type, data=parsed.data, detail=detail)
    if lowered.startswith(("http://", "https://")):
        return ImagePart(url=url, detail=detail)
    raise invalid(f"{field}.image_url must be an http(s) URL or a base64 data URL.", f"{field}.image_url")


def _input_parts(content: object, field: str) -> list[Part]:
    """A user, system or developer message's content: a string, or ``input_text`` / ``input_image`` parts."""
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(array(content, field)):
        path = f"{field}[{i}]"
        part, kind = part_type(raw, path)
        if kind == "input_text":
            _check_keys(part, frozenset({"type", "text"}), path)
            parts.append(TextPart(text(part.get("text"), f"{path}.text")))
        elif kind == "input_image":
            parts.append(_image(part, path))
        elif kind in ("input_file", "input_audio"):
            raise _refuse(f"{path}.type", f"A content part of type {kind!r} ({path})")
        else:
            raise invalid(f"{path}.type {kind!r} is not a known input content type.", f"{path}.type")
    return parts


def _output_parts(content: object, field: str) -> list[Part]:
    """An assistant message's content: a string, or ``output_text`` / ``refusal`` parts."""
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(array(content, field)):
        path = f"{field}[{i}]"
        part, kind = part_type(raw, path)
        if kind in ("output_text", "input_text"):
            # Annotations and logprobs describe the text the API returned; they are not part of it.
            _check_keys(part, frozenset({"type", "text", "annotations", "logprobs"}), path)
            parts.append(TextPart(text(part.get("text"), f"{path}.text")))
        elif kind == "refusal":
            _check_keys(part, frozenset({"type", "refusal"}), path)
            parts.append(TextPart(text(part.get("refusal"), f"{path}.refusal")))
        else:
            raise invalid(f"{path}.type must be output_text or refusal, not {kind!r}.", f"{path}.type")
    return parts


def _output_content(value: object, field: str) -> tuple[TextPart | ImagePart, ...]:
    """A tool call's ``output``: a string, or ``input_text`` / ``input_image`` parts."""
    parts = _input_parts(value, field)
    return tuple(p for p in parts if isinstance(p, TextPart | ImagePart))


# --- input items ----------------------------------------------------------------------------------


class _Conversation:
    """Builds canonical messages from input items, grouping one assistant turn's items together."""

    def __init__(self) -> None:
        self.system: list[TextPart] = []
        self.messages: list[Message] = []
        self._names: dict[str, str] = {}

    def _assistant(self) -> list[Part]:
        last = self.messages[-1] if self.messages else None
        if last is None or last.role is not Role.ASSISTANT:
            last = Message(Role.ASSISTANT, [])
            self.messages.append(last)
        return last.parts

    def item(self, raw: object, field: str) -> None:
        item = obj(raw, field)
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise invalid(f"{field}.type must be a string.", f"{field}.type")
        if kind == "message":
            self._message(item, field)
        elif kind == "reasoning":
            self._reasoning(item, field)
        elif kind in ("function_call", "custom_tool_call"):
            self._call(item, kind, field)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, field)
        else:
            raise _refuse(f"{field}.type", f"An input item of type {kind!r} ({field})")

    def _message(self, item: dict[str, Any], field: str) -> None:
        role = item.get("role")
        _check_keys(item, _ITEM_META | {"role", "content", "phase"}, field)
        if role == "assistant":
            self._assistant().extend(_output_parts(item.get("content"), f"{field}.content"))
            return
        if not isinstance(role, str) or role not in _USER_ROLES:
            raise invalid(f"{field}.role must be user, assistant, system or developer.", f"{field}.role")
        parts = _input_parts(item.get("content"), f"{field}.content")
        if role == "user":
            self.messages.append(Message(Role.USER, parts))
            return
        for part in parts:
            if not isinstance(part, TextPart):
                raise invalid(f"{field}.content: a {role} message holds text only.", f"{field}.content")
            self.system.append(part)

    def _reasoning(self, item: dict[str, Any], field: str) -> None:
        _check_keys(item, _ITEM_META | {"summary", "content", "encrypted_content"}, field)
        for name in ("summary", "content"):
            for i, raw in enumerate(array(item.get(name) or [], f"{field}.{name}")):
                part_type(raw, f"{field}.{name}[{i}]")
        sealed = item.get("encrypted_content")
        part = open_reasoning(text(sealed, f"{field}.encrypted_content")) if sealed is not None else None
        if part is not None:  # keyrelay's own: the upstream's reasoning, exactly
            self._assistant().append(part)
            return
        # Reasoning with no signature keyrelay can give back: text only (wires that need the signature drop it).
        texts = [p.get("text") for p in item.get("content") or item.get("summary") or []]
        joined = "".join(t for t in texts if isinstance(t, str))
        if joined:
            self._assistant().append(ThinkingPart(joined))

    def _call(self, item: dict[str, Any], kind: str, field: str) -> None:
        name = text(item.get("name"), f"{field}.name")
        call_id = text(item.get("call_id"), f"{field}.call_id")
        if kind == "function_call":
            _check_keys(item, _ITEM_META | {"call_id", "name", "arguments"}, field)
            arguments = text(item.get("arguments"), f"{field}.arguments")
        else:
            _check_keys(item, _ITEM_META | {"call_id", "name", "input"}, field)
            arguments = orjson.dumps({"input": text(item.get("input"), f"{field}.input")}).decode()
        self._names[call_id] = name
        self._assistant().append(ToolCallPart(call_id, name, arguments))

    def _output(self, item: dict[str, Any], field: str) -> None:
        _check_keys(item, _ITEM_META | {"call_id", "output"}, field)
        call_id = text(item.get("call_id"), f"{field}.call_id")
        result = ToolResultPart(
            call_id, _output_content(item.get("output"), f"{field}.output"), self._names.get(call_id)
        )
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role is Role.TOOL:
            last.parts.append(result)  # the results of one turn's calls answer together
        else:
            self.messages.append(Message(Role.TOOL, [result]))


def _conversation(body: dict[str, Any]) -> tuple[list[TextPart], list[Message]]:
    conversation = _Conversation()
    instructions = body.get("instructions")
    if instructions is not None:
        conversation.system.append(TextPart(text(instructions, "instructions")))
    value = body.get("input")
    if isinstance(value, str):
        conversation.messages.append(Message(Role.USER, [TextPart(value)]))
    else:
        for i, raw in enumerate(array(value, "input")):
            conversation.item(raw, f"input[{i}]")
    if not conversation.messages:
        raise invalid("input must hold at least one user message or tool output.", "input")
    return conversation.system, conversation.messages


# --- tools ----------------------------------------------------------------------------------------


def _custom_description(tool: dict[str, Any], field: str) -> str | None:
    """A custom tool's description, with its input grammar (if any) told to the model."""
    description = tool.get("description")
    if description is not None:
        description = text(description, f"{field}.description")
    fmt = tool.get("format")
    if fmt is None:
        return description
    value, kind = part_type(fmt, f"{field}.format")
    if kind == "text":
        _check_keys(value, frozenset({"type"}), f"{field}.format")
        return description
    if kind != "grammar":
        raise invalid(f"{field}.format.type must be text or grammar.", f"{field}.format.type")
    _check_keys(value, frozenset({"type", "syntax", "definition"}), f"{field}.format")
    syntax = text(value.get("syntax"), f"{field}.format.syntax")
    definition = text(value.get("definition"), f"{field}.format.definition")
    rule = f"The input must match this {syntax} grammar:\n{definition}"
    return f"{description}\n\n{rule}" if description else rule


def _tools(value: object) -> list[Tool]:
    tools: list[Tool] = []
    for i, raw in enumerate(array(value, "tools")):
        field = f"tools[{i}]"
        tool, kind = part_type(raw, field)
        if kind not in ("function", "custom"):
            raise _refuse(f"{field}.type", f"A tool of type {kind!r} ({field})")
        name = text(tool.get("name"), f"{field}.name")
        if kind == "function":
            # strict (structured arguments) is accepted and not enforced by the other wires: documented.
            _check_keys(tool, frozenset({"type", "name", "description", "parameters", "strict"}), field)
            description = tool.get("description")
            parameters = tool.get("parameters")
            tools.append(
                Tool(
                    name,
                    None if description is None else text(description, f"{field}.description"),
                    None if parameters is None else obj(parameters, f"{field}.parameters"),
                )
            )
        elif kind == "custom":
            _check_keys(tool, frozenset({"type", "name", "description", "format"}), field)
            tools.append(Tool(name, _custom_description(tool, field), FREE_FORM_PARAMETERS, free_form=True))
    return tools


def _tool_choice(body: dict[str, Any], tools: list[Tool]) -> tuple[ToolChoice | None, list[Tool]]:
    """The tool choice, and the tools offered (``allowed_tools`` narrows them)."""
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls must be true or false.", "parallel_tool_calls")
    choice = body.get("tool_choice")
    if choice is None:
        return (ToolChoice("auto", parallel=parallel) if tools and parallel is not None else None), tools
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice, parallel=parallel), tools
    value, kind = part_type(choice, "tool_choice")
    if kind in ("function", "custom"):
        _check_keys(value, frozenset({"type", "name"}), "tool_choice")
        return ToolChoice("tool", text(value.get("name"), "tool_choice.name"), parallel), tools
    if kind == "allowed_tools":
        _check_keys(value, frozenset({"type", "mode", "tools"}), "tool_choice")
        mode = value.get("mode")
        if mode not in ("auto", "required"):
            raise invalid("tool_choice.mode must be auto or required.", "tool_choice.mode")
        names = set()
        for i, raw in enumerate(array(value.get("tools"), "tool_choice.tools")):
            names.add(text(obj(raw, f"tool_choice.tools[{i}]").get("name"), f"tool_choice.tools[{i}].name"))
        return ToolChoice(mode, parallel=parallel), [t for t in tools if t.name in names]
    raise _refuse("tool_choice", f"tool_choice of type {kind!r}")


# --- the request ----------------------------------------------------------------------------------


def _refuse_untranslatable(body: dict[str, Any]) -> None:
    name = untranslatable(body, _KNOWN, _DEFAULTS)
    if name is not None:
        raise _refuse(name)


def _reasoning(value: object) -> Reasoning | None:
    """The reasoning asked for (``reasoning.summary`` is read by the encoder: ``wants_summary``)."""
    if value is None:
        return None
    reasoning = obj(value, "reasoning")
    _check_keys(reasoning, frozenset({"effort", "summary", "generate_summary"}), "reasoning")
    effort = reasoning.get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in _EFFORTS):
        raise invalid(f"reasoning.effort must be one of {', '.join(sorted(_EFFORTS))}.", "reasoning.effort")
    for name in ("summary", "generate_summary"):
        value = reasoning.get(name)
        if value is not None and (not isinstance(value, str) or value not in _SUMMARIES):
            raise invalid(f"reasoning.{name} must be auto, concise or detailed.", f"reasoning.{name}")
    if effort is None or effort == "none":
        return None
    return Reasoning(effort=str(effort))


def wants_summary(body: dict[str, Any]) -> bool:
    """Whether the client asked for reasoning summaries (``reasoning.summary``): the encoder shows the thinking."""
    reasoning = body.get("reasoning")
    return isinstance(reasoning, dict) and (
        reasoning.get("summary") is not None or reasoning.get("generate_summary") is not None
    )


def _response_format(value: object) -> dict[str, Any] | None:
    """``text.format`` → the canonical (Chat Completions) ``response_format``."""
    if value is None:
        return None
    config = obj(value, "text")
    _check_keys(config, frozenset({"format", "verbosity"}), "text")  # verbosity: a hint (documented)
    fmt = config.get("format")
    if fmt is None:
        return None
    value, kind = part_type(fmt, "text.format")
    if kind == "text":
        return None
    if kind == "json_object":
        _check_keys(value, frozenset({"type"}), "text.format")
        return {"type": "json_object"}
    if kind != "json_schema":
        raise invalid("text.format.type must be text, json_object or json_schema.", "text.format.type")
    _check_keys(value, frozenset({"type", "name", "schema", "strict", "description"}), "text.format")
    schema: dict[str, Any] = {
        "name": text(value.get("name"), "text.format.name"),
        "schema": obj(value.get("schema"), "text.format.schema"),
    }
    for name in ("strict", "description"):
        if value.get(name) is not None:
            schema[name] = value[name]
    return {"type": "json_schema", "json_schema": schema}


def _include(value: object) -> None:
    if value is None:
        return
    for i, item in enumerate(array(value, "include")):
        if text(item, f"include[{i}]") not in _INCLUDE:
            raise _refuse(f"include[{i}]", f"include {item!r}")


def _stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is not None:
        # include_obfuscation pads deltas against side channels on OpenAI's own stream: not produced here.
        _check_keys(obj(options, "stream_options"), frozenset({"include_obfuscation"}), "stream_options")


def free_form_input(arguments: str) -> str:
    """A custom tool call's ``input`` from the arguments a function-calling upstream gave (``{"input": ...}``).

    Arguments that are not that object (a model that did not follow the schema) are given as they are.
    """
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return str(parsed["input"])
    return arguments


def responses_to_canonical(request: InboundRequest) -> ChatRequest:
    """The full translation of a Responses request body into a ``ChatRequest``.

    Raises:
        GatewayError: INVALID_REQUEST naming the field that is malformed or that another wire cannot express.
    """
    body = request.body
    _refuse_untranslatable(body)
    _include(body.get("include"))
    _stream_options(body)
    if body.get("store") is not None and not isinstance(body.get("store"), bool):
        raise invalid("store must be true or false.", "store")
    system, messages = _conversation(body)
    tools = _tools(body["tools"]) if body.get("tools") is not None else []
    choice, tools = _tool_choice(body, tools)
    reasoning = _reasoning(body.get("reasoning"))
    user = body.get("user") if body.get("user") is not None else body.get("safety_identifier")
    return ChatRequest(
        model=request.model,
        messages=messages,
        system=system,
        max_tokens=request.max_output_tokens,
        temperature=number(body, "temperature"),
        top_p=number(body, "top_p"),
        stream=request.stream,
        include_usage=True,
        tools=tools,
        tool_choice=choice,
        reasoning=reasoning,
        response_format=_response_format(body.get("text")),
        user=None if user is None else text(user, "user"),
    )
