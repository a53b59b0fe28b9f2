"""The Gemini generateContent wire as keyrelay speaks it to an upstream: request, answer, stream, usage, errors.

Wire reference: https://ai.google.dev/api/generate-content. Requests are written in camelCase with
``parametersJsonSchema`` / ``responseJsonSchema`` (plain JSON Schema), so canonical schemas pass unchanged.
Refusals and lossy mappings are listed in docs/protocols.md.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
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
    tool_names,
)
from keyrelay.protocols.gemini_parts import call_args, field, function_call, gemini_usage, model_parts, stop_reason
from keyrelay.protocols.sse import SSEDecoder, parse_blocks
from keyrelay.providers.failure import FailureClass, status_class

__all__ = [
    "GeminiStreamDecoder",
    "canonical_to_gemini_request",
    "gemini_response_to_canonical",
    "gemini_usage",
    "upstream_error",
]

# Gemini 3 refuses a replayed functionCall without the signature it issued ("Function call is missing a
# thought_signature in functionCall parts"); for calls another provider made, Google documents this value
# (https://ai.google.dev/gemini-api/docs/thought-signatures). Gemini 2.x needs none.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_SIGNED_MODELS = re.compile(r"^(models/)?gemini-([3-9]|\d\d)")
# reasoning effort → Gemini 2.x thinkingBudget (2.5 Pro cannot turn thinking off: "none" asks the least).
EFFORT_BUDGET = {"none": 0, "minimal": 128, "low": 1024, "medium": 8192, "high": 24576}
# reasoning effort → Gemini 3 thinkingLevel.
EFFORT_LEVEL = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}
# Where Gemini can read a file by URI itself (keyrelay never fetches URLs).
_GEMINI_URIS = ("gs://", "https://generativelanguage.googleapis.com/")


def _invalid(message: str, path: str) -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, f"{path}: {message}", field=path)


# --- request ----------------------------------------------------------------------------------------


def canonical_to_gemini_request(req: ChatRequest, upstream_model: str) -> bytes:
    """The generateContent body for a canonical request (the same for ``:streamGenerateContent``).

    Raises:
        GatewayError: INVALID_REQUEST naming a field Gemini cannot express.
    """
    signed = bool(_SIGNED_MODELS.match(upstream_model))
    names = tool_names(req.messages)
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(req.messages):
        role = "model" if message.role is Role.ASSISTANT else "user"
        parts = _parts(message, f"messages[{i}]", names, signed)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)  # Gemini alternates turns: same-role messages are merged
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": part.text} for part in req.system]}
    if req.tools:
        declarations = []
        for tool in req.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                declaration["description"] = tool.description
            if tool.parameters is not None:
                declaration["parametersJsonSchema"] = tool.parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    if req.tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _calling(req)}
    generation = _generation(req, signed)
    if generation:
        body["generationConfig"] = generation
    return orjson.dumps(body)


def _parts(message: Message, path: str, names: dict[str, str], signed: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    signature: str | None = None
    first_call = True
    for j, part in enumerate(message.parts):
        at = f"{path}.parts[{j}]"
        item: dict[str, Any]
        if isinstance(part, ThinkingPart):
            if part.text:
                item = {"text": part.text, "thought": True}
                if part.signature:
                    item["thoughtSignature"] = part.signature
                out.append(item)
            elif part.signature:
                signature = part.signature  # a signature Gemini put on the next part
            continue  # redacted thinking (Anthropic's opaque data) means nothing to Gemini
        if isinstance(part, TextPart):
            item = {"text": part.text}
        elif isinstance(part, ImagePart):
            item = _image(part, at)
        elif isinstance(part, ToolCallPart):
            args = call_args(part.arguments)
            if args is None:
                raise _invalid("tool-call arguments must be a JSON object.", f"{at}.arguments")
            item = function_call(part, args)
            if first_call and signature is None and signed:
                signature = SKIP_SIGNATURE
            first_call = False
        else:
            item = _function_response(part, at, names)
        if signature is not None:
            item["thoughtSignature"] = signature
            signature = None
        out.append(item)
    return out


def _image(part: ImagePart, path: str) -> dict[str, Any]:
    if part.data is not None:
        if not part.media_type:
            raise _invalid("an inline image needs its media type.", path)
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    url = part.url or ""
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        if comma and head.endswith(";base64"):
            return {"inlineData": {"mimeType": head[5:-7] or "application/octet-stream", "data": data}}
        raise _invalid("a data URL must be base64.", path)
    if url.startswith(_GEMINI_URIS):
        file: dict[str, Any] = {"fileUri": url}
        if part.media_type:
            file["mimeType"] = part.media_type
        return {"fileData": file}
    raise _invalid("Gemini cannot fetch an image URL; send the image inline (base64).", path)


def _function_response(part: ToolResultPart, path: str, names: dict[str, str]) -> dict[str, Any]:
    name = names.get(part.tool_call_id)
    if name is None:
        raise _invalid(f"no earlier tool call has the id {part.tool_call_id!r} (Gemini needs its name).", path)
    texts = []
    for k, item in enumerate(part.content):
        if not isinstance(item, TextPart):
            raise _invalid("Gemini function responses hold text only.", f"{path}.content[{k}]")
        texts.append(item.text)
    text = "".join(texts)
    value = call_args(text) if text.startswith("{") else None
    key = "error" if part.is_error else "output"
    if value is None:
        response: dict[str, Any] = {key: text}
    else:
        response = value if not part.is_error or "error" in value else {"error": value}
    return {"functionResponse": {"id": part.tool_call_id, "name": name, "response": response}}


def _calling(req: ChatRequest) -> dict[str, Any]:
    choice = req.tool_choice
    assert choice is not None
    if choice.mode == "tool":
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}


def _generation(req: ChatRequest, signed: bool) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.top_k is not None:
        config["topK"] = req.top_k
    if req.stop:
        config["stopSequences"] = req.stop
    if req.n > 1:
        config["candidateCount"] = req.n
    if req.reasoning is not None:
        config["thinkingConfig"] = _thinking(req, signed)
    if req.response_format is not None:
        config.update(_response_format(req.response_format))
    return config


def _thinking(req: ChatRequest, signed: bool) -> dict[str, Any]:
    reasoning = req.reasoning
    assert reasoning is not None
    thinking: dict[str, Any] = {"includeThoughts": reasoning.include_thoughts}
    if reasoning.budget_tokens is not None:
        thinking["thinkingBudget"] = reasoning.budget_tokens
    elif reasoning.effort is not None:
        table: dict[str, Any] = EFFORT_LEVEL if signed else EFFORT_BUDGET
        value = table.get(reasoning.effort)
        if value is None:
            raise _invalid(f"Gemini has no reasoning effort {reasoning.effort!r}.", "reasoning_effort")
        thinking["thinkingLevel" if signed else "thinkingBudget"] = value
    return thinking


def _response_format(value: dict[str, Any]) -> dict[str, Any]:
    kind = value.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    spec = value.get("json_schema")
    if kind == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        return {"responseMimeType": "application/json", "responseJsonSchema": spec["schema"]}
    raise _invalid("Gemini takes text, json_object or json_schema with a schema.", "response_format")


# --- answer -----------------------------------------------------------------------------------------


def _bad(message: str) -> GatewayError:
    return GatewayError(ErrorType.UPSTREAM_ERROR, f"The Gemini upstream sent an unexpected answer: {message}")


def _id_maker() -> Any:
    """Ids for function calls Gemini sent without one: ``call_<12 hex>_<n>``, the random part drawn on first use."""
    prefix = ""
    count = 0

    def new_id(name: str) -> str:
        nonlocal prefix, count
        if not prefix:
            prefix = "call_" + secrets.token_hex(6) + "_"
        count += 1
        return f"{prefix}{count}"

    return new_id


def _candidate_parts(candidate: dict[str, Any], new_id: Any) -> list[Part]:
    content = candidate.get("content")
    if not isinstance(content, dict) or content.get("parts") is None:
        return []  # a blocked candidate has no content
    try:
        return model_parts(content.get("parts"), "content.parts", new_id)
    except GatewayError as err:
        raise _bad(err.message) from None


def gemini_response_to_canonical(payload: bytes) -> ChatResponse:
    """The canonical answer of a ``GenerateContentResponse`` body (its first candidate).

    A prompt blocked by safety (no candidates, ``promptFeedback.blockReason``) or a candidate stopped by
    safety with no content is an empty answer with CONTENT_FILTER.

    Raises:
        GatewayError: UPSTREAM_ERROR when the body is not a GenerateContentResponse.
    """
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _bad("not JSON.") from None
    if not isinstance(body, dict):
        raise _bad("not a JSON object.")
    usage = gemini_usage(field(body, "usageMetadata"))
    response_id = field(body, "responseId")
    model = field(body, "modelVersion")
    candidates = body.get("candidates")
    response = ChatResponse(
        response_id if isinstance(response_id, str) else "",
        model if isinstance(model, str) else "",
        [],
        None,
        usage,
    )
    if not isinstance(candidates, list) or not candidates:
        if _blocked(body):
            response.stop_reason = StopReason.CONTENT_FILTER
            return response
        raise _bad("no candidates.")
    candidate = candidates[0]
    if not isinstance(candidate, dict):
        raise _bad("a candidate is not an object.")
    response.parts = _candidate_parts(candidate, _id_maker())
    has_calls = any(isinstance(part, ToolCallPart) for part in response.parts)
    response.stop_reason = stop_reason(field(candidate, "finishReason"), has_calls)
    return response


def _blocked(data: dict[str, Any]) -> bool:
    """The prompt was blocked (``promptFeedback.blockReason``): Gemini sends no candidate at all."""
    feedback = field(data, "promptFeedback")
    return isinstance(feedback, dict) and bool(field(feedback, "blockReason"))


def upstream_error(body: bytes) -> tuple[str, str | None]:
    """The message (≤500 chars) and google.rpc status of a Gemini error body (also inside a stream array)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace"), None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return body[:500].decode("utf-8", "replace"), None
    message = error.get("message")
    status = error.get("status")
    code = error.get("code")
    text = message if isinstance(message, str) else body.decode("utf-8", "replace")
    if isinstance(status, str):
        kind: str | None = status
    else:
        kind = str(code) if isinstance(code, int) else None
    return text[:500], kind


