"""Settlement of an admitted request: the limits charge, the durable usage record, metrics and the log line."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

import orjson

from keyrelay.cache.keycache import Principal
from keyrelay.gateway.call import Outcome
from keyrelay.gateway.client_ip import IPAddress, ip_text
from keyrelay.gateway.pricing import cost_micros
from keyrelay.limits.backend import LimitsBackend, Reservation
from keyrelay.limits.periods import spend_period
from keyrelay.metrics import Metrics
from keyrelay.protocols.base import InboundRequest
from keyrelay.protocols.canonical import Usage
from keyrelay.usage.records import UsageRecord, record_to_json
from keyrelay.usage.writer import UsageWriter

log = logging.getLogger("keyrelay.gateway")


class Settlement:
    """Settles admitted requests: one per gateway."""

    def __init__(self, limits: LimitsBackend, writer: UsageWriter, metrics: Metrics) -> None:
        self._limits = limits
        self._writer = writer
        self._metrics = metrics

    async def charge(
        self,
        principal: Principal,
        request: InboundRequest,
        reservation: Reservation,
        outcome: Outcome,
        request_id: str,
        client_ip: IPAddress | None,
        started: float,
        admitted_at: datetime,
    ) -> None:
        """Price ``outcome``, charge it against ``reservation`` and make its usage record durable.

        Awaited before the response's last bytes are sent, so that every response a client saw complete has its
        record and its charge, even if the process is killed right after. With Redis the record goes into the
        usage stream in the settlement's own atomic step (``limits/redis.py``, drained by ``usage/stream.py``);
        otherwise, or if Redis did not take it, into the usage writer's queue and its local journal (this tick's
        group commit, awaited). A charge cancelled while Redis settles it queues its record locally as well (not
        awaited): the store writes one copy per request id. Charged against the admission time ``admitted_at``
        (UTC): the charge belongs to the periods the reservation was held in. Marks ``outcome.recorded`` and sets
        ``outcome.cost_micros``.
        """
        outcome.recorded = True
        channel = outcome.channel
        usage = outcome.usage or Usage(0, 0)
        cost = cost_micros(channel, usage, principal.policy.price_multiplier_ppm) if channel else 0
        outcome.cost_micros = cost
        key = principal.key
        ip = ip_text(client_ip) if client_ip else None
        record = UsageRecord(
            request_id=request_id,
            created_at=admitted_at,
            key_hash=key.hash,
            key_name=key.name,
            account_id=principal.account.id,
            key_period=spend_period(principal.policy.limit_reset, admitted_at),
            group_id=principal.group.id if principal.group else None,
            group_period=spend_period(principal.group.quota_reset, admitted_at) if principal.group else None,
            model=request.model,
            provider=channel.provider if channel else None,
            streamed=request.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            protocol=request.protocol.value,
            upstream_kind=channel.kind if channel else None,
            cost_micros=cost,
            usage_estimated=usage.estimated,
            status=outcome.status,
            error_type=outcome.error_type,
            latency_ms=round((time.perf_counter() - started) * 1000),
            ttft_ms=outcome.ttft_ms,
            client_ip=ip,
            attempts=orjson.dumps(outcome.attempts).decode() if outcome.attempts else None,
            key_id=key.id,
        )
        writer = self._writer
        writer.touch(key.hash, admitted_at, ip, key.id)
        tokens = usage.prompt_tokens + usage.completion_tokens
        if self._limits.takes_records:
            # The record goes with the settlement (Redis), which goes on to its end if this request is cancelled
            # meanwhile (its client gone, a shutdown): the backend raises the cancellation once it knows the outcome.
            line = record_to_json(record)
            try:
                taken = await self._limits.settle(
                    reservation, cost_micros=cost, tokens=tokens, now=time.time(), record=line
                )
            except asyncio.CancelledError:
                # Whether Redis took the record is not known here: the local journal keeps a copy as well, and the
                # store writes a request id once (a second copy is skipped, charging nothing).
                writer.enqueue(record)
                raise
            if taken:
                writer.sent.add(line, record)  # this process's drain reads it back without a decode
                return
        writer.enqueue(record)  # no Redis, or Redis did not take it (its settlement is deferred)
        if not self._limits.takes_records:
            await self._limits.settle(reservation, cost_micros=cost, tokens=tokens, now=time.time())
        await writer.journaled()

    async def settle(
        self,
        principal: Principal,
        request: InboundRequest,
        reservation: Reservation,
        outcome: Outcome,
        request_id: str,
        client_ip: IPAddress | None,
        started: float,
        admitted_at: datetime,
    ) -> None:
        """Count ``outcome`` in the metrics and log it, after charging it unless ``charge`` did already.

        Marks ``outcome.settled``.
        """
        outcome.settled = True
        if not outcome.recorded:
            await self.charge(principal, request, reservation, outcome, request_id, client_ip, started, admitted_at)
        channel = outcome.channel
        usage = outcome.usage or Usage(0, 0)
        cost = outcome.cost_micros
        elapsed = time.perf_counter() - started
        key = principal.key
        model = request.model
        m = self._metrics
        group = principal.group.name if principal.group else "-"
        provider = channel.provider if channel else "-"
        m.count_request(key.name, group, model, provider, outcome.status, outcome.error_type or "")
        m.count_usage(key.name, group, model, provider, usage.prompt_tokens, usage.completion_tokens, cost)
        if outcome.overhead_s is not None:  # the value of this request's x-keyrelay-overhead-ms header
            m.observe_overhead(outcome.overhead_s)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request %s key=%s (%s) model=%s provider=%s status=%s error=%s tokens=%d+%d cost_usd=%.6f ms=%d",
                request_id,
                key.name,
                key.display,
                model,
                channel.provider if channel else "-",
                outcome.status,
                outcome.error_type or "-",
                usage.prompt_tokens,
                usage.completion_tokens,
                cost / 1_000_000,
                round(elapsed * 1000),
            )


def log_request(
    request_id: str, principal: Principal | None, method: str, path: str, status: int, error: str, started: float
) -> None:
    """The one log line of a request refused before it reached an upstream."""
    if log.isEnabledFor(logging.INFO):
        who = f"{principal.key.name} ({principal.key.display})" if principal else "-"
        ms = round((time.perf_counter() - started) * 1000)
        log.info("request %s key=%s %s %s status=%d error=%s ms=%d", request_id, who, method, path, status, error, ms)
