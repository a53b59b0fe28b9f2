"""Upstream failures: each attempt's routing class and the client-facing error it becomes, and their logging."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.upstream_client import UpstreamResponse
from keyrelay.gateway.upstream_errors import TransportFailure, UpstreamConnectionError, UpstreamTimeoutError
from keyrelay.providers.failure import FailureClass, status_class
from keyrelay.routing.table import Channel, Credential

log = logging.getLogger("keyrelay.upstream")
MAX_RETRY_AFTER_S = 86_400.0  # the longest upstream Retry-After passed on to a client: one day

# What the client is told about a transport failure: the kind, in words, without addresses or library text.
_CONNECT_WORDS: dict[TransportFailure, str] = {
    TransportFailure.TLS_CERTIFICATE: "TLS certificate verification failed",
    TransportFailure.TLS_HANDSHAKE: "the TLS handshake failed",
    TransportFailure.CONNECTION_REFUSED: "connection refused",
    TransportFailure.NAME_RESOLUTION: "name resolution failed",
    TransportFailure.UNREACHABLE: "network or host unreachable",
    TransportFailure.CONNECT_FAILED: "the connection failed",
    TransportFailure.PROXY_REFUSED: "the HTTP proxy refused to open a tunnel to it",
}
_EXCHANGE_WORDS: dict[TransportFailure, str] = {
    TransportFailure.CONNECTION_CLOSED: "the connection was closed before the answer was complete",
    TransportFailure.INVALID_RESPONSE: "its answer was not valid HTTP",
}


@dataclass(frozen=True, slots=True)
class UpstreamFailure(Exception):
    """One failed attempt: its routing class and the client-facing error it becomes if it is the last.

    Attributes:
        error: What the client is told when no other channel serves the request.
        failure_class: What routing does about it (``providers/failure.py``).
        status: The upstream's HTTP status (0: a transport failure or an error event in a stream).
    """

    error: GatewayError
    failure_class: FailureClass
    status: int = 0

    @property
    def retryable(self) -> bool:
        """Whether another channel may serve the request."""
        return self.failure_class.fails_over


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (RFC 9110 §10.2.3: delay-seconds; an HTTP date is not honoured), capped."""
    if not value:
        return None
    text = value.strip()
    if not text.replace(".", "", 1).isdigit():
        return None
    return min(float(text), MAX_RETRY_AFTER_S)  # an upstream's absurd wait is not passed on as is


def classify_status(
    status: int,
    retry_after: str | None,
    message: str,
    code: str | None = None,
    failure_class: FailureClass | None = None,
) -> UpstreamFailure:
    """Map a non-2xx upstream status to its routing class and the client-facing error.

    ``message`` must already be scrubbed of secrets (``SecretScrubber``); ``code`` is the upstream's own
    ``error.code`` string (e.g. ``context_length_exceeded``), passed on for the client's refusals;
    ``failure_class`` is the adapter's reading of the body (default: ``status_class(status)``).
    A 3xx (or any status below 400) is transient: keyrelay never follows redirects, because a redirected
    POST would carry the provider credential to another host.
    """
    safe = message[:500]
    cls = failure_class if failure_class is not None else status_class(status)
    if cls is FailureClass.CREDENTIAL:
        err = GatewayError(
            ErrorType.UPSTREAM_ERROR,
            f"The gateway's provider credentials were refused (HTTP {status}); this is not a fault of the request.",
        )
    elif cls is FailureClass.RATE_LIMIT:
        err = GatewayError(
            ErrorType.UPSTREAM_RATE_LIMITED,
            f"The upstream is rate limiting: {safe}",
            retry_after=retry_after_seconds(retry_after),
        )
    elif cls is FailureClass.MODEL_ACCESS:
        err = GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream does not serve this model (HTTP {status}): {safe}")
    elif cls is FailureClass.CALLER_FAULT:
        err = GatewayError(
            ErrorType.INVALID_REQUEST, f"The upstream refused the request (HTTP {status}): {safe}", code=code
        )
    elif status < 400:
        err = GatewayError(
            ErrorType.UPSTREAM_ERROR,
            f"The upstream answered HTTP {status} instead of a result (keyrelay does not follow redirects).",
            status=502,
        )
    else:
        err = GatewayError(
            ErrorType.UPSTREAM_ERROR,
            f"The upstream failed with HTTP {status}: {safe}",
            status=503 if status == 503 else 502,
        )
    return UpstreamFailure(err, cls, status)


