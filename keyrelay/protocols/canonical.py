"""The canonical chat types every wire translates to and from: request, response, stream events, usage.

Close to OpenAI Chat Completions (https://platform.openai.com/docs/api-reference/chat), typed and
slotted, with the few things OpenAI's shape cannot hold (Anthropic thinking signatures, cache-write
tokens, stop sequences) as fields of their own. A translation is always ``<wire>_to_canonical`` then
``canonical_to_<wire>``; a request between the same wire never comes here (it is passed through).

Conventions every translator keeps:

- System prompts, wherever the client put them (Anthropic top-level ``system``, ``role: "system"``
  messages, OpenAI ``system``/``developer`` messages, Gemini ``systemInstruction``), are hoisted in
  order into ``ChatRequest.system``.
- Tool results are ``ToolResultPart`` in messages of role ``TOOL`` (one or more per message); text that a
  client sent beside them in the same turn follows as a ``USER`` message.
- Tool-call arguments are JSON text (OpenAI's ``arguments`` string), never a parsed object.
- A field that the target wire cannot express is refused with ``GatewayError(INVALID_REQUEST, field=...)``,
  never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple


class Role(StrEnum):
    """Who wrote a message (system prompts live in ``ChatRequest.system``, not here)."""

    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"  # holds ToolResultPart only


class StopReason(StrEnum):
    """Why the model stopped, mapped from each wire by a table in its translator.

    ========================  ===============  =================  ==========================
    canonical                 OpenAI           Anthropic          Gemini
    ========================  ===============  =================  ==========================
    STOP                      stop             end_turn           STOP
    STOP_SEQUENCE             stop             stop_sequence      STOP
    LENGTH                    length           max_tokens         MAX_TOKENS
    TOOL_CALLS                tool_calls       tool_use           STOP with a functionCall
    CONTENT_FILTER            content_filter   refusal            SAFETY, RECITATION, ...
    OTHER                     stop             pause_turn, ...    OTHER, MALFORMED_...
    ========================  ===============  =================  ==========================
    """

    STOP = "stop"
    STOP_SEQUENCE = "stop_sequence"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    OTHER = "other"


class Usage(NamedTuple):
    """Token counts of one request (a named tuple: immutable, and built in C on every stream event).

    ``prompt_tokens`` counts every input token, cached ones included (OpenAI's and Gemini's convention;
    Anthropic's ``input_tokens`` excludes them, so its translator adds ``cache_creation_input_tokens`` and
    ``cache_read_input_tokens``). ``cache_read_tokens`` and ``cache_write_tokens`` are the parts of it read
    from and written to a prompt cache. ``completion_tokens`` counts every output token, reasoning
    included; ``reasoning_tokens`` is the part of it spent thinking (Gemini's ``thoughtsTokenCount``,
    which Gemini reports outside ``candidatesTokenCount``, is added to it). ``estimated`` is set when the
    upstream reported nothing and keyrelay counted bytes.
    """

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_prompt_tokens(self) -> int:
        """Input tokens billed at the plain input price."""
        return max(0, self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens)


# --- content parts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextPart:
    """Plain text."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image: base64 ``data`` with its ``media_type``, or a ``url`` (only some wires take URLs).

    ``detail`` is OpenAI's ``low``/``high``/``auto`` hint, kept when the target is OpenAI.
    """

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A call the assistant makes: ``arguments`` is JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    """The result of a tool call, answering ``tool_call_id``; ``name`` is the tool's (Gemini needs it)."""

    tool_call_id: str
    content: tuple[TextPart | ImagePart, ...]
    name: str | None = None
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ThinkingPart:
    """Reasoning the model showed: ``text``, with Anthropic's ``signature`` when it has one.

    ``redacted`` holds the opaque ``data`` of an Anthropic ``redacted_thinking`` block (``text`` is empty).
    Gemini's ``thoughtSignature`` is carried in ``signature`` as well.
    """

    text: str
    signature: str | None = None
    redacted: str | None = None


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart | ThinkingPart


@dataclass(slots=True)
class Message:
    """One turn of the conversation."""

    role: Role
    parts: list[Part]
    name: str | None = None