def failure_class(status: int, message: str, kind: str | None) -> FailureClass:
    """The routing class of a Gemini error answer (``kind``: its google.rpc ``status``; ``providers/failure.py``).

    The Gemini API answers a bad API key with 400 ``INVALID_ARGUMENT`` "API key not valid", and an account
    without billing where it is needed with 400 ``FAILED_PRECONDITION``: both are the gateway's credential.
    """
    if status == 400 and (kind == "FAILED_PRECONDITION" or "API key not valid" in message):
        return FailureClass.CREDENTIAL
    return status_class(status)


# --- stream -----------------------------------------------------------------------------------------


class GeminiStreamDecoder:
    """A Gemini ``streamGenerateContent?alt=sse`` stream → canonical events; one per request.

    Gemini sends whole ``GenerateContentResponse`` chunks: text and thoughts become deltas of blocks opened
    and closed as the kind changes, each ``functionCall`` part a whole tool block, ``finishReason`` the
    Finish. ``usageMetadata`` is on every chunk and holds the totals so far: it is read when asked for (the
    ``usage`` property) and becomes one UsageUpdate, before the Finish, at the end of the answer (or at
    ``end()`` for a stream that never finished). An ``{"error": ...}`` chunk is a StreamError.
    """

    __slots__ = (
        "_sse",
        "_started",
        "_index",
        "_kind",
        "_calls",
        "_new_id",
        "_usage",
        "_complete",
        "_output",
        "_last_usage",
        "_metas",
        "_emitted",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._started = False
        self._index = -1  # the block open now (-1: none)
        self._kind = ""  # its kind: "text" or "thinking"
        self._calls = False
        self._new_id = _id_maker()
        self._usage: Usage | None = None
        self._last_usage: object = None
        self._metas: list[object] = []  # usageMetadata objects not read yet, oldest first
        self._emitted: Usage | None = None  # the usage of the last UsageUpdate
        self._complete = False
        self._output = 0

    @property
    def usage(self) -> Usage | None:
        """The usage Gemini reported so far (the latest chunk's counts; one without counts is passed over)."""
        if self._metas:
            self._read_usage()
        return self._usage

    @property
    def complete(self) -> bool:
        """A chunk with a ``finishReason`` was seen."""
        return self._complete

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of text, thoughts, tool names and arguments so far."""
        return self._output

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events completed by this read."""
        blocks = self._sse.feed(chunk)
        return self._blocks(blocks) if blocks else []

    def end(self) -> list[StreamEvent]:
        """A last event left without its blank line, when it is whole JSON."""
        rest = self._sse.flush()
        out: list[StreamEvent] = []
        if rest.strip():
            for event in parse_blocks(rest + b"\n\n")[0]:
                try:
                    data = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    continue
                out += self._chunk(data)
        self._emit_usage(out)
        return out

    def _blocks(self, blocks: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in self._sse.events(blocks):
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                out.append(StreamError("The Gemini upstream sent an event that is not JSON."))
                continue
            out += self._chunk(data)
        return out

    def _close(self, out: list[StreamEvent]) -> None:
        if self._kind:
            out.append(BlockStop(self._index))
            self._kind = ""

    def _open(self, out: list[StreamEvent], kind: str) -> None:
        if self._kind != kind:
            self._close(out)
            self._index += 1
            self._kind = kind
            out.append(BlockStart(self._index, TextPart("") if kind == "text" else ThinkingPart("")))

    def _chunk(self, data: object) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not isinstance(data, dict):
            return [StreamError("The Gemini upstream sent a chunk that is not an object.")]
        error = data.get("error")
        if error is not None:
            message, _ = upstream_error(orjson.dumps(data))
            return [StreamError(message)]
        if not self._started:
            self._started = True
            response_id, model = field(data, "responseId"), field(data, "modelVersion")
            out.append(
                MessageStart(
                    response_id if isinstance(response_id, str) else "",
                    model if isinstance(model, str) else "",
                    gemini_usage(field(data, "usageMetadata")),  # Gemini counts the prompt from the first chunk
                )
            )
        candidates = data.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if isinstance(candidate, dict):
            try:
                parts = _candidate_parts(candidate, self._new_id)
            except GatewayError as err:
                return [*out, StreamError(err.message)]
            for part in parts:
                self._part(out, part)
        finish: Finish | None = None
        if isinstance(candidate, dict):
            reason = stop_reason(field(candidate, "finishReason"), self._calls)
            if reason is not None:
                finish = Finish(reason)
        elif _blocked(data) and not self._complete:
            finish = Finish(StopReason.CONTENT_FILTER)  # the prompt was blocked: no candidate at all
        self._usage_update(field(data, "usageMetadata"))
        if finish is not None:
            self._emit_usage(out)
            self._close(out)
            out.append(finish)
            self._complete = True
        return out

    def _part(self, out: list[StreamEvent], part: Part) -> None:
        if isinstance(part, TextPart):
            if part.text:
                self._open(out, "text")
                out.append(TextDelta(self._index, part.text))
                self._output += len(part.text.encode())
        elif isinstance(part, ThinkingPart):
            if part.text or self._kind != "thinking":
                self._open(out, "thinking")
            if part.text:
                out.append(ThinkingDelta(self._index, part.text))
                self._output += len(part.text.encode())
            if part.signature:
                out.append(SignatureDelta(self._index, part.signature))
                self._close(out)  # a signature ends a thought
        elif isinstance(part, ToolCallPart):
            self._close(out)
            self._index += 1
            self._calls = True
            out += (
                BlockStart(self._index, ToolCallPart(part.id, part.name, "")),
                ToolArgumentsDelta(self._index, part.arguments),
                BlockStop(self._index),
            )
            self._output += len(part.name.encode()) + len(part.arguments.encode())

    def _usage_update(self, meta: object) -> None:
        if meta is None or meta == self._last_usage:
            return
        self._last_usage = meta
        self._metas.append(meta)
        if len(self._metas) >= 16:
            self._read_usage()

    def _read_usage(self) -> None:
        """The latest held usageMetadata with counts becomes the usage; the held ones are dropped."""
        for meta in reversed(self._metas):
            usage = gemini_usage(meta)
            if usage is not None:
                self._usage = usage
                break
        self._metas.clear()

    def _emit_usage(self, out: list[StreamEvent]) -> None:
        usage = self.usage
        if usage is not None and usage != self._emitted:
            self._emitted = usage
            out.append(UsageUpdate(usage))
