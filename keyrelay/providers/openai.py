"""keyrelay calling an OpenAI or OpenAI-compatible upstream for a client of another wire (Anthropic, Gemini).

Canonical request → Chat Completions body; answer body → ``ChatResponse``; usage and error bodies. The
stream side is ``OpenAIStreamDecoder`` in ``providers/openai_decode.py``. Reference:
https://platform.openai.com/docs/api-reference/chat and the ``openai`` SDK's ``types/chat``.

Lossy but documented: thinking in the assistant history is dropped (OpenAI takes no reasoning back);
several system parts are joined with a blank line into one system message; a tool result's ``is_error``
has no place; a reasoning budget becomes a ``reasoning_effort`` word (``effort_for_budget``).
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
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
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from keyrelay.providers.failure import FailureClass, status_class

__all__ = [
    "STOP_REASONS",
    "canonical_to_openai_request",
    "effort_for_budget",
    "openai_response_to_canonical",
    "openai_usage",
    "upstream_error",
]

# OpenAI finish_reason → canonical (canonical.StopReason's table); anything else is OTHER.
STOP_REASONS: dict[str, StopReason] = {
    "stop": StopReason.STOP,
    "length": StopReason.LENGTH,
    "tool_calls": StopReason.TOOL_CALLS,
    "function_call": StopReason.TOOL_CALLS,
    "content_filter": StopReason.CONTENT_FILTER,
}
# Thinking budget (tokens) → reasoning_effort: the largest budget each word stands for.
_EFFORT_BUDGETS = ((2_048, "low"), (8_192, "medium"))


def _invalid(message: str, field: str) -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, message, field=field)


def effort_for_budget(reasoning: Reasoning) -> str | None:
    """The ``reasoning_effort`` for a canonical reasoning request.

    An ``effort`` word is sent as it is. A budget maps by size: 1–2,048 tokens ``low``, up to 8,192
    ``medium``, more ``high``; 0 (thinking off) and negative budgets (Gemini's -1, "dynamic") send no
    ``reasoning_effort``, leaving the model its default.
    """
    if reasoning.effort is not None:
        return reasoning.effort
    budget = reasoning.budget_tokens
    if budget is None or budget <= 0:
        return None
    return next((word for ceiling, word in _EFFORT_BUDGETS if budget <= ceiling), "high")


def _image_url(part: ImagePart, field: str) -> dict[str, object]:
    if part.url is not None:
        url = part.url
    elif part.data is not None and part.media_type:
        url = f"data:{part.media_type};base64,{part.data}"
    else:
        raise _invalid("An image needs a URL, or data with its media type.", field)
    image: dict[str, object] = {"url": url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _user(message: Message, field: str) -> dict[str, object]:
    content: list[dict[str, object]] = []
    for i, part in enumerate(message.parts):
        match part:
            case TextPart(text=text):
                content.append({"type": "text", "text": text})
            case ImagePart():
                content.append(_image_url(part, f"{field}.content[{i}]"))
            case _:
                raise _invalid(f"A user message cannot hold a {type(part).__name__}.", f"{field}.content[{i}]")
    body: dict[str, object] = {"role": "user"}
    # A plain string where it is only text: every OpenAI-compatible server takes that form.
    body["content"] = content[0]["text"] if len(content) == 1 and content[0]["type"] == "text" else content
    if message.name is not None:
        body["name"] = message.name
    return body


def _assistant(message: Message, field: str) -> dict[str, object]:
    texts: list[str] = []
    calls: list[dict[str, object]] = []
    for i, part in enumerate(message.parts):
        match part:
            case TextPart(text=text):
                texts.append(text)
            case ToolCallPart(id=call_id, name=name, arguments=arguments):
                calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
            case ThinkingPart():
                pass  # OpenAI takes no reasoning back in the history (documented)
            case _:
                raise _invalid(
                    f"An assistant message cannot hold a {type(part).__name__} on OpenAI.", f"{field}.content[{i}]"
                )
    body: dict[str, object] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        body["tool_calls"] = calls
    if message.name is not None:
        body["name"] = message.name
    return body


def _tool_results(message: Message, field: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i, part in enumerate(message.parts):
        if not isinstance(part, ToolResultPart):
            raise _invalid(f"A tool message holds only tool results, not a {type(part).__name__}.", f"{field}[{i}]")
        texts: list[str] = []
        for j, item in enumerate(part.content):
            if not isinstance(item, TextPart):
                raise _invalid(
                    "An image in a tool result is not supported when this model is served by an OpenAI upstream.",
                    f"{field}[{i}].content[{j}]",
                )
            texts.append(item.text)
        content: object = "".join(texts) if len(texts) < 2 else [{"type": "text", "text": t} for t in texts]
        out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": content})
    return out


def _messages(req: ChatRequest) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(part.text for part in req.system)})
    for i, message in enumerate(req.messages):
        field = f"messages[{i}]"
        match message.role:
            case Role.USER:
                out.append(_user(message, field))
            case Role.ASSISTANT:
                out.append(_assistant(message, field))
            case Role.TOOL:
                out.extend(_tool_results(message, field))
    return out


def _tool_choice(choice: ToolChoice) -> object:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def canonical_to_openai_request(req: ChatRequest, upstream_model: str, *, extensions: bool = False) -> bytes:
    """The Chat Completions body for an OpenAI(-compatible) upstream.

    Args:
        req: The canonical request.
        upstream_model: The model id the upstream knows.
        extensions: The upstream is ``openai-compatible``: ``top_k`` is sent as the ``top_k`` extension field
            that vLLM, SGLang and llama.cpp read. OpenAI itself refuses unknown fields.

    Raises:
        GatewayError: INVALID_REQUEST naming the field OpenAI cannot express (``top_k`` toward ``openai``,
            ``n`` above 1, an image in a tool result).
    """
    if req.top_k is not None and not extensions:
        raise _invalid("top_k is not supported when this model is served by an OpenAI upstream.", "top_k")
    if req.n != 1:
        raise _invalid("More than one choice is not supported when translating to an OpenAI upstream.", "n")
    body: dict[str, Any] = {"model": upstream_model, "messages": _messages(req)}
    _sampling(body, req)
    _tools(body, req)
    if req.reasoning is not None and (effort := effort_for_budget(req.reasoning)) is not None:
        body["reasoning_effort"] = effort
    if req.response_format is not None:
        body["response_format"] = req.response_format
    if req.user is not None:
        body["user"] = req.user
    if req.top_k is not None:
        body["top_k"] = req.top_k
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # keyrelay bills by the usage chunk
    return orjson.dumps(body)


def _sampling(body: dict[str, Any], req: ChatRequest) -> None:
    if req.max_tokens is not None:
        body["max_completion_tokens"] = req.max_tokens  # max_tokens is deprecated, and refused by o-series models
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = req.stop


def _tools(body: dict[str, Any], req: ChatRequest) -> None:
    choice = req.tool_choice
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": _function(tool.name, tool.description, tool.parameters)}
            for tool in req.tools
        ]
        if choice is not None:
            body["tool_choice"] = _tool_choice(choice)
            if choice.parallel is not None:
                body["parallel_tool_calls"] = choice.parallel
    elif choice is not None and choice.mode in ("required", "tool"):
        # OpenAI refuses tool_choice and parallel_tool_calls without tools; "auto" and "none" mean nothing then.
        raise _invalid("tool_choice requires a tool, and the request has none.", "tool_choice")


def _function(name: str, description: str | None, parameters: dict[str, Any] | None) -> dict[str, object]:
    function: dict[str, object] = {"name": name}
    if description is not None:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return function


# --- answers --------------------------------------------------------------------------------------


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def openai_usage(obj: object) -> Usage | None:
    """``Usage`` from an OpenAI ``usage`` object; None when it is absent or malformed.

    ``prompt_tokens`` already includes cached tokens; ``prompt_tokens_details.cached_tokens`` is the part
    read from the cache (``cache_write_tokens``, where a server reports it, the part written), and
    ``completion_tokens_details.reasoning_tokens`` the part of ``completion_tokens`` spent reasoning.
    """
    if not isinstance(obj, dict):
        return None
    prompt = _count(obj.get("prompt_tokens"))
    completion = _count(obj.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    prompt_details = obj.get("prompt_tokens_details")
    completion_details = obj.get("completion_tokens_details")
    cached = written = reasoning = 0
    if isinstance(prompt_details, dict):
        cached = _count(prompt_details.get("cached_tokens")) or 0
        written = _count(prompt_details.get("cache_write_tokens")) or 0
    if isinstance(completion_details, dict):
        reasoning = _count(completion_details.get("reasoning_tokens")) or 0
    return Usage(prompt, completion, False, min(cached, prompt), min(written, prompt), min(reasoning, completion))


def upstream_error(body: bytes) -> tuple[str, str | None]:
    """The upstream's own error message (cut to 500 characters) and ``error.code`` string.

    Pass a body already scrubbed of secrets (``SecretScrubber.data``): the message is cut here, and a secret
    cut in two could no longer be recognised.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace"), None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return body[:200].decode("utf-8", "replace"), None
    code = error.get("code")
    return str(error.get("message", ""))[:500], code if isinstance(code, str) and code.isidentifier() else None


# OpenAI error codes that mean the gateway's organisation is out of credit or barred, whatever the status
# (429 insufficient_quota: https://platform.openai.com/docs/guides/error-codes#api-errors).
_ACCOUNT_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "account_deactivated"}
)


