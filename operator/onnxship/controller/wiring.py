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
from .settings import OperatorSettings


class NoMetrics:
    """Used with the gatewayAPI router until a metrics source for revision pods is wired."""

    def measure(
        self, owner: Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        return None


def production_wiring(metrics: OperatorMetrics, kube: Kube | None = None) -> Wiring:
    kube = kube or Kube.from_environment()
    kube._on_request = metrics.on_request
    return Wiring(
        settings=OperatorSettings.from_env(),
        kube=kube,
        metrics=NoMetrics(),
        artifacts=StoreArtifactFinder(),
    )
