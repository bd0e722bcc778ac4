"""One full life of ModelDeployments against KMock, for tests that look at everything the
operator did rather than at one step: compress (two environments), serve, canary, promote,
roll back, replicas changed in place, a failed compression, the Gateway API router, and
deletion.

The test plays the kubelet and the Job controller: every Job ends (with the exit code and
termination message a test asks for), every Deployment becomes ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from onnxship.controller.commands import annotation_patch, new_command
from onnxship.plan.observed import CommandKind

from .conftest import Cluster, compress_result, in_background
from .test_lifecycle import CMS, DEPLOYS, JOBS, SHA1, SHA2, SVCS, md, status

SHA3 = "3" * 64
ENVIRONMENTS = {
    "replicas": 2,
    "environments": [
        {"name": "cpu", "nodeSelector": {"pool": "cpu"}},
        {
            "name": "gpu",
            "executionProvider": "CUDA",
            "compression": {"quantize": {"mode": "fp16"}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        },
    ],
}
ROLLOUT = {"steps": [{"setWeight": 50}, {"pause": {}}]}
GATEWAY = {
    "steps": [{"setWeight": 50}, {"pause": {"duration": "500ms"}}],
    "traffic": {"router": "gatewayAPI", "gateway": {"parentRefs": [{"name": "gw"}]}},
}


@contextlib.asynccontextmanager
async def kubelet(cluster: Cluster, failing: dict[str, tuple[int, str]]) -> AsyncIterator[None]:
    """Ends every Job (those whose name starts with a key of ``failing`` with that exit code
    and message) and makes every Deployment ready, until the block ends."""

    async def play() -> None:
        while True:
            for name, job in cluster.objects(JOBS).items():
                if (job.get("status") or {}).get("conditions"):
                    continue
                code, message = next(
                    (v for k, v in failing.items() if name.startswith(k)),
                    (0, compress_result(f"key-{name}")),
                )
                await cluster.finish_job(name, code, message)
            for name, d in cluster.objects(DEPLOYS).items():
                if (d.get("status") or {}).get("readyReplicas") != d["spec"].get("replicas", 1):
                    await cluster.make_ready(name)
            await asyncio.sleep(0.05)

    async with in_background(play()):
        yield


def _spec(version: str, sha: str, rollout: dict[str, Any]) -> dict[str, Any]:
    return md(version=version, sha=sha, serving=ENVIRONMENTS, rollout=rollout)


async def full_run(cluster: Cluster) -> dict[str, Any]:
    """Returns what happened, for the caller's assertions."""
    failing = {}
    seen: dict[str, Any] = {}

    def phase(name: str = "enc") -> str:
        return str(status(cluster, name).get("phase", ""))

    async def command(kind: CommandKind, revision: str = "") -> None:
        await cluster.patch_md("enc", annotation_patch(new_command(kind, revision)))

    async with kubelet(cluster, failing):
        # v1: two environments compressed by two Jobs, then served.
        await cluster.apply(_spec("v1", SHA1, ROLLOUT))
        await cluster.wait_for(lambda: phase() == "Ready", what="v1 Ready")
        v1 = status(cluster)["stableRevision"]
        # v2: a canary at 50%, paused until promoted.
        await cluster.patch_md("enc", {"spec": _spec("v2", SHA2, ROLLOUT)["spec"]})
        await cluster.wait_for(lambda: phase() == "Paused", what="v2 canary paused")
        v2 = status(cluster)["canaryRevision"]
        await command(CommandKind.promote)
        await cluster.wait_for(
            lambda: status(cluster).get("stableRevision") == v2 and phase() == "Ready",
            what="v2 promoted",
        )
        # Roll back to v1 from its stored artifact: no compression.
        await command(CommandKind.rollback, v1)
        await cluster.wait_for(
            lambda: status(cluster).get("stableRevision") == v1 and phase() == "Ready",
            what="rolled back to v1",
        )
        # More replicas: applied in place, no new revision.
        await cluster.patch_md("enc", {"spec": {"serving": {**ENVIRONMENTS, "replicas": 3}}})
        await cluster.wait_for(
            lambda: {d["spec"]["replicas"] for d in cluster.objects(DEPLOYS).values()
                     if d["metadata"]["name"].startswith(v1)} == {3},
            what="3 replicas of v1",
        )  # fmt: skip
        assert status(cluster)["stableRevision"] == v1
        # v3 fails its accuracy gate: Degraded, v1 keeps serving.
        failing["enc-"] = (5, "accuracy gate failed: cosine 0.91 below 0.99")
        jobs_before = set(cluster.objects(JOBS))
        await cluster.patch_md("enc", {"spec": _spec("v3", SHA3, ROLLOUT)["spec"]})
        await cluster.wait_for(lambda: phase() == "Degraded", what="v3 Degraded")
        failing.clear()
        seen["failed_jobs"] = sorted(set(cluster.objects(JOBS)) - jobs_before)
        # A second ModelDeployment behind the Gateway API: an HTTPRoute instead of a router.
        gw = md(name="enc-gw", sha=SHA1, rollout=GATEWAY)
        await cluster.apply(gw)
        await cluster.wait_for(lambda: phase("enc-gw") == "Ready", what="enc-gw Ready")
        await cluster.patch_md(
            "enc-gw", {"spec": md(version="v2", sha=SHA2, rollout=GATEWAY)["spec"]}
        )
        await cluster.wait_for(
            lambda: (
                len(status(cluster, "enc-gw").get("revisions", [])) == 2
                and phase("enc-gw") == "Ready"
            ),
            what="enc-gw v2 stable",
        )
        routes = cluster.objects("gateway.networking.k8s.io/v1/httproutes")
        seen["httproutes"] = {n: json.dumps(r["spec"]) for n, r in routes.items()}
        seen["objects"] = {
            kind: sorted(cluster.objects(kind)) for kind in (JOBS, DEPLOYS, SVCS, CMS)
        }
        # Deleting both removes what the operator made.
        for name in ("enc", "enc-gw"):
            await cluster.server.delete(
                f"/apis/onnxship.io/v1alpha1/namespaces/default/modeldeployments/{name}"
            )
        await cluster.wait_for(
            lambda: not any(cluster.objects(k) for k in (DEPLOYS, SVCS, CMS, JOBS)),
            what="children deleted",
        )
    seen |= {"v1": v1, "v2": v2}
    return seen
