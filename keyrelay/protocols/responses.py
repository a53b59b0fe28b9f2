"""OpenAI's Responses API as clients speak it (``POST /v1/responses``): request judging and the passthrough body.

Reference: https://platform.openai.com/docs/api-reference/responses/create and the ``openai`` SDK's
``types/responses`` (the exact field set). keyrelay serves it statelessly, as Codex CLI uses it
(``store: false``, the whole conversation resent in ``input``): a request that needs a stored response
(``previous_response_id``, ``conversation``, ``background``) is refused with a 400 saying so. The same
bytes go to a ``kind: openai`` upstream's ``/responses`` with only the model id rewritten
(``gateway/wires.py``); every other kind is translated (``protocols/responses_translate.py`` to
canonical, ``protocols/responses_encode.py`` back).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.base import InboundRequest, Operation, ProtocolName
from keyrelay.protocols.canonical import ThinkingPart
from keyrelay.protocols.json_fields import body_object, count_objects, escapes_of, spelled_plainly
from keyrelay.protocols.judged import JudgedFields
from keyrelay.protocols.openai import provider_preferences

__all__ = ["NOT_STORED", "decode_request", "image_parts", "open_reasoning", "seal_reasoning", "upstream_body"]

# The fields keyrelay judges a request by (whitelist, price, cost bound, statelessness): each must appear once.
_JUDGED = JudgedFields(
    ("model", "stream", "max_output_tokens", "provider", "previous_response_id", "conversation", "background")
)
NOT_STORED = (
    "keyrelay does not store responses: send the whole conversation in input (with store: false), as Codex CLI does."
)
# Fields that would need a response stored by keyrelay, with the value that means "not used".
_STATEFUL: tuple[tuple[str, object], ...] = (("previous_response_id", None), ("conversation", None))


def _invalid(message: str, field: str) -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, message, field=field)


def _refuse_references(items: list[Any]) -> None:
    """Refuse ``item_reference`` items: they name items stored upstream, which keyrelay does not keep per key.

    Passed to an OpenAI upstream, such an id would reach whatever the gateway's organisation stored, whoever
    stored it; translated, there is nothing to resolve it against.
    """
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            raise _invalid(
                f"input[{i}]: an item_reference needs a stored response; {NOT_STORED} The Vercel AI SDK sends the"
                " items themselves with providerOptions: {openai: {store: false}}.",
                f"input[{i}].type",
            )


def upstream_body(request: InboundRequest, upstream_model: str) -> bytes:
    """The body for a ``kind: openai`` upstream's ``/responses``: the client's, the model id rewritten.

    Reasoning items sealed by keyrelay (``kr1.``, from a turn another kind of upstream served) are left out:
    OpenAI cannot read them and would refuse the request. The raw bytes go unchanged when nothing changes.
    """
    body = request.body
    items = body.get("input")
    sealed = b'"kr1.' in request.raw and isinstance(items, list)
    if request.model == upstream_model and not sealed:
        return request.raw
    out = {**body, "model": upstream_model}
    if isinstance(items, list) and sealed:
        out["input"] = [item for item in items if not _sealed(item)]
    return orjson.dumps(out)


def _sealed(item: object) -> bool:
    if not isinstance(item, dict) or item.get("type") != "reasoning":
        return False
    content = item.get("encrypted_content")
    return isinstance(content, str) and content.startswith(_SEAL)


_IMAGE_ESCAPES = escapes_of(["input_image"])


def image_parts(raw: bytes, body: dict[str, Any]) -> int:
    """How many ``input_image`` parts a Responses body holds (one with escapes that could spell it: counted parsed)."""
    if not spelled_plainly(raw, _IMAGE_ESCAPES):
        return count_objects(body.get("input"), lambda item: item.get("type") == "input_image")
    return raw.count(b'"input_image"')


def decode_request(raw: bytes) -> InboundRequest:
    """Parse and judge a ``POST /v1/responses`` body.

    Raises:
        GatewayError: INVALID_REQUEST naming the field at fault: not JSON, no ``model`` or ``input``, a bad
            ``stream`` or ``max_output_tokens``, a field that needs a stored response.
    """
    body = body_object(raw)
    _JUDGED.refuse_duplicates(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model is required (a string).", "model")
    for name, unused in _STATEFUL:
        if body.get(name) is not unused:
            raise _invalid(f"{name}: {NOT_STORED}", name)
    if body.get("background") not in (None, False):
        raise _invalid(f"background: {NOT_STORED}", "background")
    value = body.get("input")
    if not (isinstance(value, str) or (isinstance(value, list) and value)):
        raise _invalid("input is required: a string or a non-empty array of input items.", "input")
    if isinstance(value, list):
        _refuse_references(value)
    stream_value = body.get("stream")
    if stream_value is not None and not isinstance(stream_value, bool):
        raise _invalid("stream must be true or false.", "stream")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise _invalid("max_output_tokens must be a positive integer.", "max_output_tokens")
    routing = None
    if "provider" in body:
        # keyrelay's own field (as on Chat Completions): read here, never sent upstream.
        routing = provider_preferences(body.pop("provider"))
        raw = orjson.dumps(body)
    return InboundRequest(
        Operation.CHAT,
        model,
        stream_value is True,
        True,  # a Responses stream always ends with its usage, in the terminal event
        limit,
        raw,
        body,
        1,
        image_parts(raw, body),
        ProtocolName.RESPONSES,
        routing,
    )


# --- reasoning carried by the client -----------------------------------------------------------------
# A translated upstream's reasoning (Anthropic thinking with its signature, Gemini's thought signature) must
# come back exactly for the conversation to go on, and a Responses client carries reasoning only as an
# opaque ``encrypted_content`` string. keyrelay's own are marked with this prefix; an OpenAI one (after a
# failover from an OpenAI upstream) is not keyrelay's to read, and is dropped from a translation.
_SEAL = "kr1."


def seal_reasoning(part: ThinkingPart) -> str:
    """The ``encrypted_content`` of a reasoning item that carries ``part``: ``kr1.`` + base64url of JSON.

    Not secret (the client already has the text); opaque, and read back by ``open_reasoning``.
    """
    fields: dict[str, str] = {"t": part.text}
    if part.signature is not None:
        fields["s"] = part.signature
    if part.redacted is not None:
        fields["r"] = part.redacted
    return _SEAL + base64.urlsafe_b64encode(orjson.dumps(fields)).decode("ascii")


def open_reasoning(value: str) -> ThinkingPart | None:
    """The ``ThinkingPart`` a ``seal_reasoning`` string carries; None for anything else (an OpenAI one)."""
    if not value.startswith(_SEAL):
        return None
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(value[len(_SEAL) :]))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        return None
    text = fields.get("t", "")
    return ThinkingPart(text, fields.get("s"), fields.get("r"))
