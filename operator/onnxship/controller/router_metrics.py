"""The builtin analysis provider in a cluster: every router pod's /metrics, summed.

A router Deployment may run several replicas behind its Service; scraping the Service would
hit one at random and the deltas would mean nothing. So the operator scrapes each ready
router pod, sums the counters, and keeps the previous sum per canary to take differences.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from onnxship.api import ModelDeploymentSpec
from onnxship.plan import workloads as w
from onnxship.plan.analysis import AnalysisRequest, Measurements
from onnxship.router.metrics_source import Counters, counters_from_text, measurements_between

from .kube import Kube

log = logging.getLogger(__name__)

Fetch = Callable[[str], str]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def add(a: Counters, b: Counters) -> Counters:
    buckets: dict[float, float] = dict(a.buckets)
    for le, count in b.buckets:
        buckets[le] = buckets.get(le, 0.0) + count
    return replace(
        a,
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        mirrored=a.mirrored + b.mirrored,
        buckets=tuple(sorted(buckets.items())),
        comparisons=a.comparisons + b.comparisons,
        cosine_sum=a.cosine_sum + b.cosine_sum,
        top1=a.top1 + b.top1,
    )


class RouterPodsMetrics:
    def __init__(
        self, kube: Kube, fetch: Fetch = http_get, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.fetch = fetch
        self.clock = clock
        self.last: dict[tuple[str, str, str], tuple[float, Counters]] = {}

    def router_urls(self, owner: w.Owner) -> list[str]:
        selector = {w.L_DEPLOYMENT: owner.name, w.L_COMPONENT: "router"}
        urls = []
        for pod in self.kube.list("Pod", owner.namespace, selector):
            st = pod.get("status", {})
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions", [])
            )
            if ready and st.get("podIP"):
                urls.append(f"http://{st['podIP']}:{w.ROUTER_PORT}/metrics")
        return urls

    def measure(
        self, owner: w.Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        total = Counters(request.revision)
        urls = self.router_urls(owner)
        for url in urls:
            try:
                total = add(total, counters_from_text(self.fetch(url), request.revision))
            except OSError as exc:
                # A router pod that cannot be scraped makes the sum wrong: skip the interval.
                log.info("cannot scrape %s: %s", url, exc)
                return None
        if not urls:
            return None
        key = (owner.namespace, owner.name, request.revision)
        at = self.clock()
        previous = self.last.get(key)
        self.last[key] = (at, total)
        if previous is None:
            return None
        return measurements_between(request.revision, previous[1], total, at - previous[0])
