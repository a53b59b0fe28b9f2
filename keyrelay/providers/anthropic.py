"""The Anthropic Messages wire as keyrelay speaks it to an upstream: request body, response, stream, usage, errors.

Wire format: https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming. The stream decoder turns each SSE event
into canonical events; usage from ``message_start`` and ``message_delta`` is merged (both hold totals).
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.anthropic import thinking_block, tool_input
from keyrelay.protocols.canonical import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    Finish,
    ImagePart,
    Message,
    MessageStart,
    Part,
    Role,
    SignatureDelta,
    StopReason,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ToolArgumentsDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
    UsageUpdate,
)
from keyrelay.protocols.sse import SSEDecoder
from keyrelay.providers.failure import FailureClass, status_class

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "EFFORT_BUDGETS",
    "AnthropicStreamDecoder",
    "anthropic_response_to_canonical",
    "anthropic_usage",
    "canonical_to_anthropic_request",
    "upstream_error",
]

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when the client gave no output bound
MIN_THINKING_BUDGET = 1024  # Anthropic: "thinking.budget_tokens: Input should be greater than or equal to 1024"
# OpenAI reasoning_effort → Anthropic thinking.budget_tokens ("minimal" and "none" turn thinking off).
EFFORT_BUDGETS = {"minimal": 0, "none": 0, "low": 1024, "medium": 4096, "high": 16384}

_STOP_REASONS = {
    "end_turn": StopReason.STOP,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "max_tokens": StopReason.LENGTH,
    "model_context_window_exceeded": StopReason.LENGTH,
    "tool_use": StopReason.TOOL_CALLS,
    "refusal": StopReason.CONTENT_FILTER,
}


def _invalid(message: str, field: str) -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, message, field=field)


def _upstream(message: str) -> GatewayError:
    return GatewayError(ErrorType.UPSTREAM_ERROR, f"The Anthropic upstream answered an unexpected body: {message}.")


# --- request --------------------------------------------------------------------------------------


def _image_block(part: ImagePart, field: str) -> dict[str, Any]:
    if part.data is not None:
        if not part.media_type:
            raise _invalid(f"{field}: an image needs its media type for Anthropic.", field)
        return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}
    url = part.url or ""
    if url.startswith("data:"):
        # data:<media type>;base64,<data> (RFC 2397), as OpenAI clients send inline images
        head, comma, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not comma or encoding != "base64" or not media_type:
            raise _invalid(f"{field}: only base64 data URLs can be sent to Anthropic.", field)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if not url:
        raise _invalid(f"{field}: an image has neither data nor a URL.", field)
    return {"type": "image", "source": {"type": "url", "url": url}}


def _result_block(part: ToolResultPart, field: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": p.text} if isinstance(p, TextPart) else _image_block(p, f"{field}.content[{k}]")
        for k, p in enumerate(part.content)
    ]
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.tool_call_id, "content": content}
    if part.is_error:
        block["is_error"] = True
    return block


def _block(part: Part, role: Role, field: str) -> dict[str, Any] | None:
    """One part → a content block (None: an unsigned thinking part, which Anthropic would reject)."""
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ImagePart() if role is Role.USER:
            return _image_block(part, field)
        case ToolCallPart(id=call_id, name=name, arguments=arguments) if role is Role.ASSISTANT:
            try:
                arguments_object = tool_input(arguments)
            except ValueError as exc:
                raise _invalid(f"{field}: tool call {exc}.", field) from None
            return {"type": "tool_use", "id": call_id, "name": name, "input": arguments_object}
        case ToolResultPart() if role is Role.TOOL:
            return _result_block(part, field)
        case ThinkingPart(signature=signature, redacted=redacted) if role is Role.ASSISTANT:
            return thinking_block(part) if signature or redacted is not None else None
    raise _invalid(f"{field}: a {type(part).__name__} in a {role} message cannot be sent to Anthropic.", field)


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """Canonical messages → Anthropic turns: tool results are user turns; same-role neighbours merge."""
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        blocks = [
            block
            for j, part in enumerate(message.parts)
            if (block := _block(part, message.role, f"messages[{i}].content[{j}]")) is not None
        ]
        if not blocks:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _thinking(req: ChatRequest, max_tokens: int) -> dict[str, Any] | None:
    reasoning = req.reasoning
    if reasoning is None:
        return None
    budget = reasoning.budget_tokens
    if budget is None and reasoning.effort is not None:
        if reasoning.effort not in EFFORT_BUDGETS:
            raise _invalid(f"reasoning effort {reasoning.effort!r} has no Anthropic thinking budget.", "reasoning")
        # OpenAI's output bound includes the reasoning: the budget takes at most half of max_tokens (never
        # below Anthropic's minimum), so that thinking cannot leave the answer without room.
        budget = min(EFFORT_BUDGETS[reasoning.effort], max(max_tokens // 2, MIN_THINKING_BUDGET))
        if budget == 0:
            return None
    if budget is None:
        return None
    if budget < MIN_THINKING_BUDGET or budget >= max_tokens:
        raise _invalid(
            f"Anthropic needs a thinking budget of at least {MIN_THINKING_BUDGET} tokens, below max_tokens "
            f"({max_tokens}); this request gives {budget}.",
            "reasoning",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _tool_choice(req: ChatRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None:
        return None
    out: dict[str, Any]
    if choice.mode == "tool":
        out = {"type": "tool", "name": choice.name}
    else:
        out = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice.mode]}
    if choice.parallel is not None and choice.mode != "none":
        out["disable_parallel_tool_use"] = not choice.parallel
    return out


def _output_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``json_schema`` response format → Anthropic's structured outputs, ``output_config.format``.

    https://platform.claude.com/docs/en/build-with-claude/structured-outputs (``{"type": "json_schema",
    "schema": ...}``). Anthropic has no JSON mode without a schema: ``json_object`` is refused.
    """
    if response_format.get("type") != "json_schema":
        raise _invalid(
            "Anthropic takes structured output with a JSON schema only (json_schema), not json_object.",
            "response_format",
        )
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise _invalid("Anthropic needs the JSON schema of the answer (json_schema.schema).", "response_format")
    return {"type": "json_schema", "schema": schema}