def classify_response(
    channel: Channel,
    response: UpstreamResponse,
    message: str,
    code: str | None = None,
    failure_class: FailureClass | None = None,
    credential: Credential | None = None,
) -> UpstreamFailure:
    """Map a non-2xx answer of ``channel`` to its class and client-facing error, and log what the operator must see.

    A redirect is logged (WARNING) with its Location; a refused credential (ERROR) with the provider, the
    credential's variable name and the upstream's words.

    Args:
        channel: The channel that answered.
        response: The answer (status and headers; its body already read).
        message: The upstream's own error text, already scrubbed of secrets, for the client message.
        code: The upstream's own ``error.code`` string, if any.
        failure_class: The adapter's class for the answer (default: from the status alone).
        credential: The credential the attempt used.
    """
    status = response.status
    if 300 <= status < 400:
        location = response.header(b"location")
        log.warning(
            "upstream %s at %s answered HTTP %d redirecting to %s: not followed, trying the next channel if any",
            channel.provider,
            _host(channel),
            status,
            location.decode("latin-1")[:500] if location is not None else "(no Location)",
        )
    retry_after = response.header(b"retry-after")
    failure = classify_status(
        status, retry_after.decode("latin-1") if retry_after else None, message, code, failure_class
    )
    if failure.failure_class is FailureClass.CREDENTIAL:
        log.error(
            "upstream %s at %s REFUSED the gateway's credential %s (HTTP %d): %s; the credential rests, "
            "check the key and the provider account",
            channel.provider,
            _host(channel),
            credential.label if credential is not None else "-",
            status,
            message[:300],
        )
    return failure


def classify_exception(exc: BaseException, channel: Channel | None) -> UpstreamFailure:
    """Map a transport failure (connecting, or reading the answer) to the client-facing error; log its cause.

    Args:
        exc: ``UpstreamConnectionError`` or ``UpstreamTimeoutError`` (its ``reason`` says the kind).
        channel: The channel being tried (named in the log line).

    Returns:
        ``UPSTREAM_TIMEOUT`` (504) for timeouts, else ``UPSTREAM_ERROR`` (502) whose message names the kind of
        failure in words ("TLS certificate verification failed", "connection refused", ...); always transient.
    """
    log_transport_failure(exc, channel)
    reason = _reason(exc)
    if reason is TransportFailure.CONNECT_TIMEOUT:
        err = GatewayError(ErrorType.UPSTREAM_TIMEOUT, "Connecting to the upstream timed out.")
    elif isinstance(exc, TimeoutError):
        err = GatewayError(ErrorType.UPSTREAM_TIMEOUT, "The upstream did not answer in time.")
    elif reason in _CONNECT_WORDS:
        err = GatewayError(ErrorType.UPSTREAM_ERROR, f"Could not reach the upstream: {_CONNECT_WORDS[reason]}.")
    else:
        words = _EXCHANGE_WORDS.get(reason, "the connection failed") if reason else "the connection failed"
        err = GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream connection failed: {words}.")
    return UpstreamFailure(err, FailureClass.TRANSIENT)


def log_transport_failure(exc: BaseException, channel: Channel | None) -> None:
    """One WARNING line: provider, host, kind and the OS or TLS library's own text (never a credential)."""
    reason = _reason(exc) or exc.__class__.__name__
    provider, host = (channel.provider, _host(channel)) if channel is not None else ("-", "-")
    log.warning("upstream %s at %s failed: %s: %s", provider, host, reason, exc)


def _reason(exc: BaseException) -> TransportFailure | None:
    return exc.reason if isinstance(exc, UpstreamConnectionError | UpstreamTimeoutError) else None


def _host(channel: Channel) -> str:
    """``host:port`` of a channel's base URL (never its user info or path)."""
    parts = urlsplit(channel.base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
