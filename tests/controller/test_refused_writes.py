"""The API server refuses one of the operator's writes: a ResourceQuota, an admission policy
(Kyverno, Gatekeeper), no ClusterIP left. The user must see why in the ModelDeployment, not
only in the operator's log, and the rollout goes on by itself once the refusal is lifted."""

from __future__ import annotations

from typing import Any

from onnxship.controller.kube import KubeError
from tests.controller.conftest import Cluster, compress_result
from tests.controller.test_lifecycle import DEPLOYS, JOBS, condition, md, status

QUOTA = (
    'deployments.apps "{name}" is forbidden: exceeded quota: compute, requested: '
    "limits.memory=2Gi, used: limits.memory=7Gi, limited: limits.memory=8Gi"
)


async def test_a_refused_deployment_is_shown_in_status_and_retried(
    cluster: Cluster, operator: Any
) -> None:
    refusing = [True]
    refused: list[str] = []

    def quota(verb: str, kind: str, sub: str) -> KubeError | None:
        if refusing[0] and (verb, kind) == ("create", "Deployment"):
            refused.append(kind)
            return KubeError(403, QUOTA.format(name="enc-x"))  # as _call makes it of the answer
        return None

    cluster.refuse = quota
    async with operator():
        await cluster.apply(md())
        job = await cluster.wait_for(lambda: next(iter(cluster.objects(JOBS)), None), what="Job")
        await cluster.finish_job(job, 0, compress_result("k1"))
        await cluster.wait_for(
            lambda: condition(cluster, "Degraded").get("reason") == "KubernetesRefused",
            what="Degraded: KubernetesRefused",
        )
        st = status(cluster)
        assert st["phase"] == "Degraded"
        degraded = condition(cluster, "Degraded")
        assert degraded["status"] == "True"
        assert "exceeded quota" in degraded["message"] and "403" in degraded["message"]
        assert "creating revision" in degraded["message"], degraded
        events = [
            e
            for e in cluster.objects("v1/events").values()
            if e.get("reason") == "KubernetesRefused"
        ]
        assert events and events[0]["type"] == "Warning", "no Warning event for the refusal"

        # The quota is raised: a retry (backing off, far sooner than the 30 s resync) creates
        # the Deployment and the rollout goes on.
        assert cluster.objects(DEPLOYS) == {}
        refusing[0] = False
        deploy = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS)), None), what="the Deployment"
        )
        await cluster.make_ready(deploy)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Ready", what="Ready")
    assert condition(cluster, "Degraded")["status"] == "False"
