"""Prometheus metrics: requests, tokens, spend, upstream attempts, channel states, overhead.

One process keeps its metrics in plain dictionaries and reports them at scrape time through a collector of
its own (``_LocalCounter``, ``_LocalHistogram``): prometheus-client's counter children (cached per label
values) cost 7.2 µs for one request's five increments and one observation on the benchmark VM, these
1.4–1.8 µs (measured; each of its increments takes a lock and goes through two more calls), with the same
exposition, sample for sample (``tests/unit/test_metrics.py`` compares the two), ``_created`` series
included unless the library's own switch turns them off (``PROMETHEUS_DISABLE_CREATED_SERIES``).

The workers of ``serve --workers N`` use prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by ``serve`` before it starts them) through its own classes: each worker's counters and histograms live
in memory-mapped files of one directory, and a scrape of any worker sums every worker's, with the same names
and labels as one process has (a counter of a worker that died keeps its last value, so no total ever goes
down). That costs a few µs more per request (measured before: 0.8 against 0.3 µs a counter increment, 1.6
against 0.6 µs a histogram observation). The channel states are not summed: every worker shares them over
Redis, and the scraped worker reports its own view.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# Whether this process's prometheus-client was imported in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set).
MULTIPROCESS = values.ValueClass is not values.MutexValue

OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class _Family(Protocol):
    """A counter family: ``add`` to the series of some label values (in the family's label order)."""

    def add(self, labels: tuple[str, ...], amount: float) -> None: ...


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _LocalCounter:
    """A counter family held in this process: one number per series, reported at scrape time.

    Each series starts at its first ``add`` (its ``_created`` time, as prometheus-client's children have) and only
    goes up; amounts are in ``scale`` units (spend: micro-dollars, exported in USD), so integer amounts add
    exactly. Only the event loop's thread adds and scrapes.
    """

    __slots__ = ("_created", "_values", "documentation", "labelnames", "name", "scale")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], scale: float = 1.0) -> None:
        self.name, self.documentation, self.labelnames, self.scale = name, documentation, tuple(labelnames), scale
        self._values: dict[tuple[str, ...], float] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], amount: float) -> None:
        """Add ``amount`` to the series of ``labels``.

        Raises:
            ValueError: ``amount`` is negative (a counter only goes up, as prometheus-client's ``inc`` says).
        """
        if amount < 0:
            raise ValueError(f"counters can only be incremented by non-negative amounts, not {amount}")
        values = self._values
        if labels in values:
            values[labels] += amount
        else:
            values[labels] = amount
            self._created[labels] = time.time()

    def family(self) -> CounterMetricFamily:
        """The family's samples now, as prometheus-client's ``Counter`` reports them."""
        out = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        scale, created = self.scale, self._created
        with_created = _created_series()
        for labels, value in list(self._values.items()):
            out.add_metric(labels, float(value) / scale, created=created[labels] if with_created else None)
        return out


class _LocalHistogram:
    """A histogram without labels held in this process (upper bounds ascending; ``+Inf`` added)."""

    __slots__ = ("_bounds", "_counts", "_created", "_sum", "documentation", "name")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0
        self._created = time.time()

    def observe(self, amount: float) -> None:
        """Count one observation: in the first bucket whose upper bound is ≥ ``amount``.

        As prometheus-client's: a NaN goes into no bucket (nor the count) and makes the sum NaN.
        """
        if amount == amount:
            self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def family(self) -> Metric:
        """The histogram's samples now, as prometheus-client's ``Histogram`` reports them."""
        out = HistogramMetricFamily(self.name, self.documentation, labels=())
        cumulative, buckets = 0, []
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), float(cumulative)))  # type: ignore[no-untyped-call]
        out.add_metric((), buckets, self._sum)
        if _created_series():
            out.samples.append(Sample(self.name + "_created", {}, self._created))
        return out


def _created_series() -> bool:
    """Whether prometheus-client reports ``_created`` series now.

    Its own module-level switch (``PROMETHEUS_DISABLE_CREATED_SERIES``, ``disable_created_metrics()``), read at
    each scrape as its classes do.
    """
    return bool(getattr(prometheus_metrics, "_use_created", True))


