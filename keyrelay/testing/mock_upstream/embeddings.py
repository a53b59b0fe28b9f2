"""``POST /v1/embeddings`` of the mock's OpenAI wire: deterministic, L2-normalised vectors.

Vectors come as floats or as base64 of little-endian float32 (``encoding_format: "base64"``); prompt tokens are
``ceil(utf8_bytes / 4)`` per string and ``len(tokens)`` per token array.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import sys
from typing import Any, Final

import orjson
from aiohttp import web

from keyrelay.testing.mock_upstream.core import FAULT_CUT_STREAM, FAULT_NO_USAGE, abort_connection, json_response
from keyrelay.testing.mock_upstream.openai import BAD_JSON_MESSAGE, OpenAIWire, invalid_request

DEFAULT_EMBEDDING_DIMENSIONS: Final = 8
"""Embedding size used when the request has no ``dimensions``."""
MAX_EMBEDDING_DIMENSIONS: Final = 8192


def count_embedding_tokens(inputs: list[str | list[int]]) -> int:
    """Count embedding prompt tokens: ``ceil(utf8_bytes / 4)`` per string, ``len(tokens)`` per token array.

    Args:
        inputs: The normalised list of inputs.

    Returns:
        The token count reported in ``usage.prompt_tokens`` / ``usage.total_tokens``.
    """
    total = 0
    for item in inputs:
        total += math.ceil(len(item.encode()) / 4) if isinstance(item, str) else len(item)
    return total


def embedding_vector(item: str | list[int], dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """Return the deterministic, L2-normalised embedding of one input.

    The values are derived from SHAKE-256 of the text (or of the JSON of a token array) and rounded to float32, so
    the ``float`` and ``base64`` encodings carry exactly the same numbers.

    Args:
        item: A string or a token array.
        dimensions: Vector length.

    Returns:
        The vector as Python floats (exactly representable as float32).
    """
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    digest = hashlib.shake_256(seed).digest(2 * dimensions)
    raw = [int.from_bytes(digest[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dimensions, 2)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return array.array("f", [v / norm for v in raw]).tolist()


def _float32_base64(values: list[float]) -> str:
    """Encode floats as base64 of little-endian float32 (OpenAI's ``encoding_format: "base64"``)."""
    packed = array.array("f", values)
    if sys.byteorder == "big":  # pragma: no cover - exercised only on big-endian hosts
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _normalise_embedding_input(value: Any) -> list[str | list[int]] | None:
    """Normalise an embeddings ``input`` to a list of strings / token arrays, or ``None`` when invalid."""

    def is_tokens(item: Any) -> bool:
        return (
            isinstance(item, list)
            and bool(item)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item)
        )

    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if is_tokens(value):
        return [value]
    if all(isinstance(item, str) and item for item in value):
        return list(value)
    if all(is_tokens(item) for item in value):
        return list(value)
    return None


class EmbeddingsHandler:
    """``POST /v1/embeddings``, answering through an :class:`OpenAIWire` (its key check, faults and errors)."""

    def __init__(self, wire: OpenAIWire) -> None:
        """Answer through ``wire``."""
        self.wire = wire

    # -- embeddings ----------------------------------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/embeddings``."""
        body, failure = await self.wire.prologue(request)
        if failure is not None:
            return failure
        if not isinstance(body, dict):
            return invalid_request(BAD_JSON_MESSAGE)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return invalid_request("you must provide a model parameter")
        inputs = _normalise_embedding_input(body.get("input"))
        if inputs is None:
            return invalid_request(
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                param="input",
            )
        dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if dimensions is None:
            dimensions = DEFAULT_EMBEDDING_DIMENSIONS
        if (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
        ):
            return invalid_request(f"Invalid 'dimensions': {dimensions!r}.", param="dimensions")
        encoding_format = body.get("encoding_format")
        if encoding_format not in (None, "float", "base64"):
            return invalid_request(
                f"{encoding_format!r} is not one of ['float', 'base64'] - 'encoding_format'", param="encoding_format"
            )

        fault = await self.wire.pre_answer_faults(request, model)
        if fault is not None:
            return fault
        if FAULT_CUT_STREAM in model:
            return abort_connection(request)

        as_base64 = encoding_format == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, dimensions)
            data.append(
                {"object": "embedding", "index": index, "embedding": _float32_base64(vector) if as_base64 else vector}
            )
        result: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if FAULT_NO_USAGE not in model:
            tokens = count_embedding_tokens(inputs)
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return json_response(result)
