"""Prometheus metrics: requests, tokens, spend, upstream attempts, channel states, overhead.

One process keeps its metrics in memory. The workers of ``serve --workers N`` use prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``serve`` before it starts them): each worker's
counters and histograms live in memory-mapped files of one directory, and a scrape of any worker sums every
worker's, with the same names and labels as one process has (a counter of a worker that died keeps its
last value, so no total ever goes down). That costs about 4 µs more per request than in memory (measured:
0.8 against 0.3 µs a counter increment, 1.6 against 0.6 µs a histogram observation). The channel states
are not summed: every worker shares them over Redis, and the scraped worker reports its own view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Whether this process's prometheus-client was imported in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set).
MULTIPROCESS = values.ValueClass is not values.MutexValue

OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    """The gateway's metric families, in their own registry (no global state).

    Every label has a bounded set of values (Prometheus' guidance on cardinality): the model (one the
    configuration serves, or ``-`` for a request refused before one was resolved), the provider, the
    account's group (``-`` for none), the HTTP status and the error type. Per-key figures come from the
    usage API; ``per_key`` (``KEYRELAY_METRICS_PER_KEY``) adds a ``key_name`` label to requests, tokens and
    spend, one series set per key used, for small deployments only.
    """

    def __init__(self, *, per_key: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._per_key = per_key
        who = ("key_name",) if per_key else ()
        self.requests = Counter(
            "keyrelay_requests",
            "LLM requests by model, provider, group, HTTP status and error type.",
            (*who, "model", "provider", "group", "status", "error_type"),
            registry=self.registry,
        )
        self.tokens = Counter(
            "keyrelay_tokens",
            "Tokens by model, provider, group and direction.",
            (*who, "model", "provider", "group", "direction"),
            registry=self.registry,
        )
        self.spend = Counter(
            "keyrelay_spend_usd",
            "Spend in USD by model, provider and group.",
            (*who, "model", "provider", "group"),
            registry=self.registry,
        )
        self.overhead = Histogram(
            "keyrelay_overhead_seconds",
            "Time spent inside keyrelay per request, excluding the upstream.",
            buckets=OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            "keyrelay_upstream_attempts",
            "Upstream attempts by provider, model and outcome (success, or the failure class).",
            ("provider", "model", "outcome"),
            registry=self.registry,
        )
        self.channel_states: Callable[[], Iterable[tuple[str, str, int]]] = tuple
        self._states = _ChannelStates(self)
        if not MULTIPROCESS:
            self.registry.register(self._states)
        self._children: dict[tuple[object, ...], Any] = {}

    def count_attempt(self, provider: str, model: str, outcome: str) -> None:
        """Count one upstream attempt (``outcome``: ``success`` or a ``FailureClass`` value)."""
        self._child(self.attempts, provider, model, outcome).inc()

    def count_request(self, key_name: str, group: str, model: str, provider: str, status: int, error_type: str) -> None:
        """Count one request (labelled children are cached: ``labels()`` is too slow per request).

        ``key_name`` is a label only with ``per_key``; ``-`` stands for a group, model or provider there is none of.
        """
        if self._per_key:
            self._child(self.requests, key_name, model, provider, group, str(status), error_type).inc()
        else:
            self._child(self.requests, model, provider, group, str(status), error_type).inc()

    def count_usage(
        self, key_name: str, group: str, model: str, provider: str, prompt: int, completion: int, cost_micros: int
    ) -> None:
        """Add one request's tokens and spend (micro-dollars, exported in USD)."""
        labels = (key_name, model, provider, group) if self._per_key else (model, provider, group)
        if prompt:
            self._child(self.tokens, *labels, "prompt").inc(prompt)
        if completion:
            self._child(self.tokens, *labels, "completion").inc(completion)
        if cost_micros:
            self._child(self.spend, *labels).inc(cost_micros / 1_000_000)

    def _child(self, family: Counter, *labels: str) -> Any:
        slot = (id(family), *labels)
        child = self._children.get(slot)
        if child is None:
            if len(self._children) > 100_000:  # bounded labels never get here; per-key ones might
                self._children.clear()
            child = self._children[slot] = family.labels(*labels)
        return child

    def render(self) -> bytes:
        """The text exposition format: this process's metrics, or every worker's summed (multiprocess mode)."""
        if not MULTIPROCESS:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(self._states)
        return generate_latest(registry)


class _ChannelStates(Collector):
    """``keyrelay_channel_state``, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One state sample per channel: 0 closed, 1 half-open, 2 open."""
        states = GaugeMetricFamily(
            "keyrelay_channel_state",
            "Circuit breaker state per channel: 0 closed, 1 half-open, 2 open.",
            labels=("provider", "model"),
        )
        for provider, model, value in self._metrics.channel_states():
            states.add_metric((provider, model), value)
        yield states
