"""Upstream call helpers: the provider credential headers and the mapping of failures to client errors."""

from __future__ import annotations

from dataclasses import dataclass

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


def classify_status(status: int, retry_after: str | None, message: str) -> UpstreamFailure:
    """Map an upstream error status to the client-facing error and whether another channel may help."""
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
        code = 503 if status == 503 else 502
        err = GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream failed with HTTP {status}: {safe}", status=code)
        return UpstreamFailure(err, True)
    err = GatewayError(ErrorType.INVALID_REQUEST, f"The upstream refused the request (HTTP {status}): {safe}")
    return UpstreamFailure(err, False)


def classify_exception(exc: BaseException) -> UpstreamFailure:
    """Map a transport failure before the first byte to the client-facing error."""
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(GatewayError(ErrorType.UPSTREAM_TIMEOUT, "The upstream did not answer in time."), True)
    return UpstreamFailure(
        GatewayError(ErrorType.UPSTREAM_ERROR, f"Could not reach the upstream ({exc.__class__.__name__})."), True
    )


def upstream_error_message(body: bytes) -> str:
    """The upstream's own error message, if its body is OpenAI-shaped (never its headers or credentials)."""
    import orjson

    try:
        data = orjson.loads(body)
        message = data["error"]["message"]
        return str(message)
    except Exception:
        return body[:200].decode("utf-8", "replace")
