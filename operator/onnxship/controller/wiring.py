"""Production wiring: the operator's seams, built once from settings at start-up."""

from __future__ import annotations

from datetime import datetime

from onnxship.api import ModelDeploymentSpec
from onnxship.plan.analysis import AnalysisRequest, Measurements
from onnxship.plan.workloads import Owner

from .artifacts import StoreArtifactFinder
from .kube import Kube
from .metrics import OperatorMetrics
from .ports import Wiring
from .router_metrics import RouterPodsMetrics
from .settings import OperatorSettings


class NoMetrics:
    """gatewayAPI mode: the revisions' own /metrics are not read yet, so analysis waits
    for nothing and steps advance on time alone (said in the README's limits)."""

    def measure(
        self, owner: Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        return None


class ByRouter:
    """The builtin router's metrics when the spec uses it, nothing otherwise."""

    def __init__(self, kube: Kube) -> None:
        self.router = RouterPodsMetrics(kube)
        self.none = NoMetrics()

    def measure(
        self, owner: Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        source = self.router if spec.rollout.traffic.router == "builtin" else self.none
        return source.measure(owner, spec, request, now)


def production_wiring(metrics: OperatorMetrics, kube: Kube | None = None) -> Wiring:
    kube = kube or Kube.from_environment()
    kube._on_request = metrics.on_request
    return Wiring(
        settings=OperatorSettings.from_env(),
        kube=kube,
        metrics=ByRouter(kube),
        artifacts=StoreArtifactFinder(),
    )
