"""The router's metrics module on its own: what a scrape shows for what was observed."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from onnxship.router.metrics import COSINE_BUCKETS, LATENCY_BUCKETS, fast_inc, fast_observe


def scrape(registry: CollectorRegistry) -> list[bytes]:
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def test_the_data_paths_histograms_expose_what_observe_would() -> None:
    """``fast_observe`` (the data path's) and prometheus_client's ``observe`` fed the same
    values, bucket bounds, NaN and infinities included, scrape to the same text."""
    values = [0.0, 0.5, 0.4999, 0.50001, 0.9999, 0.99999, 1.0, 1.5, 30.0, 31.0, -2.0]
    values += [1e-9, math.inf, -math.inf, math.nan, 0.0005, 0.00051, 0.001]
    for buckets in (COSINE_BUCKETS, LATENCY_BUCKETS):
        texts = []
        for fast in (False, True):
            registry = CollectorRegistry()
            child = Histogram("h", "h", ["role"], buckets=buckets, registry=registry).labels("x")
            observe = fast_observe(child) if fast else child.observe
            assert (observe == child.observe) is not fast  # the fast path is the one tested
            for v in values:
                observe(v)
            texts.append(scrape(registry))
        assert texts[0] == texts[1]


def test_the_data_paths_counters_expose_what_inc_would() -> None:
    texts = []
    for fast in (False, True):
        registry = CollectorRegistry()
        child = Counter("c", "c", ["role"], registry=registry).labels("x")
        inc = fast_inc(child) if fast else child.inc
        assert (inc == child.inc) is not fast
        for _ in range(3):
            inc(1)
        inc(2.5)
        texts.append(scrape(registry))
    assert texts[0] == texts[1] and b'c_total{role="x"} 5.5' in texts[1]
