"""Why an upstream attempt failed, as routing sees it: the closed ``FailureClass`` and the status table.

The class drives failover, breakers and credential rests; what the client is told is a separate
``ErrorType`` (``gateway/forward.py``). Each provider adapter refines the status table with what its
error bodies say (``openai.py`` and the others beside this module: ``failure_class``), for instance OpenAI's 429
``insufficient_quota``, which is the gateway's account out of credit, not a rate limit.
"""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    """What kind of failure one upstream attempt met (docs/routing.md, "Failure classes").

    * ``TRANSIENT``: the provider's trouble (connect or TLS error, timeout before the first byte, 3xx, 408,
      409, 5xx, 529, an error event before any content): fail over; counts towards the channel's breaker.
    * ``RATE_LIMIT``: 429: fail over; the credential rests for its ``Retry-After``.
    * ``CREDENTIAL``: 401, 403, 402, or a quota/credit error: the gateway's provider credential or account
      was refused: fail over; the credential rests; logged at ERROR; never the client's fault.
    * ``MODEL_ACCESS``: 404, the model is not served there: fail over; counts towards the breaker.
    * ``CALLER_FAULT``: 400, 413, 422 and other 4xx, context too long: the request itself; no failover.
    """

    TRANSIENT = "transient"
    RATE_LIMIT = "rate_limit"
    CREDENTIAL = "credential"
    MODEL_ACCESS = "model_access"
    CALLER_FAULT = "caller_fault"

    @property
    def fails_over(self) -> bool:
        """Whether another channel may serve the request after this failure."""
        return self is not FailureClass.CALLER_FAULT

    @property
    def provider_trouble(self) -> bool:
        """Whether the failure counts towards the channel's circuit breaker."""
        return self in (FailureClass.TRANSIENT, FailureClass.MODEL_ACCESS, FailureClass.CREDENTIAL)


# RFC 9110 §15.5.9 (408) and the statuses the official OpenAI and Anthropic SDKs retry (408, 409, 429, 5xx);
# 529 is Anthropic's "overloaded_error".
_TRANSIENT_4XX = frozenset({408, 409})
_CREDENTIAL = frozenset({401, 402, 403})


def status_class(status: int) -> FailureClass:
    """The class of a non-2xx HTTP status, before any adapter reads the body.

    Below 400 (a redirect keyrelay does not follow) and 5xx are transient; 429 a rate limit; 401, 402
    and 403 the gateway's credential; 404 model access; every other 4xx the caller's fault.
    """
    if status < 400 or status >= 500 or status in _TRANSIENT_4XX:
        return FailureClass.TRANSIENT
    if status == 429:
        return FailureClass.RATE_LIMIT
    if status in _CREDENTIAL:
        return FailureClass.CREDENTIAL
    if status == 404:
        return FailureClass.MODEL_ACCESS
    return FailureClass.CALLER_FAULT
