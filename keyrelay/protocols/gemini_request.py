"""A Gemini generateContent request body → the canonical ChatRequest (a client's Gemini request for another wire).

Every field is either translated or refused with a 400 naming its JSON path; the refusals and the lossy
mappings are listed in docs/protocols.md. Wire reference: https://ai.google.dev/api/generate-content.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import orjson

from keyrelay.protocols.base import InboundRequest
from keyrelay.protocols.canonical import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    Reasoning,
    Role,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from keyrelay.protocols.gemini_parts import (
    camel,
    field,
    invalid,
    model_parts,
    refuse_unknown,
    want_list,
    want_object,
    want_str,
)

_TOP = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings", "model"}
)
_GENERATION = frozenset(
    {
        "maxOutputTokens",
        "candidateCount",
        "temperature",
        "topP",
        "topK",
        "stopSequences",
        "thinkingConfig",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
    }
)
_USER_PART = frozenset({"text", "inlineData", "fileData", "functionResponse"})
# Safety thresholds that ask for no blocking beyond the provider's own: the only ones another wire keeps.
_NO_BLOCKING = frozenset({"BLOCK_NONE", "OFF", "HARM_BLOCK_THRESHOLD_UNSPECIFIED"})
# Text-like inline data is sent as text (a code file, a JSON document); other non-image data is refused.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml", "application/yaml")
_EFFORTS = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high", "XHIGH": "high"}


class _Calls:
    """Tool-call ids over a conversation: ``call_<n>`` for calls without one, answers matched by name."""

    def __init__(self) -> None:
        self.count = 0
        self.pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet, in order

    def new_id(self, name: str) -> str:
        self.count += 1
        return f"call_{self.count}"

    def called(self, call_id: str, name: str) -> None:
        self.pending.append((call_id, name))

    def answer(self, call_id: str | None, name: str, path: str) -> str:
        for k, (pending_id, pending_name) in enumerate(self.pending):
            if (call_id is not None and pending_id == call_id) or (call_id is None and pending_name == name):
                del self.pending[k]
                return pending_id
        if call_id is not None:
            return call_id  # an id the client chose: the target wire judges it
        raise invalid(f"no earlier functionCall named {name!r} is waiting for this response.", path)


def gemini_to_canonical(request: InboundRequest) -> ChatRequest:
    """The canonical request of a judged Gemini request (see ``decode_request``).

    Raises:
        GatewayError: INVALID_REQUEST naming a field that cannot be translated.
    """
    body = request.body
    wrapped = field(body, "generateContentRequest")
    if wrapped is not None:  # countTokens: {"generateContentRequest": {...}}
        body = want_object(wrapped, "generateContentRequest")
    refuse_unknown(body, _TOP, "body")
    chat = ChatRequest(model=request.model, messages=[], stream=request.stream, include_usage=request.stream)
    calls = _Calls()
    for i, content in enumerate(want_list(body.get("contents"), "contents")):
        _content(chat.messages, content, f"contents[{i}]", calls)
    system = field(body, "systemInstruction")
    if system is not None:
        chat.system = _system(system)
    tools = body.get("tools")
    if tools is not None:
        chat.tools = _tools(tools)
    config = field(body, "toolConfig")
    if config is not None:
        chat.tool_choice, allowed = _tool_choice(config)
        if allowed is not None:
            chat.tools = [tool for tool in chat.tools if tool.name in allowed]
    generation = field(body, "generationConfig")
    if generation is not None:
        _generation(chat, want_object(generation, "generationConfig"))
    safety = field(body, "safetySettings")
    if safety is not None:
        _safety(safety)
    return chat


def _content(messages: list[Message], raw: object, path: str, calls: _Calls) -> None:
    content = want_object(raw, path)
    refuse_unknown(content, frozenset({"role", "parts"}), path)
    role = content.get("role")
    role = "user" if role is None or role == "" else want_str(role, f"{path}.role")
    if role == "model":
        parts = model_parts(content.get("parts"), f"{path}.parts", calls.new_id)
        for part in parts:
            if isinstance(part, ToolCallPart):
                calls.called(part.id, part.name)
        messages.append(Message(Role.ASSISTANT, parts))
    elif role in ("user", "function"):  # "function": the role older Gemini clients gave function responses
        results: list[Part] = []
        others: list[Part] = []
        for j, part in enumerate(want_list(content.get("parts"), f"{path}.parts")):
            _user_part(part, f"{path}.parts[{j}]", calls, results, others)
        if results:
            messages.append(Message(Role.TOOL, results))
        if others or not results:
            messages.append(Message(Role.USER, others))
    else:
        raise invalid("must be 'user' or 'model'.", f"{path}.role")


def _user_part(raw: object, path: str, calls: _Calls, results: list[Part], others: list[Part]) -> None:
    part = want_object(raw, path)
    refuse_unknown(part, _USER_PART, path)
    if len(part) != 1:
        raise invalid("a part holds exactly one of text, inlineData, fileData or functionResponse.", path)
    ((key, value),) = part.items()
    if key == "text":
        others.append(TextPart(want_str(value, f"{path}.text")))
    elif key in ("inlineData", "inline_data"):
        others.append(_inline(want_object(value, f"{path}.{key}"), f"{path}.{key}"))
    elif key in ("fileData", "file_data"):
        others.append(_file(want_object(value, f"{path}.{key}"), f"{path}.{key}"))
    else:
        results.append(_function_response(want_object(value, f"{path}.{key}"), f"{path}.{key}", calls))


def _inline(blob: dict[str, Any], path: str) -> Part:
    refuse_unknown(blob, frozenset({"mimeType", "data", "displayName"}), path)
    mime = want_str(field(blob, "mimeType"), f"{path}.mimeType").lower()
    data = want_str(blob.get("data"), f"{path}.data")
    if mime.startswith("image/"):
        return ImagePart(media_type=mime, data=data)
    if mime.startswith(_TEXT_TYPES):
        try:
            return TextPart(base64.b64decode(data, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise invalid("must be base64 of UTF-8 text for this mimeType.", f"{path}.data") from None
    raise invalid(f"inline data of type {mime!r} cannot be sent to another provider (images and text only).", path)


def _file(data: dict[str, Any], path: str) -> Part:
    refuse_unknown(data, frozenset({"mimeType", "fileUri", "displayName"}), path)
    uri = want_str(field(data, "fileUri"), f"{path}.fileUri")
    mime = field(data, "mimeType")
    mime = None if mime is None else want_str(mime, f"{path}.mimeType").lower()
    if mime is None or not mime.startswith("image/"):
        raise invalid("only image files can be sent to another provider (give an image mimeType).", path)
    return ImagePart(media_type=mime, url=uri)


def _function_response(response: dict[str, Any], path: str, calls: _Calls) -> ToolResultPart:
    refuse_unknown(response, frozenset({"id", "name", "response"}), path)
    name = want_str(response.get("name"), f"{path}.name")
    call_id = response.get("id")
    call_id = None if call_id is None else want_str(call_id, f"{path}.id")
    value = want_object(response.get("response", {}), f"{path}.response")
    answered = calls.answer(call_id, name, path)
    # Gemini's convention: {"output": ...} for a result, {"error": ...} for a failure.
    is_error = set(value) == {"error"}
    return ToolResultPart(answered, (TextPart(orjson.dumps(value).decode()),), name=name, is_error=is_error)


def _system(raw: object) -> list[TextPart]:
    if isinstance(raw, str):
        return [TextPart(raw)]
    content = want_object(raw, "systemInstruction")
    refuse_unknown(content, frozenset({"role", "parts"}), "systemInstruction")
    out: list[TextPart] = []
    for j, part in enumerate(want_list(content.get("parts"), "systemInstruction.parts")):
        at = f"systemInstruction.parts[{j}]"
        part = want_object(part, at)
        refuse_unknown(part, frozenset({"text"}), at)
        out.append(TextPart(want_str(part.get("text"), f"{at}.text")))
    return out


def _tools(raw: object) -> list[Tool]:
    out: list[Tool] = []
    for i, tool in enumerate(want_list(raw, "tools")):
        at = f"tools[{i}]"
        tool = want_object(tool, at)
        for key in tool:
            if key not in ("functionDeclarations", "function_declarations"):
                raise invalid(f"the tool {key!r} runs inside Gemini and has no counterpart elsewhere.", f"{at}.{key}")
        declarations = field(tool, "functionDeclarations")
        for j, declaration in enumerate(want_list(declarations or [], f"{at}.functionDeclarations")):
            out.append(_declaration(declaration, f"{at}.functionDeclarations[{j}]"))
    return out


def _declaration(raw: object, path: str) -> Tool:
    declaration = want_object(raw, path)
    refuse_unknown(declaration, frozenset({"name", "description", "parameters", "parametersJsonSchema"}), path)
    name = want_str(declaration.get("name"), f"{path}.name")
    description = declaration.get("description")
    description = None if description is None else want_str(description, f"{path}.description")
    schema = field(declaration, "parametersJsonSchema")
    if schema is not None:
        parameters: dict[str, Any] | None = want_object(schema, f"{path}.parametersJsonSchema")
    else:
        legacy = declaration.get("parameters")
        parameters = None if legacy is None else json_schema(legacy, f"{path}.parameters")
    return Tool(name, description, parameters)


_SCHEMA_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
        "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
        "propertyOrdering", "default", "items", "minimum", "maximum",
    }
)  # fmt: skip


def json_schema(raw: object, path: str) -> dict[str, Any]:
    """JSON Schema from a Gemini ``Schema`` (OpenAPI 3.0 subset: ``type`` in capitals, ``nullable``).

    ``propertyOrdering`` is dropped (JSON Schema keeps the order of ``properties``); ``example`` becomes
    ``examples``.
    """
    schema = want_object(raw, path)
    refuse_unknown(schema, _SCHEMA_KEYS, path)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        name = camel(key)
        at = f"{path}.{key}"
        if name == "propertyOrdering" or name == "nullable":
            continue
        if name == "type":
            out["type"] = want_str(value, at).lower()
        elif name == "properties":
            out["properties"] = {k: json_schema(v, f"{at}.{k}") for k, v in want_object(value, at).items()}
        elif name == "items":
            out["items"] = json_schema(value, at)
        elif name == "anyOf":
            out["anyOf"] = [json_schema(v, f"{at}[{k}]") for k, v in enumerate(want_list(value, at))]
        elif name == "example":
            out["examples"] = [value]
        else:
            out[name] = value
    if schema.get("nullable") is True:
        kind = out.get("type")
        out["type"] = [kind, "null"] if isinstance(kind, str) else "null"
    return out


def _tool_choice(raw: object) -> tuple[ToolChoice | None, set[str] | None]:
    config = want_object(raw, "toolConfig")
    refuse_unknown(config, frozenset({"functionCallingConfig"}), "toolConfig")
    calling = field(config, "functionCallingConfig")
    if calling is None:
        return None, None
    path = "toolConfig.functionCallingConfig"
    calling = want_object(calling, path)
    refuse_unknown(calling, frozenset({"mode", "allowedFunctionNames"}), path)
    mode = calling.get("mode")
    mode = "AUTO" if mode is None else want_str(mode, f"{path}.mode").upper()
    names_raw = field(calling, "allowedFunctionNames")
    names = None
    if names_raw is not None:
        names = [want_str(n, f"{path}.allowedFunctionNames[{k}]") for k, n in enumerate(want_list(names_raw, path))]
    if mode in ("AUTO", "MODE_UNSPECIFIED", "VALIDATED", "NONE"):
        if names and mode in ("AUTO", "MODE_UNSPECIFIED", "NONE"):
            raise invalid("allowedFunctionNames is only meaningful with mode ANY or VALIDATED.", path)
        choice = ToolChoice("none") if mode == "NONE" else ToolChoice("auto")
        return choice, set(names) if names else None
    if mode != "ANY":
        raise invalid("must be AUTO, ANY, NONE or VALIDATED.", f"{path}.mode")
    if names and len(names) == 1:
        return ToolChoice("tool", names[0]), None
    return ToolChoice("required"), set(names) if names else None


def _number(config: dict[str, Any], name: str, kind: Callable[[Any], bool] | None = None) -> Any:
    value = field(config, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is not None and not kind(value)):
        raise invalid("must be a number in range.", f"generationConfig.{name}")
    return value


def _generation(chat: ChatRequest, config: dict[str, Any]) -> None:
    refuse_unknown(config, _GENERATION, "generationConfig")
    chat.max_tokens = _number(config, "maxOutputTokens", lambda v: isinstance(v, int) and v > 0)
    chat.n = _number(config, "candidateCount", lambda v: isinstance(v, int) and 1 <= v <= 8) or 1
    chat.temperature = _number(config, "temperature", lambda v: v >= 0)
    chat.top_p = _number(config, "topP", lambda v: 0 <= v <= 1)
    top_k = _number(config, "topK", lambda v: v >= 1 and float(v).is_integer())
    chat.top_k = None if top_k is None else int(top_k)
    stops = field(config, "stopSequences")
    if stops is not None:
        path = "generationConfig.stopSequences"
        chat.stop = [want_str(s, f"{path}[{k}]") for k, s in enumerate(want_list(stops, path))]
    modalities = field(config, "responseModalities")
    if modalities is not None:
        path = "generationConfig.responseModalities"
        if [want_str(m, path).upper() for m in want_list(modalities, path)] not in ([], ["TEXT"]):
            raise invalid("only TEXT output can be asked of another provider.", path)
    thinking = field(config, "thinkingConfig")
    if thinking is not None:
        chat.reasoning = _thinking(thinking)
    chat.response_format = _response_format(config)


def _thinking(raw: object) -> Reasoning | None:
    path = "generationConfig.thinkingConfig"
    config = want_object(raw, path)
    refuse_unknown(config, frozenset({"thinkingBudget", "includeThoughts", "thinkingLevel"}), path)
    include = field(config, "includeThoughts")
    if include is not None and not isinstance(include, bool):
        raise invalid("must be true or false.", f"{path}.includeThoughts")
    budget = field(config, "thinkingBudget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < -1):
        raise invalid("must be an integer, -1 (dynamic) or more.", f"{path}.thinkingBudget")
    level = field(config, "thinkingLevel")
    effort = None
    if level is not None:
        level = want_str(level, f"{path}.thinkingLevel").upper()
        if level not in _EFFORTS and level != "THINKING_LEVEL_UNSPECIFIED":
            raise invalid("must be MINIMAL, LOW, MEDIUM or HIGH.", f"{path}.thinkingLevel")
        effort = _EFFORTS.get(level)
    if budget == 0 and effort is None:
        return None  # thinking off: no reasoning asked of the target (its default applies)
    return Reasoning(
        budget_tokens=budget if budget and budget > 0 else None, effort=effort, include_thoughts=bool(include)
    )


def _response_format(config: dict[str, Any]) -> dict[str, Any] | None:
    mime = field(config, "responseMimeType")
    schema = field(config, "responseJsonSchema")
    legacy = field(config, "responseSchema")
    if schema is not None and legacy is not None:
        raise invalid("give one of responseSchema and responseJsonSchema.", "generationConfig.responseSchema")
    if legacy is not None:
        schema = json_schema(legacy, "generationConfig.responseSchema")
    if mime is None or want_str(mime, "generationConfig.responseMimeType") == "text/plain":
        if schema is not None:
            raise invalid("a response schema needs responseMimeType application/json.", "generationConfig")
        return None
    if mime != "application/json":
        raise invalid("only text/plain and application/json can be asked of another provider.",
                      "generationConfig.responseMimeType")  # fmt: skip
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def _safety(raw: object) -> None:
    for i, setting in enumerate(want_list(raw, "safetySettings")):
        at = f"safetySettings[{i}]"
        setting = want_object(setting, at)
        refuse_unknown(setting, frozenset({"category", "threshold", "method"}), at)
        threshold = setting.get("threshold")
        if threshold is None or want_str(threshold, f"{at}.threshold").upper() not in _NO_BLOCKING:
            raise invalid(
                "another provider cannot apply Gemini's safety thresholds (only BLOCK_NONE or OFF pass).",
                f"{at}.threshold",
            )
