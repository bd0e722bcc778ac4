"""Production wiring: the operator's seams, built once from settings at start-up."""

from __future__ import annotations

from .artifacts import StoreArtifactFinder
from .kube import Kube
from .metrics import OperatorMetrics
from .ports import Wiring
from .router_metrics import ClusterMetrics
from .settings import OperatorSettings


def production_wiring(metrics: OperatorMetrics, kube: Kube | None = None) -> Wiring:
    settings = OperatorSettings.from_env()
    # a connection for each pass thread, and one for the reads outside passes
    kube = kube or Kube.from_environment(connections=settings.timing.workers + 1)
    kube._on_request = metrics.on_request
    cluster_metrics = ClusterMetrics(kube)
    return Wiring(
        settings=settings,
        kube=kube,
        metrics=cluster_metrics,
        artifacts=StoreArtifactFinder(),
        routers=cluster_metrics.pods,
    )
