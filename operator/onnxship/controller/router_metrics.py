"""The analysis providers in a cluster: pods' /metrics, summed, or Prometheus.

builtin provider: with the builtin router, every ready router pod's /metrics (a router
Deployment may run several replicas behind its Service; scraping the Service would hit one
at random and the deltas would mean nothing); with ``router: gatewayAPI``, no onnxship
router sees the traffic, so the canary's own ready pods. The operator sums the counters and
keeps the previous sum per canary to take differences. ``provider: prometheus`` asks PromQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from onnxship.api import ModelDeploymentSpec
from onnxship.plan import workloads as w
from onnxship.plan.analysis import AnalysisRequest, Measurements
from onnxship.router.metrics_source import (
    Counters,
    counters_from_text,
    measurements_between,
    serve_counters,
    summed,
)

from .kube import Kube

log = logging.getLogger(__name__)
# The router's gauges of the table it has loaded (onnxship.router.metrics).
ROUTED = ("onnxship_router_backend_weight", "onnxship_router_mirror_percent")

Fetch = Callable[[str], str]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


class PodMetrics:
    def __init__(
        self, kube: Kube, fetch: Fetch = http_get, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.fetch = fetch
        self.clock = clock
        self.last: dict[tuple[str, str, str], tuple[float, Counters]] = {}

    def ready_urls(self, owner: w.Owner, selector: dict[str, str], port: int) -> list[str]:
        urls = []
        for pod in self.kube.list("Pod", owner.namespace, selector):
            st = pod.get("status", {})
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions", [])
            )
            if ready and st.get("podIP"):
                urls.append(f"http://{st['podIP']}:{port}/metrics")
        return urls

    def routed(self, owner: w.Owner) -> frozenset[str] | None:
        """Revisions some ready router Pod still sends requests to (weight or mirror above 0
        in the table it has loaded); None when a router cannot be asked."""
        selector = {w.L_DEPLOYMENT: owner.name, w.L_COMPONENT: "router"}
        urls = self.ready_urls(owner, selector, w.ROUTER_PORT)
        try:
            texts = [self.fetch(url) for url in urls]
        except OSError as exc:
            log.info("cannot ask %s's routers what they route: %s", owner.name, exc)
            return None
        return frozenset(
            s.labels["revision"]
            for text in texts
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in ROUTED and s.value > 0 and s.labels.get("revision")
        )

    def counters(self, owner: w.Owner, spec: ModelDeploymentSpec, revision: str) -> Counters | None:
        if spec.rollout.traffic.router == "builtin":
            selector = {w.L_DEPLOYMENT: owner.name, w.L_COMPONENT: "router"}
            urls = self.ready_urls(owner, selector, w.ROUTER_PORT)
        else:
            selector = {w.L_DEPLOYMENT: owner.name, w.L_REVISION: revision}
            urls = self.ready_urls(owner, {**selector, w.L_COMPONENT: "model"}, w.HTTP_PORT)
        if not urls:
            return None
        try:
            texts = [self.fetch(url) for url in urls]
        except OSError as exc:
            # A pod that cannot be scraped makes the sum wrong: skip the interval.
            log.info("cannot scrape %s's pods: %s", owner.name, exc)
            return None
        if spec.rollout.traffic.router == "builtin":
            return summed((counters_from_text(text, revision) for text in texts), revision)
        return serve_counters(texts, revision)

    def measure(
        self, owner: w.Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        total = self.counters(owner, spec, request.revision)
        if total is None:
            return None
        key = (owner.namespace, owner.name, request.revision)
        at = self.clock()
        previous = self.last.get(key)
        self.last[key] = (at, total)
        if previous is None:
            return None
        return measurements_between(request.revision, previous[1], total, at - previous[0])


class PrometheusMetrics:
    """``provider: prometheus``: the router's (or the pods') metrics as Prometheus has them."""

    def measure(
        self, owner: w.Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        import aiohttp

        from onnxship.router.prometheus_source import PrometheusSource

        source = spec.rollout.analysis.prometheus
        if source is None:
            return None

        async def ask() -> Measurements | None:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                return await PrometheusSource(source.address, session, owner.namespace).measure(
                    request
                )

        try:
            return asyncio.run(ask())  # in the reconcile's worker thread: a loop of its own
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
            log.info("prometheus at %s: %s", source.address, exc)
            return None


class ClusterMetrics:
    """The provider the spec asks for."""

    def __init__(self, kube: Kube) -> None:
        self.pods = PodMetrics(kube)
        self.prometheus = PrometheusMetrics()

    def measure(
        self, owner: w.Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        provider = self.prometheus if spec.rollout.analysis.provider == "prometheus" else self.pods
        return provider.measure(owner, spec, request, now)
