"""The operator against KMock (kopf's Kubernetes mock server) with kopf's KopfRunner.

The handlers, the reconcile loop, the builders and the rollout engine are the real ones;
what a cluster's controllers would do (a Job finishing, Pods becoming ready) the tests do
by writing the objects' status through the mock API, as the kubelet would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kmock
import kopf
import pytest
from kopf.testing import KopfRunner

from onnxship.api import Compression, ModelDeploymentSpec
from onnxship.controller.handlers import register
from onnxship.controller.kube import Kube
from onnxship.controller.metrics import OperatorMetrics
from onnxship.controller.ports import Wiring
from onnxship.controller.settings import OperatorSettings, StoreDefaults, Timing, Workloads
from onnxship.plan.analysis import AnalysisRequest, Measurements
from onnxship.plan.workloads import Owner, StoreRef
from tests.store.conftest import s3_server  # noqa: F401  (fixture re-export)

MD = "onnxship.io/v1alpha1/modeldeployments"
NS = "default"


@dataclass
class ScriptedMetrics:
    """Simulated router metrics: what the canary did in the last interval."""

    healthy: bool = True
    requests: int = 100
    calls: list[AnalysisRequest] = field(default_factory=list)

    def measure(
        self, owner: Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        self.calls.append(request)
        errors = 0 if self.healthy else self.requests // 2
        return Measurements(
            revision=request.revision,
            requests=self.requests,
            errors=errors,
            latency_p99_ms=20.0,
            comparisons=self.requests if request.mirroring else 0,
            cosine=0.999 if self.healthy else 0.5,
            interval_seconds=request.interval_seconds,
        )


@dataclass
class StoreIndex:
    """Artifacts already in the store, by pinned digest (as another cluster left them)."""

    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    lookups: int = 0

    def find(
        self,
        store: StoreRef,
        credentials: dict[str, str],
        source_sha256: str,
        compression: Compression,
        execution_provider: str,
        kind: str = "",
        own_prompts: bool = False,
    ) -> dict[str, Any] | None:
        self.lookups += 1
        return self.known.get(source_sha256)


@dataclass
class Cluster:
    """The mock API server plus helpers that play the cluster's controllers."""

    server: Any
    metrics: ScriptedMetrics
    index: StoreIndex
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    finder: Any = None  # an ArtifactFinder to use instead of ``index`` (e.g. a real store)
    # (verb, kind, subresource) -> the error the API server would answer, or None. Raised in
    # the operator's client before the request: KMock stores every create, even one a
    # reaction answers 403, and its watch then reports an object a real server never made.
    refuse: Callable[[str, str, str], Exception | None] | None = None

    def objects(self, resource: str, namespace: str = NS) -> dict[str, dict[str, Any]]:
        out = {}
        for (res, ns, name), obj in list(self.server.objects.items()):
            if _resource_str(res) == resource and ns == namespace and not obj.deleted:
                out[name] = obj.raw
        return out

    def get(self, resource: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        return self.objects(resource, namespace).get(name)

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = ""
    ) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            await asyncio.sleep(0.05)

    async def apply(self, doc: dict[str, Any], namespace: str = NS) -> None:
        # The API server gives every object a uid; kopf keys its daemons by it.
        uid = f"uid-{namespace}-{doc['metadata']['name']}"
        doc = {**doc, "metadata": {"uid": uid, **doc["metadata"], "namespace": namespace}}
        path = f"/apis/onnxship.io/v1alpha1/namespaces/{namespace}/modeldeployments"
        resp = await self.server.post(path, json=doc)
        assert resp.status < 300, await resp.text()

    async def create(self, path: str, obj: dict[str, Any]) -> None:
        resp = await self.server.post(path, json=obj)
        assert resp.status < 300, await resp.text()

    async def patch(self, path: str, patch: dict[str, Any]) -> None:
        resp = await self.server.patch(path, json=patch)
        assert resp.status < 300, await resp.text()

    async def patch_md(self, name: str, patch: dict[str, Any]) -> None:
        await self.patch(
            f"/apis/onnxship.io/v1alpha1/namespaces/{NS}/modeldeployments/{name}", patch
        )

    async def finish_job(
        self, name: str, exit_code: int = 0, message: str = "", namespace: str = NS
    ) -> None:
        """Play the kubelet, then the Job controller: the Pod ends with this code, then the Job
        is marked finished (in that order, as in a cluster)."""
        condition = "Complete" if exit_code == 0 else "Failed"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-x7k2p",
                "namespace": namespace,
                "labels": {"job-name": name},
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "compress",
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "message": message,
                                "finishedAt": "2026-11-23T10:00:00Z",
                            }
                        },
                    }
                ]
            },
        }
        await self.server.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
        await self.patch(
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
            {
                "status": {
                    "conditions": [{"type": condition, "status": "True"}],
                    "succeeded" if exit_code == 0 else "failed": 1,
                }
            },
        )

    async def make_ready(self, deployment: str, namespace: str = NS) -> None:
        """Play the Deployment controller: every replica is ready."""
        obj = self.get("apps/v1/deployments", deployment, namespace)
        assert obj is not None, deployment
        n = obj["spec"]["replicas"]
        await self.patch(
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}",
            {
                "status": {
                    "replicas": n,
                    "readyReplicas": n,
                    "updatedReplicas": n,
                    "availableReplicas": n,
                }
            },
        )