def _refuse_untranslatable(req: ChatRequest) -> None:
    if req.n != 1:
        raise _invalid("Anthropic answers one choice: n must be 1.", "n")
    if req.temperature is not None and not 0 <= req.temperature <= 1:
        raise _invalid("Anthropic takes a temperature from 0 to 1.", "temperature")


def canonical_to_anthropic_request(
    req: ChatRequest, upstream_model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> bytes:
    """The Messages body for an Anthropic upstream.

    Args:
        req: The canonical request.
        upstream_model: The upstream's model id.
        default_max_tokens: ``max_tokens`` when the client gave none (Anthropic requires it).

    Raises:
        GatewayError: INVALID_REQUEST naming a field Anthropic cannot take.
    """
    _refuse_untranslatable(req)
    max_tokens = req.max_tokens or default_max_tokens
    body: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens, "messages": _turns(req.messages)}
    if req.system:
        body["system"] = [{"type": "text", "text": part.text} for part in req.system]
    if req.stop:
        body["stop_sequences"] = req.stop
    for name in ("temperature", "top_p", "top_k"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description is not None else {}),
                "input_schema": tool.parameters or {"type": "object", "properties": {}},
            }
            for tool in req.tools
        ]
    if (choice := _tool_choice(req)) is not None:
        body["tool_choice"] = choice
    if (thinking := _thinking(req, max_tokens)) is not None:
        body["thinking"] = thinking
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.response_format is not None:
        body["output_config"] = {"format": _output_format(req.response_format)}
    return orjson.dumps(body)


# --- usage and errors -----------------------------------------------------------------------------


