"""Upstream call helpers: the provider credential headers and the mapping of failures to client errors."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.routing.table import Channel

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class UpstreamFailure(Exception):
    """An upstream answer or transport failure, already mapped to the client-facing error."""

    error: GatewayError
    retryable: bool


def upstream_headers(channel: Channel, stream: bool) -> dict[str, str]:
    """Headers for the upstream call: the provider's own credential, never the client's key."""
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    if channel.api_key:
        headers["authorization"] = f"Bearer {channel.api_key}"
    return headers


def classify_status(status: int, retry_after: str | None, message: str, code: str | None = None) -> UpstreamFailure:
    """Map an upstream error status to the client-facing error and whether another channel may help.

    ``message`` must already be scrubbed of secrets (``SecretScrubber``); ``code`` is the upstream's own
    ``error.code`` string (e.g. ``context_length_exceeded``), passed on for the client's refusals.
    """
    safe = message[:500]
    if status == 429:
        seconds = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
        err = GatewayError(
            ErrorType.UPSTREAM_RATE_LIMITED, f"The upstream is rate limiting: {safe}", retry_after=seconds
        )
        return UpstreamFailure(err, True)
    if status in (401, 403):
        err = GatewayError(ErrorType.UPSTREAM_ERROR, "The upstream rejected the gateway's provider credentials.")
        return UpstreamFailure(err, True)
    if status >= 500 or status in RETRYABLE_STATUSES:
        err = GatewayError(
            ErrorType.UPSTREAM_ERROR,
            f"The upstream failed with HTTP {status}: {safe}",
            status=503 if status == 503 else 502,
        )
        return UpstreamFailure(err, True)
    err = GatewayError(
        ErrorType.INVALID_REQUEST, f"The upstream refused the request (HTTP {status}): {safe}", code=code
    )
    return UpstreamFailure(err, False)


def classify_exception(exc: BaseException) -> UpstreamFailure:
    """Map a transport failure before the first byte to the client-facing error."""
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(GatewayError(ErrorType.UPSTREAM_TIMEOUT, "The upstream did not answer in time."), True)
    return UpstreamFailure(
        GatewayError(ErrorType.UPSTREAM_ERROR, f"Could not reach the upstream ({exc.__class__.__name__})."), True
    )


def upstream_error(body: bytes) -> tuple[str, str | None]:
    """The upstream's own error message and ``error.code`` string, if its body is OpenAI-shaped.

    The message is raw upstream text: scrub it before it goes anywhere.
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