# --- request --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON Schema (an object schema).

    ``free_form`` marks an OpenAI Responses ``custom`` tool, whose call carries one string rather than JSON
    arguments: it is offered to other wires as a function with one string parameter, ``input``
    (``FREE_FORM_PARAMETERS``), and its calls are turned back into ``custom_tool_call`` items.
    """

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    free_form: bool = False


FREE_FORM_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The whole input of the tool, as free-form text."}},
    "required": ["input"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """How the model must use tools.

    ``mode``: ``auto`` (may call), ``none`` (must not), ``required`` (must call one: OpenAI ``required``,
    Anthropic ``any``, Gemini ``ANY``) or ``tool`` (must call ``name``). ``parallel`` is False when the
    client forbade parallel calls (OpenAI ``parallel_tool_calls: false``, Anthropic
    ``disable_parallel_tool_use: true``), None when it did not say.
    """

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None
    parallel: bool | None = None


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Extended thinking the client asked for: a token ``budget_tokens`` and/or an ``effort`` word.

    ``effort`` is OpenAI's ``reasoning_effort`` (``minimal``, ``low``, ``medium``, ``high``); Anthropic's
    ``thinking.budget_tokens`` and Gemini's ``thinkingConfig.thinkingBudget`` are ``budget_tokens``.
    ``include_thoughts`` asks the upstream to return the thinking (Gemini ``includeThoughts``).
    """

    budget_tokens: int | None = None
    effort: str | None = None
    include_thoughts: bool = True


@dataclass(slots=True)
class ChatRequest:
    """A chat request in canonical form.

    ``max_tokens`` is the output ceiling the client gave (OpenAI ``max_completion_tokens`` or ``max_tokens``,
    Anthropic ``max_tokens``, Gemini ``generationConfig.maxOutputTokens``), None when it gave none.
    ``response_format`` is OpenAI's object (``{"type": "json_object"}`` or ``{"type": "json_schema", ...}``).
    """

    model: str
    messages: list[Message]
    system: list[TextPart] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage: the client wants the usage chunk
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    reasoning: Reasoning | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None  # OpenAI ``user``, Anthropic ``metadata.user_id``
    n: int = 1


# --- response -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ChatResponse:
    """One complete assistant answer (a single choice): its parts in order, why it stopped, its usage."""

    id: str
    model: str
    parts: list[Part]
    stop_reason: StopReason | None
    usage: Usage | None = None
    stop_sequence: str | None = None
    created: int = 0  # Unix seconds (OpenAI's ``created``)


# --- stream events --------------------------------------------------------------------------------
# A stream is: MessageStart, then for each content block BlockStart, deltas, BlockStop (blocks are
# numbered from 0 in order and do not interleave), then Finish, with UsageUpdate wherever the upstream
# reports usage (each one holds the totals so far: the last one wins). An upstream that does not frame
# blocks (OpenAI, Gemini) gets them from its decoder: a block closes when another kind begins.


@dataclass(frozen=True, slots=True)
class MessageStart:
    """The answer begins; ``usage`` is the input usage when the upstream reports it this early."""

    id: str
    model: str
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class BlockStart:
    """A content block begins.

    ``part`` is an empty ``TextPart``, a ``ThinkingPart``, or a ``ToolCallPart`` with its id and name (and
    empty arguments).
    """

    index: int
    part: TextPart | ThinkingPart | ToolCallPart


@dataclass(frozen=True, slots=True)
class TextDelta:
    """More text of a text block."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """More reasoning text of a thinking block."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class SignatureDelta:
    """The signature of a thinking block (Anthropic ``signature_delta``, Gemini ``thoughtSignature``)."""

    index: int
    signature: str


@dataclass(frozen=True, slots=True)
class ToolArgumentsDelta:
    """More JSON text of a tool call's arguments (concatenated, they form the arguments object)."""

    index: int
    partial_json: str


@dataclass(frozen=True, slots=True)
class BlockStop:
    """A content block is complete."""

    index: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The model stopped."""

    stop_reason: StopReason
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    """Usage totals so far (the last one is the request's usage)."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamError:
    """The upstream reported an error mid-stream; ``message`` is already scrubbed of secrets."""

    message: str


StreamEvent = (
    MessageStart
    | BlockStart
    | TextDelta
    | ThinkingDelta
    | SignatureDelta
    | ToolArgumentsDelta
    | BlockStop
    | Finish
    | UsageUpdate
    | StreamError
)


def tool_names(messages: list[Message]) -> dict[str, str]:
    """Tool-call id → tool name over a conversation (a wire whose results need the name, like Gemini's)."""
    names: dict[str, str] = {}
    for message in messages:
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                names[part.id] = part.name
    return names
