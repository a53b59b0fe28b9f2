"""The metrics kept in this process report exactly what prometheus-client's own Counter and Histogram report
for the same increments: names, help, types, labels, series order and values (the ``_created`` times aside)."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics

from keyrelay.metrics import MULTIPROCESS, OVERHEAD_BUCKETS, Metrics

pytestmark = pytest.mark.skipif(MULTIPROCESS, reason="the in-process metrics only exist outside multiprocess mode")


class Library:
    """The same families as prometheus-client objects, as the gateway had them before."""

    def __init__(self, per_key: bool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        who = ("key_name",) if per_key else ()
        self.per_key = per_key
        r = self.registry
        self.requests = Counter(
            "keyrelay_requests",
            "LLM requests by model, provider, group, HTTP status and error type.",
            (*who, "model", "provider", "group", "status", "error_type"),
            registry=r,
        )
        self.tokens = Counter(
            "keyrelay_tokens",
            "Tokens by model, provider, group and direction.",
            (*who, "model", "provider", "group", "direction"),
            registry=r,
        )
        self.spend = Counter(
            "keyrelay_spend_usd",
            "Spend in USD by model, provider and group.",
            (*who, "model", "provider", "group"),
            registry=r,
        )
        self.overhead = Histogram(
            "keyrelay_overhead_seconds",
            "Time spent inside keyrelay per request, excluding the upstream.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "keyrelay_upstream_attempts",
            "Upstream attempts by provider, model and outcome (success, or the failure class).",
            ("provider", "model", "outcome"),
            registry=r,
        )


def masked(text: str) -> tuple[list[str], dict[str, float]]:
    """The exposition's lines with sample values taken out, and the values by sample (``_created`` left out)."""
    lines, values = [], {}
    for line in text.splitlines():
        if "keyrelay_channel_state" in line:  # read from the gateway at scrape time, not a family compared here
            continue
        if line.startswith("#"):
            lines.append(line)
            continue
        name, value = line.rsplit(" ", 1)
        lines.append(name)
        if "_created" not in name.split("{")[0]:
            values[name] = float(value)
    return lines, values


@pytest.mark.parametrize("per_key", [False, True])
def test_the_exposition_is_the_librarys_for_the_same_increments(per_key: bool) -> None:
    rng = random.Random(7)
    ours, library = Metrics(per_key=per_key), Library(per_key)
    for _ in range(500):
        key, group = rng.choice(("k1", "k2", "k3")), rng.choice(("-", "team"))
        model, provider = rng.choice(("gpt-4o-mini", "claude")), rng.choice(("mock", "backup"))
        status, error = rng.choice(((200, ""), (502, "UPSTREAM_ERROR"), (429, "RATE_LIMITED")))
        prompt, completion, cost = rng.choice((0, 12)), rng.choice((0, 9)), rng.choice((0, 7, 1500))
        overhead = rng.choice((0.0001, 0.0002, 0.0004, 0.001, 0.02, 0.3, 5.0))
        ours.count_request(key, group, model, provider, status, error)
        ours.count_usage(key, group, model, provider, prompt, completion, cost)
        ours.observe_overhead(overhead)
        ours.count_attempt(provider, model, rng.choice(("success", "transient")))
        who = (key,) if per_key else ()
        library.requests.labels(*who, model, provider, group, str(status), error).inc()
        labels = (*who, model, provider, group)
        if prompt:
            library.tokens.labels(*labels, "prompt").inc(prompt)
        if completion:
            library.tokens.labels(*labels, "completion").inc(completion)
        if cost:
            library.spend.labels(*labels).inc(cost / 1_000_000)
        library.overhead.observe(overhead)
    # The attempts' outcomes were drawn after the other calls: replay them in the same order for the library.
    rng = random.Random(7)
    for _ in range(500):
        rng.choice(("k1", "k2", "k3")), rng.choice(("-", "team"))
        model, provider = rng.choice(("gpt-4o-mini", "claude")), rng.choice(("mock", "backup"))
        rng.choice(((200, ""), (502, "UPSTREAM_ERROR"), (429, "RATE_LIMITED")))
        rng.choice((0, 12)), rng.choice((0, 9)), rng.choice((0, 7, 1500))
        rng.choice((0.0001, 0.0002, 0.0004, 0.001, 0.02, 0.3, 5.0))
        library.attempts.labels(provider, model, rng.choice(("success", "transient"))).inc()
    our_lines, our_values = masked(ours.render().decode())
    lib_lines, lib_values = masked(generate_latest(library.registry).decode())
    assert our_lines == lib_lines
    assert our_values.keys() == lib_values.keys()
    for name, value in lib_values.items():
        assert our_values[name] == pytest.approx(value, rel=1e-12), name


def test_an_empty_process_reports_the_empty_histogram_as_the_library_does() -> None:
    ours, library = Metrics(), Library(per_key=False)
    assert masked(ours.render().decode()) == masked(generate_latest(library.registry).decode())


def test_an_observation_on_a_bound_counts_in_that_bucket_and_nan_in_none() -> None:
    ours, library = Metrics(), Library(per_key=False)
    for value in (*OVERHEAD_BUCKETS, 0.0, math.nan):
        ours.observe_overhead(value)
        library.overhead.observe(value)
    our_lines, our_values = masked(ours.render().decode())
    lib_lines, lib_values = masked(generate_latest(library.registry).decode())
    assert our_lines == lib_lines
    buckets = {k: v for k, v in lib_values.items() if "_bucket" in k or k.endswith("_count")}
    assert {k: our_values[k] for k in buckets} == buckets
    assert math.isnan(our_values["keyrelay_overhead_seconds_sum"]) and math.isnan(
        lib_values["keyrelay_overhead_seconds_sum"]
    )


def test_spend_adds_micro_dollars_exactly() -> None:
    ours = Metrics()
    for _ in range(1000):
        ours.count_usage("k", "-", "m", "p", 0, 0, 1)  # 1,000 × 0.000001 USD: a float sum drifts, micro-dollars do not
    assert 'keyrelay_spend_usd_total{group="-",model="m",provider="p"} 0.001\n' in ours.render().decode()


def test_created_series_follow_the_librarys_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, library = Metrics(), Library(per_key=False)
    ours.count_request("k", "-", "m", "p", 200, "")
    library.requests.labels("m", "p", "-", "200", "").inc()
    monkeypatch.setattr(prometheus_metrics, "_use_created", False)  # PROMETHEUS_DISABLE_CREATED_SERIES=true
    text = ours.render().decode()
    assert "_created" not in text
    assert masked(text) == masked(generate_latest(library.registry).decode())


def test_a_counter_only_goes_up() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Metrics().count_usage("k", "-", "m", "p", -1, 0, 0)