def failure_class(status: int, message: str, code: str | None) -> FailureClass:
    """The routing class of an OpenAI error answer (``code``: its ``error.code``; see ``providers/failure.py``)."""
    if code in _ACCOUNT_CODES:
        return FailureClass.CREDENTIAL
    return status_class(status)


def _bad(what: str) -> GatewayError:
    return GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream's answer is not an OpenAI chat completion: {what}.")


def reasoning_text(message: dict[str, Any]) -> str | None:
    """Reasoning text of a message or delta: ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (OpenRouter)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return None


def tool_arguments(value: object) -> str:
    """Arguments as JSON text (a few servers send the parsed object instead of the string)."""
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value).decode()


def _parts(message: dict[str, Any]) -> list[Part]:
    parts: list[Part] = []
    reasoning = reasoning_text(message)
    if reasoning:
        parts.append(ThinkingPart(reasoning))
    content = message.get("content")
    if isinstance(content, list):  # a few servers answer with text parts
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(content, str) and content:
        parts.append(TextPart(content))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(TextPart(refusal))  # a refusal is text to the other wires (documented)
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"tool_calls[{i}] has no function name")
        call_id = call.get("id")
        parts.append(
            ToolCallPart(
                call_id if isinstance(call_id, str) else f"call_{i}",
                function["name"],
                tool_arguments(function.get("arguments")),
            )
        )
    return parts


def stop_reason(value: object) -> StopReason | None:
    """The canonical stop reason of an OpenAI ``finish_reason`` (None when there is none)."""
    if value is None:
        return None
    return STOP_REASONS.get(value, StopReason.OTHER) if isinstance(value, str) else StopReason.OTHER


def openai_response_to_canonical(payload: bytes) -> ChatResponse:
    """The first choice of a ``chat.completion`` body as a ``ChatResponse``.

    Raises:
        GatewayError: UPSTREAM_ERROR when the body is not a chat completion.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _bad("not JSON") from None
    if not isinstance(data, dict):
        raise _bad("not an object")
    if isinstance(data.get("error"), dict):
        raise GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream failed: {upstream_error(payload)[0]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _bad("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _bad("choices[0].message is missing")
    response_id, model, created = data.get("id"), data.get("model"), data.get("created")
    return ChatResponse(
        id=response_id if isinstance(response_id, str) else "",
        model=model if isinstance(model, str) else "",
        parts=_parts(message),
        stop_reason=stop_reason(choices[0].get("finish_reason")),
        usage=openai_usage(data.get("usage")),
        created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
    )
