"""One request's upstream attempts: the plan to walk, the failures met, what each feeds, and the final error.

Every attempt's outcome goes to the channel's health (breaker, credential rest) and to
``keyrelay_upstream_attempts_total``; a request that met a failure keeps the list of its attempts for its
usage record. When no attempt succeeds, :meth:`Attempts.final_error` picks what the client is told
(docs/routing.md, "What the client sees").
"""

from __future__ import annotations

import time
from typing import Any

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.call import RelayedError
from keyrelay.gateway.forward import UpstreamFailure
from keyrelay.metrics import Metrics
from keyrelay.providers.failure import FailureClass
from keyrelay.routing.failover import AttemptPlan
from keyrelay.routing.health import Health
from keyrelay.routing.table import Channel, Credential


class Attempts:
    """The attempts of one request (a new object per request)."""

    __slots__ = ("plan", "deadline", "_health", "_metrics", "_failures", "_refusals", "records", "last_class")

    def __init__(self, plan: AttemptPlan, health: Health, metrics: Metrics, total_timeout_s: float) -> None:
        self.plan = plan
        self.deadline = time.perf_counter() + total_timeout_s
        self._health = health
        self._metrics = metrics
        self._failures: list[tuple[UpstreamFailure, RelayedError | None]] = []
        self._refusals: list[GatewayError] = []  # channels whose wire cannot express the request
        self.records: list[dict[str, Any]] | None = None  # set once an attempt failed: the usage record's list
        self.last_class: FailureClass | None = None

    def next(self) -> tuple[Channel, Credential] | None:
        """The next (channel, credential) to try; None when the plan is over or the time is up."""
        if self.plan.attempts and time.perf_counter() >= self.deadline:
            return None
        return self.plan.next(self.last_class)

    def remaining(self) -> float:
        """Seconds left of ``total_timeout_s`` (never below a millisecond: the first attempt always runs)."""
        return max(self.deadline - time.perf_counter(), 0.001)

    def failed(
        self,
        channel: Channel,
        credential: Credential,
        failure: UpstreamFailure,
        latency_s: float,
        relayed: RelayedError | None = None,
    ) -> None:
        """Record a failed attempt (``relayed``: the upstream's own body, if the client should get it as is)."""
        cls = failure.failure_class
        self._health.failure(channel, credential, cls, latency_s, failure.error.retry_after)
        self._metrics.count_attempt(channel.provider, channel.model, cls.value)
        self._failures.append((failure, relayed))
        self.last_class = cls
        self._record(channel, credential, failure.status, cls.value, latency_s)

    def unsuitable(self, channel: Channel, err: GatewayError) -> None:
        """Pass over a channel whose wire cannot express the request (``err``: a 400 naming the field).

        No failure is counted; ``err`` is the answer only if no other channel serves the request.
        """
        self._health.release(channel)
        self._refusals.append(err)

    def succeeded(self, channel: Channel, credential: Credential, status: int, latency_s: float) -> None:
        """Record the attempt that serves the request."""
        self._health.success(channel, credential, latency_s)
        self._metrics.count_attempt(channel.provider, channel.model, "success")
        if self.records is not None:
            self._record(channel, credential, status, None, latency_s)

    def _record(self, channel: Channel, credential: Credential, status: int, cls: str | None, latency_s: float) -> None:
        if self.records is None:
            self.records = []
        self.records.append(
            {
                "provider": channel.provider,
                "credential": credential.label,
                "status": status,
                "failure_class": cls,
                "latency_ms": round(latency_s * 1000),
            }
        )

    @property
    def stopped_by_caller(self) -> bool:
        """Whether the last failure was the request's own fault (no other channel is tried)."""
        return self.last_class is FailureClass.CALLER_FAULT

    def final_error(self) -> GatewayError:
        """What the client is told when no attempt served the request.

        A refusal of the request itself, when that ended it; else, if any channel was rate limiting, 429
        with the shortest ``Retry-After`` met (the soonest a retry can succeed); else the last failure; and
        when no channel could take the request at all (``unsuitable``), the first channel's refusal.
        A same-wire Anthropic or Gemini client gets the upstream's own body when the chosen failure has one.
        """
        if not self._failures:
            if self._refusals:
                return self._refusals[0]
            return GatewayError(ErrorType.UPSTREAM_TIMEOUT, "No upstream attempt could start in time.")
        last, relayed = self._failures[-1]
        if last.failure_class is not FailureClass.CALLER_FAULT:
            limited = [(f, r) for f, r in self._failures if f.failure_class is FailureClass.RATE_LIMIT]
            if limited:
                last, relayed = min(limited, key=_wait)
        return relayed if relayed is not None else last.error


def _wait(entry: tuple[UpstreamFailure, RelayedError | None]) -> float:
    seconds = entry[0].error.retry_after
    return seconds if seconds is not None else float("inf")
