"""The OpenAI Responses wire of the mock upstream: ``POST /v1/responses``, read into a Turn and checked as the API does.

A request is validated like the real API validates the fields the mock reads (400s in OpenAI's error shape), read
into a :class:`~.behaviour.Turn`, and the :class:`~.behaviour.Plan` is written by :mod:`.responses_render` as a
``response`` object or as its stream of events. The key check, the faults (``fail-NNN``, ``fail_status`` /
``key_status``, ``slow-ttfb``, ``held``, ``hang``, ``redirect-3NN``) and the recording are the OpenAI wire's
(:class:`~.openai.OpenAIWire`); ``prompt-too-long`` is the Responses API's own context-window 400.

How the request is read:

* ``input`` is a string (one user message) or a list of items: messages (``role`` user, system, developer or
  assistant, with or without ``type: "message"``; ``content`` a string or ``input_text`` / ``input_image`` /
  ``output_text`` parts), ``function_call`` / ``function_call_output``, ``custom_tool_call`` /
  ``custom_tool_call_output`` and ``reasoning`` items. Without ``previous_response_id`` (or ``conversation``) every
  tool output needs its call earlier in the input and every call its output, as the API requires.
* Prompt tokens (:func:`count_responses_tokens`): ``ceil(B / 4) + 3 * items``, ``B`` the UTF-8 bytes of
  ``instructions`` plus the text of every input message (string content, or the ``text`` of its parts) and the
  ``output`` of every tool output item (a string, or the ``text`` of its parts); the other items count 0 bytes but
  count as items; a string ``input`` is one item. ``"Hello there"`` is 6 tokens, as on the chat wire.
* Tools: ``function`` tools (their ``parameters`` give the call's ``arguments``, see :func:`.behaviour.arguments_for`)
  and ``custom`` tools (free-form: a custom tool call's ``input`` is always :data:`CUSTOM_TOOL_INPUT`; its output
  tokens are counted as for a call with ``{}`` arguments). ``tool_choice`` ``"none"`` disables them,
  ``{"type": "function" | "custom", "name"}`` forces one; ``"auto"`` and ``"required"`` call the first.
* The conversation ends with tool results when the input ends with ``function_call_output`` /
  ``custom_tool_call_output`` items; the reply then quotes the first one.
* Thinking: ``reasoning`` given with an ``effort`` other than ``"none"`` / ``"minimal"`` (no effort: the reasoning
  models' default, ``"medium"``). The reasoning item's summary is shown when ``reasoning.summary`` is set, its
  ``encrypted_content`` when ``include`` has ``"reasoning.encrypted_content"``.
* Structured output: ``text.format`` ``{"type": "json_schema", "name", "schema"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from keyrelay.testing.mock_upstream.behaviour import Tool, Turn, plan_reply
from keyrelay.testing.mock_upstream.core import (
    FAULT_CUT_STREAM,
    FAULT_PROMPT_TOO_LONG,
    FAULT_STREAM_ERROR,
    MockState,
    abort_connection,
    json_response,
    text_tokens,
)
from keyrelay.testing.mock_upstream.openai import BAD_JSON_MESSAGE, OpenAIWire, invalid_request
from keyrelay.testing.mock_upstream.openai import _fault_error as openai_fault_error
from keyrelay.testing.mock_upstream.responses_render import (
    CUSTOM_TOOL_INPUT,
    Answer,
    response_object,
    stream_frames,
)

__all__ = ["CUSTOM_TOOL_INPUT", "ResponsesWire", "count_responses_tokens"]

MIN_OUTPUT_TOKENS: Final = 16
"""The smallest ``max_output_tokens`` the Responses API accepts."""
PROMPT_TOO_LONG_MESSAGE: Final = (
    "Your input exceeds the context window of this model. Please adjust your input and try again."
)
ROLES: Final = ("user", "system", "developer", "assistant")
EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SUMMARIES: Final = ("auto", "concise", "detailed")
TOOL_CHOICES: Final = ("none", "auto", "required")
TEXT_FORMATS: Final = ("text", "json_object", "json_schema")
OUTPUT_ITEMS: Final = {"function_call_output": "function_call", "custom_tool_call_output": "custom_tool_call"}
"""Each tool output item type, and the type of the call it answers."""
_REQUIRED: Final = {
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
    "custom_tool_call": ("call_id", "name", "input"),
    "custom_tool_call_output": ("call_id", "output"),
    "reasoning": ("summary",),
}
_CALL_NAMES: Final = {"function_call": "function call", "custom_tool_call": "custom tool call"}


# ---------------------------------------------------------------------------------------------------------------------
# Token counting
# ---------------------------------------------------------------------------------------------------------------------


def _input_items(value: Any) -> list[Any]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return value if isinstance(value, list) else []


def _text_bytes(content: Any) -> int:
    """UTF-8 bytes of a string, or of the ``text`` of a list of parts (other parts count 0)."""
    if isinstance(content, str):
        return len(content.encode())
    if not isinstance(content, list):
        return 0
    return sum(len(p["text"].encode()) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))


def _is_message(item: dict[str, Any]) -> bool:
    return bool(item.get("type", "message") == "message")


def _item_bytes(item: Any) -> int:
    if not isinstance(item, dict):
        return 0
    if item.get("type") in OUTPUT_ITEMS:
        return _text_bytes(item.get("output"))
    return _text_bytes(item.get("content")) if _is_message(item) else 0


def count_responses_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of a Responses request by the mock's rule (see the module docstring).

    Args:
        body: The request body (any JSON object; what is not understood counts 0 bytes).

    Returns:
        ``usage.input_tokens``: ``ceil(B / 4) + 3 * items``.
    """
    instructions = body.get("instructions")
    total = len(instructions.encode()) if isinstance(instructions, str) else 0
    items = _input_items(body.get("input"))
    total += sum(_item_bytes(item) for item in items)
    return text_tokens(total, len(items))


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """How the API names a JSON value's type in its errors."""
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a decimal"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
        case _:
            return "null"


