"""``POST /v1/completions`` of the mock's OpenAI wire: the legacy text completions, as JSON or SSE.

``prompt`` is a string, a list of strings, a token array or a list of token arrays; each prompt gets ``n`` choices
(``index`` = prompt number * ``n`` + choice number), each the plain reply of :mod:`.behaviour` cut by ``max_tokens``
(16 by default, as in the API) and ``stop`` (finish ``stop``, ``length``, or ``content_filter`` for ``safety``).
``echo`` puts the prompt text before the completion (nothing for a token array); ``suffix`` is accepted and ignored.

Prompt tokens: ``ceil(utf8_bytes / 4)`` per string prompt, ``len(tokens)`` per token array, summed (no per-message
overhead: a completion prompt is not a conversation); completion tokens: one per piece of every choice.

A stream is one ``text_completion`` chunk per piece (after one with the prompt when ``echo``), then one chunk with
``"text": ""`` and the ``finish_reason`` per choice, then, with ``stream_options.include_usage``, a chunk with
``"choices": []`` and the ``usage``, then ``data: [DONE]``. Faults are the chat wire's (``cut-stream`` /
``stream-error`` after 3 text chunks, their ``early-`` forms before any; ``no-usage``; ``prompt-too-long`` is the
legacy context-length 400).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from keyrelay.testing.mock_upstream.behaviour import Plan, Turn, plan_reply
from keyrelay.testing.mock_upstream.core import (
    FAULT_CUT_STREAM,
    FAULT_NO_USAGE,
    FAULT_PROMPT_TOO_LONG,
    FAULT_STREAM_ERROR,
    abort_connection,
    content_chunks_before_fault,
    json_response,
    new_id,
)
from keyrelay.testing.mock_upstream.openai import BAD_JSON_MESSAGE, SSE_DONE, OpenAIWire, invalid_request
from keyrelay.testing.mock_upstream.openai import _fault_error as openai_fault_error
from keyrelay.testing.mock_upstream.openai_chat import STREAM_ERROR

DEFAULT_MAX_TOKENS: Final = 16
"""``max_tokens`` when the request has none (the API's default)."""
MAX_N: Final = 128
MAX_STOP: Final = 4
FINISH_REASONS: Final = {
    "stop": "stop",
    "length": "length",
    "stop_sequence": "stop",
    "tool_calls": "stop",
    "safety": "content_filter",
}
PROMPT_TOO_LONG_MESSAGE: Final = (
    "This model's maximum context length is 4097 tokens, however you requested 200016 tokens (200000 in your "
    "prompt; 16 for the completion). Please reduce your prompt; or completion length."
)

Prompt = str | list[int]


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def normalise_prompt(value: Any) -> list[Prompt] | None:
    """``prompt`` as a list of prompts (strings or token arrays), or ``None`` when it is not a valid prompt."""
    if isinstance(value, str):
        return [value]
    if _is_tokens(value):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(_is_tokens(item) for item in value):
            return list(value)
    return None


def count_completion_tokens(prompt: Prompt) -> int:
    """One prompt's tokens: ``ceil(utf8_bytes / 4)`` for a string, ``len(tokens)`` for a token array."""
    return math.ceil(len(prompt.encode()) / 4) if isinstance(prompt, str) else len(prompt)


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A validated legacy completion request."""

    model: str
    prompts: list[Prompt]
    max_tokens: int
    n: int
    stop: tuple[str, ...]
    echo: bool
    stream: bool
    include_usage: bool


def _integer(body: dict[str, Any], name: str, default: int, low: int, high: int | None = None) -> int | web.Response:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        return invalid_request(f"Invalid type for '{name}': expected an integer.", param=name, code="invalid_type")
    if value < low:
        return invalid_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if high is not None and value > high:
        return invalid_request(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...] | web.Response:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        return invalid_request("Invalid type for 'stop': expected a string or an array of strings.", param="stop")
    if len(stop) > MAX_STOP:
        return invalid_request(
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, but got an array "
            f"with length {len(stop)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    return tuple(stop)


def _prompts(body: dict[str, Any]) -> list[Prompt] | web.Response:
    if body.get("prompt") is None:
        return invalid_request(
            "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    prompts = normalise_prompt(body["prompt"])
    if prompts is None:
        return invalid_request(
            "Invalid type for 'prompt': expected one of a string, an array of strings, an array of integers or an "
            "array of arrays of integers.",
            param="prompt",
            code="invalid_type",
        )
    return prompts


def parse_completion_request(body: Any) -> CompletionRequest | web.Response:
    """Validate a legacy completion body like the API does (the fields the mock reads); a 400 when invalid."""
    if not isinstance(body, dict):
        return invalid_request(BAD_JSON_MESSAGE)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return invalid_request("you must provide a model parameter")
    prompts = _prompts(body)
    if isinstance(prompts, web.Response):
        return prompts
    max_tokens = _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 0)
    if isinstance(max_tokens, web.Response):
        return max_tokens
    n = _integer(body, "n", 1, 1, MAX_N)
    if isinstance(n, web.Response):
        return n
    stop = _stop(body)
    if isinstance(stop, web.Response):
        return stop
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        return invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    return CompletionRequest(
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        n=n,
        stop=stop,
        echo=body.get("echo") is True,
        stream=stream,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
    )


@dataclass(frozen=True, slots=True)
class _Choice:
    index: int
    echo: str
    plan: Plan


def _choices(request: CompletionRequest, reply_words: int) -> list[_Choice]:
    choices: list[_Choice] = []
    for number, prompt in enumerate(request.prompts):
        turn = Turn(
            model=request.model,
            prompt_tokens=count_completion_tokens(prompt),
            limit=request.max_tokens,
            stop=request.stop,
            reply_words=reply_words,
        )
        plan = plan_reply(turn)
        echo = prompt if request.echo and isinstance(prompt, str) else ""
        choices.extend(_Choice(number * request.n + j, echo, plan) for j in range(request.n))
    return choices


def _usage(request: CompletionRequest, choices: list[_Choice]) -> dict[str, int]:
    prompt = sum(count_completion_tokens(p) for p in request.prompts)
    completion = sum(choice.plan.output_tokens for choice in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


def completion_object(model: str, created: int, request: CompletionRequest, choices: list[_Choice]) -> dict[str, Any]:
    """The ``text_completion`` object."""
    result: dict[str, Any] = {
        "id": f"cmpl-{new_id()}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [_choice(c.index, c.echo + c.plan.text, FINISH_REASONS[c.plan.finish]) for c in choices],
    }
    if FAULT_NO_USAGE not in model:
        result["usage"] = _usage(request, choices)
    return result


def completion_frames(
    model: str, created: int, request: CompletionRequest, choices: list[_Choice], *, cut: bool, error: bool
) -> Iterator[bytes]:
    """The SSE frames of a streamed completion, lazily (``[DONE]`` is the caller's; see the module docstring)."""
    chunk_id = f"cmpl-{new_id()}"

    def frame(choices_value: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": chunk_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices_value,
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    texts = [(c.index, text) for c in choices for text in ([c.echo] if c.echo else []) + c.plan.pieces]
    before = content_chunks_before_fault(model)
    for sent, (index, text) in enumerate(texts):
        if (cut or error) and sent == before:
            break
        yield frame([_choice(index, text, None)])
    else:
        if not (cut or error):
            for choice in choices:
                yield frame([_choice(choice.index, "", FINISH_REASONS[choice.plan.finish])])
            if request.include_usage and FAULT_NO_USAGE not in model:
                yield frame([], _usage(request, choices))
            return
    if error:
        yield b"data: " + orjson.dumps({"error": STREAM_ERROR}) + b"\n\n"


def _fault_error(model: str) -> web.Response | None:
    if FAULT_PROMPT_TOO_LONG in model:
        return invalid_request(PROMPT_TOO_LONG_MESSAGE, param="prompt", code="context_length_exceeded")
    return openai_fault_error(model)


class CompletionsHandler:
    """``POST /v1/completions``, answering through an :class:`~.openai.OpenAIWire` (its key check and recording)."""

    def __init__(self, wire: OpenAIWire) -> None:
        """Answer through ``wire``."""
        self.wire = wire

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/completions`` (JSON or SSE)."""
        body, failure = await self.wire.prologue(request)
        if failure is not None:
            return failure
        parsed = parse_completion_request(body)
        if isinstance(parsed, web.Response):
            return parsed
        model, state = parsed.model, self.wire.state
        waited = await state.wait_faults(request, model)
        if waited is not None:
            return waited
        fault = _fault_error(state.fault_model(model, request))
        if fault is not None:
            return fault
        choices = _choices(parsed, state.options.reply_words)
        cut = FAULT_CUT_STREAM in model
        if parsed.stream:
            error = FAULT_STREAM_ERROR in model
            frames = completion_frames(model, state.created(), parsed, choices, cut=cut, error=error)
            return await state.write_stream(request, model, frames, cut=cut, tail=b"" if error else SSE_DONE)
        if cut:
            return abort_connection(request)
        return json_response(completion_object(model, state.created(), parsed, choices))
