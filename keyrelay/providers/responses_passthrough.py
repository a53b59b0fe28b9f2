"""What a passthrough reads from an OpenAI Responses stream it relays untouched, and how such a stream ends.

A Responses client on a ``kind: openai`` upstream gets the upstream's bytes as they are. Beside them the
gateway reads (https://platform.openai.com/docs/api-reference/responses-streaming): the ``response`` of
``response.created`` (to write a ``response.failed`` of the same response if the stream breaks), every
event's ``sequence_number`` (to number that event), the output deltas' sizes (the estimate when no usage
arrives), and the terminal event: ``response.completed`` or ``response.incomplete`` (complete, with
``usage``) or ``response.failed`` (an error). An ``error`` event is an error too. Each event is parsed with
orjson: this path carries no translation, and Responses streams are not the benchmark's hot path.

``gateway.relays.ResponsesRelay`` relays such a stream, and closes one that ends without a terminal event
(broken, cut, or an ``error`` event alone) with a ``response.failed`` event from what this reader knows.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.sse import BOM, SSEDecoder, parse_blocks

__all__ = ["ResponsesPassthroughReader", "responses_body_usage", "responses_usage"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Error codes that blame the upstream, not the request (``ResponseError.code``; an ``error`` event's ``code``):
# these fail over. Any other code (``context_length_exceeded``, ``invalid_prompt``, the image codes, ...) is the
# request's own fault, relayed to the client as it came (Codex compacts its context on context_length_exceeded).
_UPSTREAM_CODES = frozenset({"server_error", "rate_limit_exceeded", "vector_store_timeout", "internal_error"})


def _count(obj: object, name: str) -> int:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def responses_usage(value: object) -> Usage | None:
    """``Usage`` from a Responses ``usage`` object (``ResponseUsage``); None when absent or malformed.

    ``input_tokens`` counts cached tokens too (``input_tokens_details.cached_tokens`` is the part read from
    the cache); ``output_tokens`` counts reasoning (``output_tokens_details.reasoning_tokens``).
    """
    if not isinstance(value, dict) or not isinstance(value.get("input_tokens"), int):
        return None
    prompt = _count(value, "input_tokens")
    completion = _count(value, "output_tokens")
    details = value.get("input_tokens_details")
    cached = min(_count(details, "cached_tokens"), prompt)
    written = min(_count(details, "cache_write_tokens"), prompt - cached)
    reasoning = min(_count(value.get("output_tokens_details"), "reasoning_tokens"), completion)
    return Usage(prompt, completion, False, cached, written, reasoning)


def responses_body_usage(payload: bytes) -> Usage | None:
    """The usage of a whole ``response`` body (None when it has none or is not JSON)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return responses_usage(data.get("usage")) if isinstance(data, dict) else None


class ResponsesPassthroughReader:
    """Reads a Responses SSE stream beside the relay; one per request (``protocols.base.PassthroughReader``).

    Attributes:
        complete: A ``response.completed`` or ``response.incomplete`` event was seen.
        terminal: One of the three terminal events was seen.
        response: The ``response`` object of the latest lifecycle event (None before ``response.created``).
        next_sequence: The ``sequence_number`` the next event would carry.
        error_code: The ``code`` of an ``error`` event or of a failed response's ``error``, when one came.
    """

    __slots__ = (
        "_sse",
        "_usage",
        "_output",
        "_first",
        "complete",
        "terminal",
        "response",
        "next_sequence",
        "error_code",
        "relayable",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._usage: Usage | None = None
        self._output = 0
        self._first = True
        self.complete = False
        self.terminal = False
        self.response: dict[str, Any] | None = None
        self.next_sequence = 0
        self.error_code: str | None = None
        self.relayable = b""  # see PassthroughReader.relayable

    def feed(self, chunk: bytes) -> bool:
        """See ``PassthroughReader.feed``."""
        self.relayable = blocks = self._sse.feed(chunk)
        return self._read(blocks)

    def end(self) -> bool:
        """See ``PassthroughReader.end``: read a last event that lacked its blank line."""
        self.relayable = rest = self._sse.flush()
        return self._read(rest + b"\n\n") if rest.strip() else False

    def _read(self, blocks: bytes) -> bool:
        if not blocks:
            return False
        if self._first:
            self._first = False
            blocks = blocks.removeprefix(BOM)
        errored = False
        for event in parse_blocks(blocks)[0]:
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            sequence = data.get("sequence_number")
            if isinstance(sequence, int) and not isinstance(sequence, bool):
                self.next_sequence = max(self.next_sequence, sequence + 1)
            if kind == "error" or event.event == "error":
                errored = True
                self._code(data.get("code"))
                continue
            delta = data.get("delta")
            if isinstance(delta, str):
                self._output += len(delta.encode())
            response = data.get("response")
            if isinstance(response, dict):
                self.response = response
                if kind in _TERMINAL:
                    self.terminal = True
                    self._usage = responses_usage(response.get("usage")) or self._usage
                    if kind == "response.failed":
                        errored = True
                        error = response.get("error")
                        self._code(error.get("code") if isinstance(error, dict) else None)
                    else:
                        self.complete = True
        return errored

    def _code(self, code: object) -> None:
        self.error_code = code if isinstance(code, str) and code else "server_error"

    @property
    def caller_fault(self) -> bool:
        """Whether the upstream's error blames the request (its code is not one of the upstream's own)."""
        return self.error_code is not None and self.error_code not in _UPSTREAM_CODES

    @property
    def usage(self) -> Usage | None:
        """See ``PassthroughReader.usage``."""
        return self._usage

    @property
    def output_bytes(self) -> int:
        """See ``PassthroughReader.output_bytes``."""
        return self._output