class _LocalCollector(Collector):
    """Reports the local families, in the order given."""

    def __init__(self, families: Sequence[_LocalCounter | _LocalHistogram]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """Every family's samples now."""
        for family in self._families:
            yield family.family()


class _LibraryCounter:
    """A prometheus-client ``Counter`` (multiprocess mode) behind ``add``; its labelled children cached.

    Amounts are in ``scale`` units, as ``_LocalCounter``'s; the library's counter holds them divided by it.
    """

    def __init__(self, counter: Counter, scale: float = 1.0) -> None:
        self._counter = counter
        self._scale = scale
        self._children: dict[tuple[str, ...], Any] = {}

    def add(self, labels: tuple[str, ...], amount: float) -> None:
        """``inc`` the child of ``labels`` (``labels()`` is too slow per request)."""
        child = self._children.get(labels)
        if child is None:
            if len(self._children) > 100_000:  # bounded labels never get here; per-key ones might
                self._children.clear()
            child = self._children[labels] = self._counter.labels(*labels)
        child.inc(amount / self._scale if self._scale != 1.0 else amount)


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
        # (name, documentation, label names, scale of the amounts added: spend is added in micro-dollars)
        counters = (
            (
                "keyrelay_requests",
                "LLM requests by model, provider, group, HTTP status and error type.",
                (*who, "model", "provider", "group", "status", "error_type"),
                1.0,
            ),
            (
                "keyrelay_tokens",
                "Tokens by model, provider, group and direction.",
                (*who, "model", "provider", "group", "direction"),
                1.0,
            ),
            (
                "keyrelay_spend_usd",
                "Spend in USD by model, provider and group.",
                (*who, "model", "provider", "group"),
                1e6,
            ),
        )
        attempts = (
            "keyrelay_upstream_attempts",
            "Upstream attempts by provider, model and outcome (success, or the failure class).",
            ("provider", "model", "outcome"),
            1.0,
        )
        overhead = ("keyrelay_overhead_seconds", "Time spent inside keyrelay per request, excluding the upstream.")
        self._requests: _Family
        self._tokens: _Family
        self._spend: _Family
        self._attempts: _Family
        self._overhead: _Observer
        if MULTIPROCESS:
            made = [
                _LibraryCounter(Counter(n, d, labels, registry=self.registry), scale)
                for n, d, labels, scale in (*counters, attempts)
            ]
            self._requests, self._tokens, self._spend, self._attempts = made
            self._overhead = Histogram(*overhead, buckets=OVERHEAD_BUCKETS, registry=self.registry)
        else:
            local = [_LocalCounter(n, d, labels, scale) for n, d, labels, scale in counters]
            histogram = _LocalHistogram(*overhead, OVERHEAD_BUCKETS)
            local_attempts = _LocalCounter(*attempts)
            self._requests, self._tokens, self._spend = local
            self._attempts, self._overhead = local_attempts, histogram
            self.registry.register(_LocalCollector([*local, histogram, local_attempts]))
        self.channel_states: Callable[[], Iterable[tuple[str, str, int]]] = tuple
        self._states = _ChannelStates(self)
        if not MULTIPROCESS:
            self.registry.register(self._states)

    def count_attempt(self, provider: str, model: str, outcome: str) -> None:
        """Count one upstream attempt (``outcome``: ``success`` or a ``FailureClass`` value)."""
        self._attempts.add((provider, model, outcome), 1)

    def count_request(self, key_name: str, group: str, model: str, provider: str, status: int, error_type: str) -> None:
        """Count one request.

        ``key_name`` is a label only with ``per_key``; ``-`` stands for a group, model or provider there is none of.
        """
        if self._per_key:
            self._requests.add((key_name, model, provider, group, str(status), error_type), 1)
        else:
            self._requests.add((model, provider, group, str(status), error_type), 1)

    def count_usage(
        self, key_name: str, group: str, model: str, provider: str, prompt: int, completion: int, cost_micros: int
    ) -> None:
        """Add one request's tokens and spend (micro-dollars, exported in USD)."""
        labels = (key_name, model, provider, group) if self._per_key else (model, provider, group)
        if prompt:
            self._tokens.add((*labels, "prompt"), prompt)
        if completion:
            self._tokens.add((*labels, "completion"), completion)
        if cost_micros:
            self._spend.add(labels, cost_micros)

    def observe_overhead(self, seconds: float) -> None:
        """Observe one request's time inside keyrelay (its ``x-keyrelay-overhead-ms``), in seconds."""
        self._overhead.observe(seconds)

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