def _resource_str(res: Any) -> str:
    group = getattr(res, "group", "") or ""
    version = getattr(res, "version", "")
    plural = getattr(res, "plural", "")
    return f"{group}/{version}/{plural}" if group else f"{version}/{plural}"


@asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Runs ``work`` (a test playing the kubelet, say) for the length of the block."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def compress_result(cache_key: str, ratio: float = 0.26, cache_hit: bool = False) -> str:
    """What `onnxship compress --result-file` leaves in the Pod's termination message."""
    return json.dumps(
        {
            "ok": True,
            "cacheKey": cache_key,
            "artifactUri": f"s3://artifacts/team/manifests/{cache_key}.json",
            "cacheHit": cache_hit,
            "report": {
                "originalBytes": 1000,
                "compressedBytes": int(1000 * ratio),
                "ratio": ratio,
                "accuracy": {"metric": "cosine", "mean": 0.995, "min": 0.99},
            },
        }
    )


@pytest.fixture
async def cluster(kmock: Any) -> AsyncIterator[Cluster]:
    kmock.resources.load_bundled()
    kmock.resources[MD] = kmock_resource_info()
    yield Cluster(server=kmock, metrics=ScriptedMetrics(), index=StoreIndex())


def kmock_resource_info() -> Any:
    return kmock.ResourceInfo(
        kind="ModelDeployment",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    )


class RunningOperator:
    """The operator in kopf's KopfRunner thread, stopped with ``async with`` while KMock
    goes on answering.

    KMock serves from the test's event loop. A plain ``with`` stops the operator by joining
    its thread from that loop, which then answers nothing: a request the operator's shutdown
    still waits for (a status patch, a kopf worker's annotation patch in flight) can then
    never end, and KopfRunner gives up after 30 s with "The operator didn't stop".
    """

    def __init__(self, runner: KopfRunner, shared: dict[str, Any]) -> None:
        self._runner = runner
        self._shared = shared

    async def __aenter__(self) -> dict[str, Any]:
        self._runner.__enter__()
        return self._shared

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self._runner.__exit__, *exc)


@pytest.fixture
def operator(cluster: Cluster) -> Callable[..., RunningOperator]:
    """The operator, to run with ``async with operator():``; enter it again to restart it."""

    def run(timing: Timing | None = None) -> RunningOperator:
        registry = kopf.OperatorRegistry()

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=str(cluster.server.url), token="test")

        def make_wiring(metrics: OperatorMetrics) -> Wiring:
            def record(verb: str, kind: str, sub: str) -> None:
                metrics.on_request(verb, kind, sub)
                cluster.requests.append((verb, kind, sub))
                if cluster.refuse is not None and (error := cluster.refuse(verb, kind, sub)):
                    raise error

            return Wiring(
                settings=OperatorSettings(
                    store=StoreDefaults(uri="s3://artifacts/team/", credentials_secret="s3-creds"),
                    # Clients here hold no connection: a canary's steps need not wait the
                    # pods' 10 s connection age after the Service moves to its router.
                    workloads=Workloads(connection_max_age_seconds=0.5),
                    # A long resync: progress must come from events and the plan's deadlines.
                    timing=timing or Timing(resync_seconds=30, min_requeue_seconds=0.05),
                ),
                kube=Kube(Kube.for_url(str(cluster.server.url))._api, on_request=record),
                metrics=cluster.metrics,
                artifacts=cluster.finder or cluster.index,
            )

        shared = register(registry, make_wiring, login=False)
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        runner = KopfRunner(
            ["run", "-A", "--standalone"], registry=registry, settings=settings, timeout=30
        )
        return RunningOperator(runner, shared)

    return run
