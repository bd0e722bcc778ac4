"""The router's Prometheus metrics: per revision, per status code, per role.

``role`` is ``primary`` for requests whose answer went to the user and ``mirror`` for copies
sent to the canary in a mirror step. ``plan`` never sees these names: ``metrics_source``
turns two scrapes into ``plan.analysis.Measurements``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUESTS = "onnxship_router_requests_total"
DURATION = "onnxship_router_request_duration_seconds"
COMPARISONS = "onnxship_router_mirror_comparisons_total"
COSINE = "onnxship_router_mirror_cosine"
TOP1 = "onnxship_router_mirror_top1_agreements_total"
AGREEMENT = "onnxship_router_mirror_agreement"
MAX_ABS_DIFF = "onnxship_router_mirror_max_abs_diff"

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
COSINE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
DIFF_BUCKETS = (1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0, 10.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            REQUESTS.removesuffix("_total"),
            "Requests proxied, by revision, environment, status code and role (primary|mirror).",
            ["revision", "environment", "code", "role"],
            registry=r,
        )
        self.duration = Histogram(
            DURATION,
            "Backend round-trip time seen by the router, by revision and role.",
            ["revision", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.comparisons = Counter(
            COMPARISONS.removesuffix("_total"),
            "Mirrored requests whose canary answer was compared with stable's.",
            ["revision", "baseline"],
            registry=r,
        )
        self.cosine = Histogram(
            COSINE,
            "Cosine similarity of canary vs stable outputs on mirrored requests.",
            ["revision", "baseline"],
            buckets=COSINE_BUCKETS,
            registry=r,
        )
        self.top1 = Counter(
            TOP1.removesuffix("_total"),
            "Mirrored comparisons whose top-1 (argmax) agreed on every row.",
            ["revision", "baseline"],
            registry=r,
        )
        self.max_abs_diff = Histogram(
            MAX_ABS_DIFF,
            "Largest absolute output difference, canary vs stable, per mirrored request.",
            ["revision", "baseline"],
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.agreement = Gauge(
            AGREEMENT,
            "Mean cosine agreement of the canary with stable since the mirror started.",
            ["revision", "baseline"],
            registry=r,
        )
        self.mirror_dropped = Counter(
            "onnxship_router_mirror_dropped",
            "Mirror copies not sent because too many were in flight.",
            registry=r,
        )
        self.weight = Gauge(
            "onnxship_router_backend_weight",
            "Weight of each revision in each environment, in percent.",
            ["revision", "environment"],
            registry=r,
        )
        self.mirror_percent = Gauge(
            "onnxship_router_mirror_percent",
            "Share of requests mirrored.",
            ["revision"],
            registry=r,
        )
        self.reloads = Counter(
            "onnxship_router_route_reloads",
            "Route table changes, by source (file|admin) and result (ok|invalid).",
            ["source", "result"],
            registry=r,
        )
        self.ejections = Counter(
            "onnxship_router_backend_ejections",
            "Times a backend was skipped for a while after failing to answer.",
            ["revision", "url"],
            registry=r,
        )
        self._children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}
        self._agreement_sums: dict[tuple[str, str], tuple[float, int]] = {}

    def observe(
        self, revision: str, environment: str, code: int, role: str, seconds: float
    ) -> None:
        # labels() hashes and locks on every call; the children never change, so keep them.
        key = (revision, environment, code, role)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self.requests.labels(revision, environment, str(code), role),
                self.duration.labels(revision, role),
            )
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def compared(
        self, revision: str, baseline: str, cosine: float, top1: float, diff: float
    ) -> None:
        self.comparisons.labels(revision, baseline).inc()
        self.cosine.labels(revision, baseline).observe(cosine)
        if top1 >= 1.0:
            self.top1.labels(revision, baseline).inc()
        self.max_abs_diff.labels(revision, baseline).observe(diff)
        total, n = self._agreement_sums.get((revision, baseline), (0.0, 0))
        total, n = total + cosine, n + 1
        self._agreement_sums[(revision, baseline)] = (total, n)
        self.agreement.labels(revision, baseline).set(total / n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