def _missing(param: str) -> web.Response:
    return invalid_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> web.Response:
    quoted = [f"'{a}'" for a in allowed]
    supported = ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    return invalid_request(
        f"Invalid value: '{value}'. Supported values are: {supported}.", param=param, code="invalid_value"
    )


def _check_integer(body: dict[str, Any], name: str, low: int) -> web.Response | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return invalid_request(
            f"Invalid type for '{name}': expected an integer, but got {_kind(value)} instead.",
            param=name,
            code="invalid_type",
        )
    if value < low:
        return invalid_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return None


def _check_decimal(body: dict[str, Any], name: str, high: int) -> web.Response | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return invalid_request(
            f"Invalid type for '{name}': expected a decimal, but got {_kind(value)} instead.",
            param=name,
            code="invalid_type",
        )
    if value < 0:
        return invalid_request(
            f"Invalid '{name}': decimal below minimum value. Expected a value >= 0, but got {value} instead.",
            param=name,
            code="decimal_below_min_value",
        )
    if value > high:
        return invalid_request(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=name,
            code="decimal_above_max_value",
        )
    return None


def _check_item(index: int, item: Any) -> web.Response | None:
    """One input item: an object, a message with a known role and a content, or an item with its fields."""
    param = f"input[{index}]"
    if not isinstance(item, dict):
        return invalid_request(
            f"Invalid type for '{param}': expected an input item, but got {_kind(item)} instead.",
            param=param,
            code="invalid_type",
        )
    if _is_message(item):
        role = item.get("role")
        if role is None:
            return _missing(f"{param}.role")
        if role not in ROLES:
            return _invalid_value(f"{param}.role", role, ROLES)
        return _missing(f"{param}.content") if item.get("content") is None else None
    for name in _REQUIRED.get(item.get("type", ""), ()):
        if item.get(name) is None:
            return _missing(f"{param}.{name}")
    return None


def _check_pairs(items: list[dict[str, Any]]) -> web.Response | None:
    """Every tool output answers an earlier call, and every call is answered (without a stored conversation)."""
    calls: dict[str, str] = {}
    answered: set[str] = set()
    for item in items:
        kind = item.get("type")
        if kind in _CALL_NAMES:
            calls[str(item["call_id"])] = kind
        elif kind in OUTPUT_ITEMS:
            call_id = str(item["call_id"])
            if calls.get(call_id) != OUTPUT_ITEMS[kind]:
                name = _CALL_NAMES[OUTPUT_ITEMS[kind]]
                return invalid_request(f"No tool call found for {name} output with call_id {call_id}.", param="input")
            answered.add(call_id)
    for call_id, kind in calls.items():
        if call_id not in answered:
            return invalid_request(f"No tool output found for {_CALL_NAMES[kind]} {call_id}.", param="input")
    return None


