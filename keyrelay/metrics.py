"""Prometheus metrics of one process: requests, tokens, spend and the gateway's own overhead."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    """The gateway's metric families, in their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keyrelay_requests",
            "LLM requests by key name, model, HTTP status and error type.",
            ("key_name", "model", "status", "error_type"),
            registry=self.registry,
        )
        self.tokens = Counter(
            "keyrelay_tokens",
            "Tokens by key name, model and direction.",
            ("key_name", "model", "direction"),
            registry=self.registry,
        )
        self.spend = Counter(
            "keyrelay_spend_usd", "Spend in USD by key name and model.", ("key_name", "model"), registry=self.registry
        )
        self.overhead = Histogram(
            "keyrelay_overhead_seconds",
            "Time spent inside keyrelay per request, excluding the upstream.",
            buckets=OVERHEAD_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
