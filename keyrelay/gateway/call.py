"""One LLM request as the forwarding stages see it: the call, its outcome, and a relayed upstream error."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from keyrelay.errors import GatewayError
from keyrelay.gateway.wires import Inbound
from keyrelay.protocols.base import InboundRequest, ProtocolName
from keyrelay.protocols.canonical import ChatRequest, Usage
from keyrelay.routing.table import Channel


class RelayedError(GatewayError):
    """An upstream's own error answer, relayed unmodified (scrubbed of keyrelay's provider secrets).

    Used on same-wire passthroughs of the Anthropic and Gemini wires, whose clients match on the
    provider's own wording (Claude Code compacts its context on "prompt is too long"); ``error_type`` is
    keyrelay's reading of it, for metrics, the usage record and the ``x-keyrelay-error-type`` header.
    """

    def __init__(self, error: GatewayError, body: bytes, content_type: bytes) -> None:
        super().__init__(error.error_type, error.message, status=error.status, retry_after=error.retry_after)
        self.body = body
        self.content_type = content_type


@dataclass(slots=True)
class Call:
    """One LLM request as the forwarding stages see it: the judged request and what it was sent with."""

    request: InboundRequest
    inbound: Inbound
    sse: bool  # Gemini: the client asked for ?alt=sse (else a JSON-array stream)
    anthropic_headers: list[tuple[str, str]]  # anthropic-version and anthropic-beta, for Anthropic upstreams
    canonical: ChatRequest | None = None

    def upstream_wire(self, channel: Channel) -> ProtocolName:
        """The wire this call speaks to ``channel``: its kind's, but Responses to an OpenAI upstream.

        OpenAI's own API serves the Responses API beside Chat Completions; other OpenAI-compatible servers
        may not, so a Responses client on ``kind: openai-compatible`` is translated to Chat Completions.
        """
        if self.request.protocol is ProtocolName.RESPONSES and channel.kind == "openai":
            return ProtocolName.RESPONSES
        return channel.wire

    def same_wire(self, channel: Channel) -> bool:
        """Whether ``channel`` speaks the client's wire (then the call is a passthrough)."""
        protocol = self.request.protocol
        wire = channel.wire
        if protocol is ProtocolName.RESPONSES:  # inline ``upstream_wire``: this runs several times per request
            return channel.kind == "openai"
        if wire is not protocol:
            return False
        # A Gemini JSON-array stream is read from the upstream as SSE and re-encoded.
        return not (wire is ProtocolName.GEMINI and self.request.stream and not self.sse)

    def to_canonical(self) -> ChatRequest:
        """The canonical request, translated once on first use."""
        if self.canonical is None:
            self.canonical = self.inbound.to_canonical(self.request)
        return self.canonical


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for settlement and the usage record."""

    status: int = 0
    error_type: str | None = None
    channel: Channel | None = None
    usage: Usage | None = None
    ttft_ms: int | None = None
    upstream_s: float = 0.0
    overhead_s: float | None = None  # keyrelay's own time before the first byte: the header and the metric
    attempts: list[dict[str, Any]] | None = None  # every attempt, when one failed (the usage record's list)
    recorded: bool = False  # the usage record is queued (and journaled): done before the response's last bytes
    cost_micros: int = 0  # the charge of the usage record, once recorded
    settled: bool = False  # counted in the metrics and the usage record
    started: bool = False  # the response status line has been sent
    # For the request's trace (keyrelay/tracing.py): the decoded request and who sent it, once known.
    request: InboundRequest | None = None
    key_name: str | None = None


def with_output_limit(canonical: ChatRequest, default_max_tokens: int) -> ChatRequest:
    """The request with the output limit Anthropic requires: the client's, else the default ceiling.

    With the default ceiling (the client gave none, as Gemini CLI does), a thinking budget at or above it is
    lowered to one token below it: Anthropic needs the budget below ``max_tokens``, and the ceiling is what
    keyrelay reserved the cost for.
    """
    if canonical.max_tokens is not None:
        return canonical
    reasoning = canonical.reasoning
    if reasoning is not None and reasoning.budget_tokens is not None and reasoning.budget_tokens >= default_max_tokens:
        reasoning = replace(reasoning, budget_tokens=default_max_tokens - 1)
    return replace(canonical, max_tokens=default_max_tokens, reasoning=reasoning)