def _check_input(body: dict[str, Any]) -> web.Response | None:
    value = body.get("input")
    stored = any(body.get(name) is not None for name in ("previous_response_id", "conversation", "prompt"))
    if value is None:
        return None if stored else _missing("input")
    if isinstance(value, str):
        return None
    if not isinstance(value, list):
        return invalid_request(
            f"Invalid type for 'input': expected one of a string or array of input items, but got {_kind(value)}"
            " instead.",
            param="input",
            code="invalid_type",
        )
    if not value and not stored:
        return invalid_request(
            "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="input",
            code="empty_array",
        )
    for index, item in enumerate(value):
        failure = _check_item(index, item)
        if failure is not None:
            return failure
    return None if stored else _check_pairs(value)


def _tool_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)] if tools else []


def _check_tools(body: dict[str, Any]) -> web.Response | None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return invalid_request(
            f"Invalid type for 'tools': expected an array of tools, but got {_kind(tools)} instead.",
            param="tools",
            code="invalid_type",
        )
    for index, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") is None:
            return _missing(f"tools[{index}].type")
        if tool["type"] in ("function", "custom") and not isinstance(tool.get("name"), str):
            return _missing(f"tools[{index}].name")
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            return _invalid_value("tool_choice", choice, TOOL_CHOICES)
        if choice == "required" and not tools:
            return invalid_request("Tool choice 'required' must be specified with 'tools' parameter.", "tool_choice")
    elif isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        name = choice.get("name")
        if name not in _tool_names(body):
            return invalid_request(f"Tool choice '{name}' not found in 'tools' parameter.", param="tool_choice")
    return None


def _all_text(body: dict[str, Any]) -> str:
    parts = [body.get("instructions")]
    for item in _input_items(body.get("input")):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):
            parts.extend(p.get("text") for p in content if isinstance(p, dict))
        else:
            parts.append(content)
    return " ".join(p for p in parts if isinstance(p, str))


def _check_text(body: dict[str, Any]) -> web.Response | None:
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text_format, dict):
        return None
    kind = text_format.get("type")
    if kind not in TEXT_FORMATS:
        return _invalid_value("text.format.type", kind, TEXT_FORMATS)
    if kind == "json_schema":
        for name in ("name", "schema"):
            if text_format.get(name) is None:
                return _missing(f"text.format.{name}")
    if kind == "json_object" and "json" not in _all_text(body).lower():
        return invalid_request(
            "Response input messages must contain the word 'json' in some form to use 'text.format' of type "
            "'json_object'.",
            param="input",
        )
    return None


def _check_reasoning(body: dict[str, Any]) -> web.Response | None:
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict):
        return None
    effort, summary = reasoning.get("effort"), reasoning.get("summary")
    if effort is not None and effort not in EFFORTS:
        return _invalid_value("reasoning.effort", effort, EFFORTS)
    if summary is not None and summary not in SUMMARIES:
        return _invalid_value("reasoning.summary", summary, SUMMARIES)
    return None


def _check_stream_options(body: dict[str, Any]) -> web.Response | None:
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    return None


def _check(body: dict[str, Any]) -> web.Response | None:
    """Every check the mock makes, in the order the API reports them; the first failure, if any."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _missing("model")
    checks = (
        _check_input(body),
        _check_integer(body, "max_output_tokens", MIN_OUTPUT_TOKENS),
        _check_decimal(body, "temperature", 2),
        _check_decimal(body, "top_p", 1),
        _check_tools(body),
        _check_text(body),
        _check_reasoning(body),
        _check_stream_options(body),
    )
    return next((failure for failure in checks if failure is not None), None)


# ---------------------------------------------------------------------------------------------------------------------
# The request as a Turn
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated Responses request.

    Attributes:
        model: The requested model.
        body: The whole body (echoed in the ``response`` object).
        stream: ``"stream": true``.
    """

    model: str
    body: dict[str, Any]
    stream: bool


