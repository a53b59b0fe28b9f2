"""What the mock model answers, whatever the wire: text, tool calls, thinking, stop reasons and token counts.

Each wire module reads its request into a :class:`Turn` and renders the :class:`Plan` that :func:`plan_reply`
returns, so the three wires behave the same:

* a plain reply is :data:`~.core.REPLY_TEXT` cycled to ``reply_words`` words, one token (and one streamed chunk)
  per word; the output limit cuts it (finish ``length``), a stop sequence cuts it before the sequence (finish
  ``stop_sequence``);
* when tools are offered (and not disabled by the tool choice) and the conversation does not end with tool
  results, the model calls a tool -- the forced one, else the first -- with arguments built from the tool's JSON
  schema (:func:`arguments_for`); a model name containing ``parallel`` calls two tools in one turn;
* when the conversation ends with tool results, the reply is ``The tool returned: <first result>`` (cut to
  :data:`TOOL_RESULT_QUOTE` characters);
* when thinking is requested, :data:`THINKING_TEXT` (one token per word) comes before the answer, signed with
  :func:`thinking_signature`;
* when structured output is requested (:attr:`Turn.json_schema`, a JSON schema), the answer is the compact JSON of
  :func:`arguments_for` of that schema, in one piece (one token), and no tool is called (finish ``stop``; only an
  output limit used up by thinking cuts it);
* a model name containing ``cache-hit`` reads half the prompt tokens (rounded down) from the cache,
  ``cache-write`` writes half of them to it; ``safety`` and ``blocked-prompt`` give an empty, filtered answer.

Output tokens: one per text chunk, one per thinking word, and ``ceil(len(name + arguments_json) / 4)`` per tool
call; the limit cuts the text only (thinking and tool calls are never cut).
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from keyrelay.testing.mock_upstream.core import reply_words

THINKING_TEXT: Final = "The user wants a short answer, so a short answer it is."
"""The mock model's thinking, when thinking is requested (one token per word)."""
TOOL_RESULT_QUOTE: Final = 200
FAULT_PARALLEL: Final = "parallel"
FAULT_CACHE_HIT: Final = "cache-hit"
FAULT_CACHE_WRITE: Final = "cache-write"
FAULT_SAFETY: Final = "safety"
FAULT_BLOCKED_PROMPT: Final = "blocked-prompt"
_SCHEMA_DEPTH: Final = 8

Finish = Literal["stop", "length", "stop_sequence", "tool_calls", "safety"]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool offered by the request: its name and its JSON schema (any JSON value; not a dict means none)."""

    name: str
    schema: Any


@dataclass(frozen=True, slots=True)
class Turn:
    """The wire-independent view of a generation request.

    Attributes:
        model: The requested model id (faults and behaviours are chosen by substrings of it).
        prompt_tokens: The prompt's token count (the wire's count_tokens gives the same number).
        limit: The output token limit, if any.
        stop: The stop sequences.
        tools: The tools offered, in order.
        forced_tool: The tool the tool choice forces, if any.
        tools_disabled: The tool choice forbids tool calls.
        tool_results: When the conversation ends with tool results: their texts, else ``None``.
        thinking: Thinking was requested.
        reply_words: Words of the plain reply (``MockOptions.reply_words``).
        json_schema: The JSON schema structured output asks for (a dict), else ``None``: the answer is then the
            compact JSON of :func:`arguments_for` of it, and no tool is called.
    """

    model: str
    prompt_tokens: int
    limit: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    forced_tool: str | None = None
    tools_disabled: bool = False
    tool_results: tuple[str, ...] | None = None
    thinking: bool = False
    reply_words: int = 9
    json_schema: Any = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of the reply: the tool's name and its arguments (as an object and as compact JSON)."""

    name: str
    arguments: dict[str, Any]
    arguments_json: str

    def pieces(self, count: int = 3) -> list[str]:
        """The arguments' JSON cut into ``count`` pieces (fewer when it is shorter), as streamed deltas."""
        text = self.arguments_json
        size = max(math.ceil(len(text) / count), 1)
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass(slots=True)
class Plan:
    """What to answer.

    Attributes:
        thinking: The thinking text ("" when none).
        pieces: The answer text, one piece per streamed chunk (and per output token).
        tool_calls: The tool calls, in order.
        finish: Why the reply ended.
        stop_sequence: The stop sequence that ended it, for ``finish == "stop_sequence"``.
        prompt_tokens: Every prompt token, cached ones included.
        cached_tokens: Prompt tokens read from the cache.
        cache_write_tokens: Prompt tokens written to the cache.
        thinking_tokens: Output tokens spent thinking.
        output_tokens: Every output token, thinking included.
    """

    thinking: str = ""
    pieces: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: Finish = "stop"
    stop_sequence: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    thinking_tokens: int = 0
    output_tokens: int = 0

    @property
    def text(self) -> str:
        """The whole answer text."""
        return "".join(self.pieces)

    @property
    def signature(self) -> str:
        """The thinking's signature."""
        return thinking_signature(self.thinking)