def _count(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def anthropic_usage(obj: object) -> Usage | None:
    """Usage from an Anthropic usage object: prompt = input + cache writes + cache reads (counted once each).

    ``output_tokens_details.thinking_tokens``, where sent, is the reasoning part of ``output_tokens``.
    """
    if not isinstance(obj, dict) or not any(isinstance(obj.get(k), int) for k in ("input_tokens", "output_tokens")):
        return None
    write = _count(obj, "cache_creation_input_tokens")
    read = _count(obj, "cache_read_input_tokens")
    details = obj.get("output_tokens_details")
    reasoning = _count(details, "thinking_tokens") if isinstance(details, dict) else 0
    return Usage(
        prompt_tokens=_count(obj, "input_tokens") + write + read,
        completion_tokens=_count(obj, "output_tokens"),
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
    )


def upstream_error(body: bytes) -> tuple[str, str | None]:
    """The message (≤ 500 characters) and ``error.type`` of an Anthropic error body, else its text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return error["message"][:500], kind if isinstance(kind, str) else None
    return body.decode("utf-8", "replace").strip()[:500], None


def failure_class(status: int, message: str, kind: str | None) -> FailureClass:
    """The routing class of an Anthropic error answer (``kind``: its ``error.type``; see ``providers/failure.py``).

    Anthropic answers an account out of credit with 400 ``invalid_request_error`` "Your credit balance is too
    low to access the Anthropic API" (and ``billing_error``): the gateway's account, not the caller's request.
    """
    if kind == "billing_error" or (status == 400 and "credit balance is too low" in message):
        return FailureClass.CREDENTIAL
    return status_class(status)


# --- response -------------------------------------------------------------------------------------


def _part(block: object) -> Part | None:
    """A response content block → a part (None: a block type keyrelay does not carry, e.g. server tools)."""
    if not isinstance(block, dict):
        raise _upstream("a content block is not an object")
    kind = block.get("type")
    try:
        if kind == "text":
            return TextPart(_str(block["text"]))
        if kind == "tool_use":
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise _upstream("a tool_use input is not an object")
            return ToolCallPart(_str(block["id"]), _str(block["name"]), orjson.dumps(arguments).decode())
        if kind == "thinking":
            return ThinkingPart(_str(block["thinking"]), _str(block.get("signature") or "") or None)
        if kind == "redacted_thinking":
            return ThinkingPart("", redacted=_str(block["data"]))
    except KeyError as exc:
        raise _upstream(f"a {kind} block has no {exc.args[0]}") from None
    return None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise _upstream("a string field holds another type")
    return value


def anthropic_response_to_canonical(payload: bytes) -> ChatResponse:
    """A Messages response body → ChatResponse.

    Raises:
        GatewayError: UPSTREAM_ERROR when the body is not a Message.
    """
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _upstream("not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise _upstream("no content array")
    parts = [part for block in body["content"] if (part := _part(block)) is not None]
    reason = body.get("stop_reason")
    sequence = body.get("stop_sequence")
    return ChatResponse(
        id=body["id"] if isinstance(body.get("id"), str) else "",
        model=body["model"] if isinstance(body.get("model"), str) else "",
        parts=parts,
        stop_reason=_STOP_REASONS.get(reason, StopReason.OTHER) if isinstance(reason, str) else None,
        usage=anthropic_usage(body.get("usage")),
        stop_sequence=sequence if isinstance(sequence, str) else None,
    )


# --- stream ---------------------------------------------------------------------------------------


class AnthropicStreamDecoder:
    """An Anthropic upstream's SSE stream → canonical events; one per request.

    Unknown event types and ``ping`` are ignored; so are content blocks keyrelay does not carry (server
    tool blocks) and their deltas, and ``citations_delta``. Block indices are renumbered densely.
    """

    __slots__ = ("_sse", "_raw_usage", "_usage", "_complete", "_output_bytes", "_blocks", "_next")

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._raw_usage: dict[str, Any] = {}
        self._usage: Usage | None = None
        self._complete = False
        self._output_bytes = 0
        self._blocks: dict[int, int] = {}  # upstream block index → canonical index
        self._next = 0

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (message_start merged with every message_delta)."""
        return self._usage

    @property
    def complete(self) -> bool:
        """Whether ``message_stop`` was seen."""
        return self._complete

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of text, thinking, tool names and arguments so far."""
        return self._output_bytes

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events completed by this read."""
        blocks = self._sse.feed(chunk)
        return self._decode(blocks) if blocks else []

    def end(self) -> list[StreamEvent]:
        """Events of a last event that lacked its blank line."""
        rest = self._sse.flush()
        return self._decode(rest + b"\n\n") if rest.strip() else []

    def _decode(self, blocks: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for sse in self._sse.events(blocks):
            try:
                data = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                out.append(StreamError("The Anthropic upstream sent an event that is not JSON."))
                continue
            if isinstance(data, dict):
                try:
                    self._event(data, out)
                except (KeyError, TypeError, ValueError, AttributeError, GatewayError):
                    out.append(StreamError(f"The Anthropic upstream sent a malformed {sse.event} event."))
        return out

    def _merge_usage(self, usage: object, out: list[StreamEvent]) -> None:
        if not isinstance(usage, dict):
            return
        # Totals so far: a field present overrides, an absent one keeps its message_start value.
        self._raw_usage.update((k, v) for k, v in usage.items() if v is not None)
        merged = anthropic_usage(self._raw_usage)
        if merged is not None:
            self._usage = merged
            out.append(UsageUpdate(merged))

    def _event(self, data: dict[str, Any], out: list[StreamEvent]) -> None:
        kind = data.get("type")
        if kind == "content_block_delta":
            self._delta(data, out)
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "content_block_stop":
            index = self._blocks.pop(data["index"], None)
            if index is not None:
                out.append(BlockStop(index))
        elif kind == "message_start":
            message = data["message"]
            self._merge_usage(message.get("usage"), [])
            out.append(MessageStart(str(message.get("id", "")), str(message.get("model", "")), self._usage))
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            reason = delta.get("stop_reason")
            if isinstance(reason, str):
                sequence = delta.get("stop_sequence")
                stop_sequence = sequence if isinstance(sequence, str) and sequence else None
                out.append(Finish(_STOP_REASONS.get(reason, StopReason.OTHER), stop_sequence))
            self._merge_usage(data.get("usage"), out)
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error":
            error = data.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            out.append(StreamError(str(message)[:500] if message else "The Anthropic upstream reported an error."))

    def _block_start(self, data: dict[str, Any], out: list[StreamEvent]) -> None:
        block = data["content_block"]
        kind = block.get("type")
        part: TextPart | ThinkingPart | ToolCallPart
        if kind == "text":
            part = TextPart("")
        elif kind == "thinking":
            part = ThinkingPart("")
        elif kind == "redacted_thinking":
            part = ThinkingPart("", redacted=_str(block["data"]))
        elif kind == "tool_use":
            part = ToolCallPart(_str(block["id"]), _str(block["name"]), "")
            self._output_bytes += len(part.name.encode())
        else:
            return  # a server tool block (server_tool_use, web_search_tool_result, ...): not carried
        index = self._next
        self._next += 1
        self._blocks[int(data["index"])] = index
        out.append(BlockStart(index, part))
        initial = block.get("text") or block.get("thinking")
        if isinstance(initial, str) and initial:
            out.append(TextDelta(index, initial) if kind == "text" else ThinkingDelta(index, initial))
            self._output_bytes += len(initial.encode())
        if kind == "tool_use" and block.get("input"):
            arguments = orjson.dumps(block["input"]).decode()
            self._output_bytes += len(arguments)
            out.append(ToolArgumentsDelta(index, arguments))

    def _delta(self, data: dict[str, Any], out: list[StreamEvent]) -> None:
        index = self._blocks.get(data["index"])
        if index is None:
            return
        delta = data["delta"]
        kind = delta.get("type")
        if kind == "text_delta":
            text = _str(delta["text"])
            out.append(TextDelta(index, text))
        elif kind == "input_json_delta":
            text = _str(delta["partial_json"])
            out.append(ToolArgumentsDelta(index, text))
        elif kind == "thinking_delta":
            text = _str(delta["thinking"])
            out.append(ThinkingDelta(index, text))
        elif kind == "signature_delta":
            out.append(SignatureDelta(index, _str(delta["signature"])))
            return
        else:
            return  # citations_delta and future delta types
        self._output_bytes += len(text.encode())