def parse_responses_request(body: Any) -> ResponsesRequest | web.Response:
    """Validate a Responses body as the API does (the fields the mock reads); a 400 response when invalid."""
    if not isinstance(body, dict):
        return invalid_request(BAD_JSON_MESSAGE)
    failure = _check(body)
    if failure is not None:
        return failure
    return ResponsesRequest(model=body["model"], body=body, stream=body.get("stream") is True)


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], frozenset[str], str | None, bool]:
    """The function and custom tools, the custom tools' names, the forced tool, and whether tools are disabled."""
    tools: list[Tool] = []
    custom: set[str] = set()
    for tool in body.get("tools") or []:
        if tool["type"] == "function":
            tools.append(Tool(tool["name"], tool.get("parameters")))
        elif tool["type"] == "custom":
            tools.append(Tool(tool["name"], None))
            custom.add(tool["name"])
    choice = body.get("tool_choice")
    forced = choice.get("name") if isinstance(choice, dict) and choice.get("type") in ("function", "custom") else None
    return tuple(tools), frozenset(custom), forced, choice == "none"


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p["text"] for p in output if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_results(items: list[Any]) -> tuple[str, ...] | None:
    """The outputs of the trailing tool output items, when the input ends with some."""
    results: list[str] = []
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("type") not in OUTPUT_ITEMS:
            break
        results.insert(0, _output_text(item.get("output")))
    return tuple(results) if results else None


def _json_schema(body: dict[str, Any]) -> Any:
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        return text_format.get("schema")
    return None


def responses_turn(request: ResponsesRequest, reply_words: int) -> tuple[Turn, frozenset[str]]:
    """Read a validated request into a :class:`Turn`; also return the names of its custom tools."""
    body = request.body
    tools, custom, forced, disabled = _tools(body)
    reasoning = body.get("reasoning")
    thinking = isinstance(reasoning, dict) and reasoning.get("effort") not in ("none", "minimal")
    turn = Turn(
        model=request.model,
        prompt_tokens=count_responses_tokens(body),
        limit=body.get("max_output_tokens"),
        tools=tools,
        forced_tool=forced,
        tools_disabled=disabled,
        tool_results=_tool_results(_input_items(body.get("input"))),
        thinking=thinking,
        reply_words=reply_words,
        json_schema=_json_schema(body),
    )
    return turn, custom


def _fault_error(model: str) -> web.Response | None:
    """The error a ``fail-NNN`` / ``prompt-too-long`` / ``redirect-3NN`` model asks for (OpenAI's error shape)."""
    if FAULT_PROMPT_TOO_LONG in model:
        return invalid_request(PROMPT_TOO_LONG_MESSAGE, param="input", code="context_length_exceeded")
    return openai_fault_error(model)


class ResponsesWire:
    """``POST /v1/responses``, answering through an :class:`~.openai.OpenAIWire` (its key check and recording)."""

    def __init__(self, wire: OpenAIWire) -> None:
        """Answer through ``wire``."""
        self.wire = wire

    @property
    def state(self) -> MockState:
        """The shared mock state."""
        return self.wire.state

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/responses`` (a ``response`` object, or its SSE events)."""
        body, failure = await self.wire.prologue(request)
        if failure is not None:
            return failure
        parsed = parse_responses_request(body)
        if isinstance(parsed, web.Response):
            return parsed
        model = parsed.model
        waited = await self.state.wait_faults(request, model)
        if waited is not None:
            return waited
        fault = _fault_error(self.state.fault_model(model, request))
        if fault is not None:
            return fault
        turn, custom = responses_turn(parsed, self.state.options.reply_words)
        answer = Answer(model, parsed.body, plan_reply(turn), self.state.created(), custom)
        cut = FAULT_CUT_STREAM in model
        if parsed.stream:
            frames = stream_frames(answer, cut=cut, error=FAULT_STREAM_ERROR in model)
            return await self.state.write_stream(request, model, frames, cut=cut)
        if cut:
            return abort_connection(request)
        return json_response(response_object(answer))
