"""The operator's own Prometheus metrics (reconciles, errors, rollouts by outcome)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from onnxship.api import ModelDeploymentStatus, Phase, Reason

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

        self.phase = Gauge(
            "onnxship_modeldeployment_phase",
            "1 for the phase each ModelDeployment is in, 0 for the others.",
            ["namespace", "name", "phase"],
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "onnxship_modeldeployment_canary_weight",
            "Share of requests the canary takes, in percent.",
            ["namespace", "name"],
            registry=self.registry,
        )

    def on_status(self, namespace: str, name: str, status: ModelDeploymentStatus) -> None:
        for phase in Phase:
            self.phase.labels(namespace, name, phase.value).set(1 if status.phase == phase else 0)
        self.canary_weight.labels(namespace, name).set(status.canary_weight)

    def forget(self, namespace: str, name: str) -> None:
        for phase in Phase:
            self.phase.remove(namespace, name, phase.value)
        self.canary_weight.remove(namespace, name)

    def on_request(self, verb: str, kind: str, subresource: str) -> None:
        self.api_requests.labels(verb, kind + (f"/{subresource}" if subresource else "")).inc()

    def on_event(self, type_: str, reason: str) -> None:
        self.events.labels(type_, reason).inc()
        outcome = ROLLOUT_OUTCOMES.get(reason)  # type: ignore[call-overload]
        if outcome:
            self.rollouts.labels(outcome).inc()