def thinking_signature(thinking: str) -> str:
    """A deterministic, opaque base64 signature of ``thinking`` (as the providers send with thinking blocks)."""
    return base64.b64encode(b"kr-mock-thinking:" + hashlib.sha256(thinking.encode()).digest()).decode("ascii")


def arguments_for(schema: Any, depth: int = 0) -> dict[str, Any]:
    """Arguments for a tool with JSON schema ``schema``: each required property gets a value of its type.

    string -> ``"x"``, number and integer -> ``1``, boolean -> ``true``, array -> ``[]`` (one item when
    ``minItems`` >= 1), object -> its own required properties, null -> ``null``; an ``enum`` or ``const`` gives its
    (first) value. Gemini's upper-case type names are understood. Any other JSON gives ``{}``, never an error.
    """
    if not isinstance(schema, dict) or depth > _SCHEMA_DEPTH:
        return {}
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(required, list):
        return {}
    props = properties if isinstance(properties, dict) else {}
    return {name: _value_for(props.get(name), depth + 1) for name in required if isinstance(name, str)}


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if isinstance(k, str) and k.lower() != "null"), "null")
    return kind.lower() if isinstance(kind, str) else "string"


def _value_for(schema: Any, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _SCHEMA_DEPTH:
        return "x"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _value_for(options[0], depth + 1)
    match _schema_type(schema):
        case "number" | "integer":
            return 1
        case "boolean":
            return True
        case "null":
            return None
        case "object":
            return arguments_for(schema, depth)
        case "array":
            min_items = schema.get("minItems")
            wanted = isinstance(min_items, int) and not isinstance(min_items, bool) and min_items >= 1
            return [_value_for(schema.get("items"), depth + 1)] if wanted else []
        case _:
            return "x"


def _tool_calls(turn: Turn) -> list[ToolCall]:
    if not turn.tools or turn.tools_disabled or turn.tool_results is not None:
        return []
    names = [tool.name for tool in turn.tools]
    first = names.index(turn.forced_tool) if turn.forced_tool in names else 0
    chosen = [turn.tools[first]]
    if FAULT_PARALLEL in turn.model:
        chosen.append(turn.tools[(first + 1) % len(turn.tools)])
    calls = []
    for tool in chosen:
        arguments = arguments_for(tool.schema)
        calls.append(ToolCall(tool.name, arguments, orjson.dumps(arguments).decode()))
    return calls


def _words_to_pieces(words: list[str]) -> list[str]:
    last = len(words) - 1
    return [word if index == last else word + " " for index, word in enumerate(words)]


def _apply_stop(pieces: list[str], stop: tuple[str, ...]) -> tuple[list[str], str | None]:
    text = "".join(pieces)
    hits = [(text.find(seq), seq) for seq in stop if seq and seq in text]
    if not hits:
        return pieces, None
    cut, seq = min(hits)
    kept: list[str] = []
    seen = 0
    for piece in pieces:
        if seen >= cut:
            break
        kept.append(piece[: cut - seen])
        seen += len(piece)
    return [piece for piece in kept if piece], seq


def _answer_pieces(turn: Turn) -> tuple[list[str], str | None]:
    """The answer's text pieces before the output limit, and the stop sequence that cut them, if any."""
    if isinstance(turn.json_schema, dict):
        return [orjson.dumps(arguments_for(turn.json_schema)).decode()], None
    if turn.tool_results is not None:
        quoted = (turn.tool_results[0] if turn.tool_results else "")[:TOOL_RESULT_QUOTE]
        words = f"The tool returned: {quoted}".split(" ")
    else:
        words = reply_words(turn.reply_words)
    return _apply_stop(_words_to_pieces(words), turn.stop)


def plan_reply(turn: Turn) -> Plan:
    """Decide the reply to ``turn`` (see the module docstring for the rules)."""
    model = turn.model
    prompt = turn.prompt_tokens
    plan = Plan(prompt_tokens=prompt)
    if FAULT_CACHE_HIT in model:
        plan.cached_tokens = prompt // 2
    if FAULT_CACHE_WRITE in model:
        plan.cache_write_tokens = prompt // 2
    if FAULT_SAFETY in model or FAULT_BLOCKED_PROMPT in model:
        plan.finish = "safety"
        return plan
    if turn.thinking:
        plan.thinking = THINKING_TEXT
        plan.thinking_tokens = len(THINKING_TEXT.split(" "))
    plan.tool_calls = [] if isinstance(turn.json_schema, dict) else _tool_calls(turn)
    if plan.tool_calls:
        plan.finish = "tool_calls"
    else:
        pieces, plan.stop_sequence = _answer_pieces(turn)
        if plan.stop_sequence is not None:
            plan.finish = "stop_sequence"
        room = None if turn.limit is None else max(turn.limit - plan.thinking_tokens, 0)
        if room is not None and len(pieces) > room:
            pieces, plan.finish, plan.stop_sequence = pieces[:room], "length", None
            if pieces:
                pieces[-1] = pieces[-1].rstrip(" ") or pieces[-1]
        plan.pieces = pieces
    tool_tokens = sum(math.ceil(len((call.name + call.arguments_json).encode()) / 4) for call in plan.tool_calls)
    plan.output_tokens = plan.thinking_tokens + len(plan.pieces) + tool_tokens
    return plan
