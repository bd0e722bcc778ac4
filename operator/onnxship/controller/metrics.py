"""The operator's own Prometheus metrics (reconciles, errors, rollouts by outcome)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from onnxship.api import Reason

# Events whose reason ends a rollout, and the outcome each one stands for.
ROLLOUT_OUTCOMES = {
    Reason.rollout_completed: "completed",
    Reason.rolled_back: "rolled_back",
    Reason.aborted: "aborted",
    Reason.progress_deadline_exceeded: "deadline_exceeded",
}


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "onnxship_operator_reconciles_total",
            "Reconcile passes by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "onnxship_operator_reconcile_duration_seconds",
            "Time of one reconcile pass.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_requests = Counter(
            "onnxship_operator_api_requests_total",
            "Kubernetes API requests made by reconciles, by verb and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.rollouts = Counter(
            "onnxship_operator_rollouts_total",
            "Rollouts that ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "onnxship_operator_events_total",
            "Kubernetes Events posted, by type and reason.",
            ["type", "reason"],
            registry=self.registry,
        )

    def on_request(self, verb: str, kind: str, subresource: str) -> None:
        self.api_requests.labels(verb, kind + (f"/{subresource}" if subresource else "")).inc()

    def on_event(self, type_: str, reason: str) -> None:
        self.events.labels(type_, reason).inc()
        outcome = ROLLOUT_OUTCOMES.get(reason)  # type: ignore[call-overload]
        if outcome:
            self.rollouts.labels(outcome).inc()
