"""`kubectl apply` of a ModelDeployment, as the operator reconciles it against KMock."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from onnxship.controller.commands import annotation_patch, new_command
from onnxship.plan.observed import CommandKind
from onnxship.plan.workloads import L_COMPONENT, L_DEPLOYMENT, L_REVISION

from .conftest import Cluster, compress_result

JOBS, DEPLOYS, SVCS, CMS = "batch/v1/jobs", "apps/v1/deployments", "v1/services", "v1/configmaps"
SHA1, SHA2 = "1" * 64, "2" * 64


def md(name: str = "enc", version: str = "v1", sha: str = SHA1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "spec": {
            "model": {
                "uri": f"s3://models/enc/{version}/model.onnx",
                "version": version,
                "sha256": sha,
            },
            **spec,
        },
    }


def status(cluster: Cluster, name: str = "enc") -> dict[str, Any]:
    obj = cluster.get("onnxship.io/v1alpha1/modeldeployments", name) or {}
    return obj.get("status") or {}


def condition(cluster: Cluster, type_: str, name: str = "enc") -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions", []) if c["type"] == type_), {})


def routes(cluster: Cluster, name: str = "enc") -> dict[str, int]:
    cm = cluster.get(CMS, f"{name}-router")
    if not cm:
        return {}
    table = json.loads(cm["data"]["routes.json"])
    return {b["revision"]: b["weight"] for b in table["backends"]}


def selects(cluster: Cluster, name: str = "enc") -> str:
    """What the user's Service sends requests to: "router", a revision's pods, or ""."""
    selector = (cluster.get(SVCS, name) or {}).get("spec", {}).get("selector", {})
    return "router" if selector.get(L_COMPONENT) == "router" else selector.get(L_REVISION, "")


def traffic(cluster: Cluster, name: str = "enc") -> dict[str, int]:
    """The share of a user's requests each revision gets: through the router when the
    Service selects it, else all to the revision whose pods it selects."""
    target = selects(cluster, name)
    if target == "router":
        return routes(cluster, name)
    return {target: 100} if target else {}


async def serve_first_revision(cluster: Cluster, doc: dict[str, Any], key: str = "k1") -> str:
    """Apply, finish the compression Job, make the pods ready; returns the stable revision."""
    await cluster.apply(doc)
    job = await cluster.wait_for(lambda: next(iter(cluster.objects(JOBS)), None), what="a Job")
    await cluster.finish_job(job, 0, compress_result(key))
    deploy = await cluster.wait_for(
        lambda: next(iter(cluster.objects(DEPLOYS)), None), what="a Deployment"
    )
    await cluster.make_ready(deploy)
    await cluster.wait_for(lambda: status(cluster).get("phase") == "Ready", what="phase Ready")
    return str(status(cluster)["stableRevision"])


async def start_canary(cluster: Cluster, steps: dict[str, Any]) -> tuple[str, str]:
    """Serve v1, apply v2, finish its Job and make its pods ready; returns (v1, v2)."""
    v1 = await serve_first_revision(cluster, md(**steps))
    await cluster.patch_md("enc", {"spec": md(version="v2", sha=SHA2, **steps)["spec"]})
    job = await cluster.wait_for(
        lambda: next((j for j in cluster.objects(JOBS) if not j.startswith(v1)), None),
        what="v2 Job",
    )
    await cluster.finish_job(job, 0, compress_result("key-v2"))
    v2 = job.removesuffix("-default")
    await cluster.wait_for(lambda: cluster.get(DEPLOYS, f"{v2}-default"), what="canary Deployment")
    await cluster.wait_for(
        lambda: status(cluster).get("canaryRevision") == v2, what="canary in status"
    )
    assert traffic(cluster) == {v1: 100}, "no traffic to a canary that is not ready"
    # The canary's steps need the router: it is made now, and the Service keeps sending to
    # v1's pods, the canary no share, until the router is ready.
    await cluster.wait_for(lambda: cluster.get(DEPLOYS, "enc-router"), what="the router")
    await cluster.make_ready(f"{v2}-default")
    await cluster.wait_for(
        lambda: "waiting for its router" in status(cluster).get("message", ""),
        what="the canary waiting for its router",
    )
    assert status(cluster)["canaryWeight"] == 0 and not status(cluster).get("stepStartedAt")
    assert selects(cluster) == v1, "the Service moves to the router only once it is ready"
    await cluster.make_ready("enc-router")
    await cluster.wait_for(lambda: selects(cluster) == "router", what="the Service on the router")
    # v1's revision label dropped from the selector, not left behind by a merge patch.
    selector = cluster.get(SVCS, "enc")["spec"]["selector"]
    assert selector == {L_DEPLOYMENT: "enc", L_COMPONENT: "router"}
    return v1, v2


async def test_apply_compresses_then_serves(cluster: Cluster, operator: Any) -> None:
    async with operator():
        await cluster.apply(md())
        jobs = await cluster.wait_for(lambda: cluster.objects(JOBS), what="the compression Job")
        [(name, job)] = jobs.items()
        revision = name.removesuffix("-default")
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:2] == ["compress", "s3://models/enc/v1/model.onnx"]
        assert "--sha256" in container["args"] and SHA1 in container["args"]
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        secret_refs = [
            e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
        ]
        assert set(secret_refs) == {"s3-creds"}  # credentials by reference, never by value
        assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        await cluster.wait_for(
            lambda: status(cluster).get("phase") == "Compressing", what="Compressing"
        )
        assert not cluster.objects(DEPLOYS), "nothing is served before the artifact exists"

        await cluster.finish_job(name, 0, compress_result("key-v1"))
        deploy = await cluster.wait_for(
            lambda: cluster.get(DEPLOYS, f"{revision}-default"), what="Deployment"
        )
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--cache-key") + 1] == "key-v1"

        await cluster.make_ready(f"{revision}-default")
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Ready", what="phase Ready")
        st = status(cluster)
        assert st["stableRevision"] == revision and st.get("canaryRevision", "") == ""
        assert st["endpoint"] == "http://enc.default.svc"
        assert st["observedGeneration"] == st.get("observedGeneration")
        [rec] = st["revisions"]
        assert rec["name"] == revision and rec["modelVersion"] == "v1"
        assert rec["compressionRatio"] == 0.26
        assert rec["environments"][0]["cacheKey"] == "key-v1"
        assert (rec["environments"][0]["readyReplicas"], rec["environments"][0]["replicas"]) == (
            1,
            1,
        )
        assert condition(cluster, "Available")["status"] == "True"
        # One revision in one environment: the Service selects its pods, no router runs.
        await cluster.wait_for(lambda: selects(cluster) == revision, what="the Service")
        assert cluster.get(SVCS, "enc")["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": "http"}
        ]
        assert cluster.get(DEPLOYS, "enc-router") is None and cluster.get(CMS, "enc-router") is None
        # Nothing calls the revision by a Service of its own (the router would).
        assert set(cluster.objects(SVCS)) == {"enc"}


async def test_failed_compression_says_why_and_serves_nothing(
    cluster: Cluster, operator: Any
) -> None:
    async with operator():
        await cluster.apply(md())
        name = await cluster.wait_for(lambda: next(iter(cluster.objects(JOBS)), None), what="Job")
        log_tail = "accuracy gate failed: cosine 0.912 below 0.99 on 64 samples"
        await cluster.finish_job(name, 5, log_tail)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Degraded", what="Degraded")
        degraded = condition(cluster, "Degraded")
        assert degraded["reason"] == "AccuracyGateFailed"
        assert "exit code 5" in degraded["message"] and log_tail in degraded["message"]
        assert not cluster.objects(DEPLOYS)
        # ttlSecondsAfterFinished removes the Job: the same spec must not compress again.
        seen = len(cluster.requests)
        await cluster.server.delete(f"/apis/batch/v1/namespaces/default/jobs/{name}")
        await cluster.wait_for(lambda: len(cluster.requests) > seen, what="a pass after deletion")
        await asyncio.sleep(0.5)
        assert not cluster.objects(JOBS), "a failed gate was retried with the same spec"
        assert condition(cluster, "Degraded")["reason"] == "AccuracyGateFailed"


async def test_artifact_in_the_store_is_reused_without_a_job(
    cluster: Cluster, operator: Any
) -> None:
    """A second cluster pointed at the same store compresses nothing."""
    cluster.index.known[SHA1] = json.loads(compress_result("shared-key", cache_hit=True))
    async with operator():
        await cluster.apply(md())
        deploy = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS)), None), what="Deployment"
        )
        assert not cluster.objects(JOBS)
        await cluster.make_ready(deploy)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Ready", what="Ready")
        env = status(cluster)["revisions"][0]["environments"][0]
        assert env["cacheKey"] == "shared-key" and env["compression"]["cacheHit"] is True


async def test_canary_walks_its_steps_and_replaces_stable(cluster: Cluster, operator: Any) -> None:
    steps = {
        "rollout": {
            "steps": [
                {"setWeight": 30},
                {"pause": {"duration": "1s"}},
                {"setWeight": 60},
                {"pause": {"duration": "1s"}},
            ],
            "analysis": {"interval": "200ms", "minRequests": 10},
        }
    }
    async with operator():
        v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(
            lambda: traffic(cluster) == {v1: 70, v2: 30}, what="30% to the canary"
        )
        await cluster.wait_for(
            lambda: traffic(cluster) == {v1: 40, v2: 60}, what="60% after the pause"
        )
        await cluster.wait_for(
            lambda: status(cluster).get("stableRevision") == v2, what="v2 stable"
        )
        await cluster.wait_for(lambda: traffic(cluster) == {v2: 100}, what="all traffic to v2")
        assert selects(cluster) == v2, "done: the Service selects v2's pods directly"
        await cluster.wait_for(
            lambda: cluster.get(DEPLOYS, f"{v1}-default") is None, what="v1 removed"
        )
        await cluster.wait_for(
            lambda: cluster.get(DEPLOYS, "enc-router") is None
            and cluster.get(CMS, "enc-router") is None,
            what="the router removed once the Service left it",
        )
        await cluster.wait_for(
            lambda: set(cluster.objects(SVCS)) == {"enc"},
            what="the revisions' Services the router called removed with it",
        )
        assert status(cluster)["phase"] == "Ready"
        assert {r["name"] for r in status(cluster)["revisions"]} == {v1, v2}, (
            "v1 kept for rollbacks"
        )
        assert cluster.metrics.calls, "the canary was analysed"


async def test_failing_analysis_rolls_back(cluster: Cluster, operator: Any) -> None:
    steps = {
        "rollout": {
            "steps": [{"setWeight": 20}, {"pause": {"duration": "1h"}}],
            "analysis": {"interval": "200ms", "failureLimit": 1, "minRequests": 10},
        }
    }
    cluster.metrics.healthy = False  # the canary answers half its requests with 503
    async with operator():
        v1, _v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Degraded", what="rollback")
        assert condition(cluster, "Degraded")["reason"] == "AnalysisFailed"
        assert "error rate" in condition(cluster, "Degraded")["message"]
        await cluster.wait_for(
            lambda: traffic(cluster) == {v1: 100}, what="stable takes all traffic"
        )
        assert status(cluster)["stableRevision"] == v1


async def test_restart_mid_canary_resumes_and_promote_finishes(
    cluster: Cluster, operator: Any
) -> None:
    steps = {
        "rollout": {
            "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}],
            "analysis": {"interval": "200ms", "minRequests": 10},
        }
    }
    async with operator():
        v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(
            lambda: status(cluster).get("phase") == "Paused", what="indefinite pause"
        )
        before = status(cluster)
    # The operator is gone; a new one starts and must pick up exactly there.
    async with operator():
        await cluster.wait_for(lambda: cluster.requests, what="the new operator reconciling")
        assert status(cluster)["currentStep"] == before["currentStep"]
        assert traffic(cluster) == {v1: 75, v2: 25}
        await cluster.patch_md("enc", annotation_patch(new_command(CommandKind.promote)))
        await cluster.wait_for(lambda: status(cluster).get("stableRevision") == v2, what="promoted")
        await cluster.wait_for(lambda: traffic(cluster) == {v2: 100}, what="all traffic to v2")


async def test_abort_returns_traffic_to_stable(cluster: Cluster, operator: Any) -> None:
    steps = {"rollout": {"steps": [{"setWeight": 40}, {"pause": {}}]}}
    async with operator():
        v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 60, v2: 40}, what="40% canary")
        await cluster.patch_md("enc", annotation_patch(new_command(CommandKind.abort)))
        await cluster.wait_for(lambda: status(cluster).get("aborted"), what="aborted", timeout=5)
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 100}, what="abort")
        assert condition(cluster, "Degraded")["reason"] == "Aborted"
        assert status(cluster)["stableRevision"] == v1


async def test_invalid_spec_is_degraded_not_a_crash_loop(cluster: Cluster, operator: Any) -> None:
    doc = md()
    doc["spec"]["rollout"] = {
        "steps": [{"setWeight": 80}, {"setWeight": 20}]
    }  # slipped past no CRD
    async with operator():
        await cluster.apply(doc)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Degraded", what="Degraded")
        degraded = condition(cluster, "Degraded")
        assert degraded["reason"] == "InvalidSpec"
        assert "spec.rollout.steps" in degraded["message"]
        assert not cluster.objects(JOBS)


async def test_deletion_removes_what_the_operator_made(cluster: Cluster, operator: Any) -> None:
    async with operator():
        await start_canary(cluster, {"rollout": {"steps": [{"setWeight": 10}, {"pause": {}}]}})
        assert cluster.objects(DEPLOYS) and cluster.objects(SVCS) and cluster.objects(CMS)
        await cluster.server.delete(
            "/apis/onnxship.io/v1alpha1/namespaces/default/modeldeployments/enc"
        )
        await cluster.wait_for(
            lambda: (
                not cluster.objects(DEPLOYS)
                and not cluster.objects(SVCS)
                and not cluster.objects(CMS)
            ),
            what="children deleted",
        )


async def test_stable_is_rebuilt_from_its_own_record_during_a_canary(
    cluster: Cluster, operator: Any
) -> None:
    """The stable Deployment deleted mid-canary comes back as v1, not as the spec's v2."""
    steps = {"rollout": {"steps": [{"setWeight": 10}, {"pause": {}}]}}
    async with operator():
        v1, _v2 = await start_canary(cluster, steps)
        before = cluster.get(DEPLOYS, f"{v1}-default")
        assert before is not None
        await cluster.server.delete(f"/apis/apps/v1/namespaces/default/deployments/{v1}-default")
        again = await cluster.wait_for(
            lambda: cluster.get(DEPLOYS, f"{v1}-default"), what="stable recreated"
        )
        [c] = again["spec"]["template"]["spec"]["containers"]
        [c0] = before["spec"]["template"]["spec"]["containers"]
        assert c["args"][c["args"].index("--model-version") + 1] == "v1"
        assert (c["image"], c["args"]) == (c0["image"], c0["args"])


async def test_a_revision_without_its_service_gets_it_back(cluster: Cluster, operator: Any) -> None:
    """An operator killed between creating a revision's Deployment and its Service (found by
    the SIGKILL test), or a Service deleted by hand, while a router calls the revision by it:
    every request the router sends there would fail. The next pass makes the Service again."""
    async with operator():
        steps = {"rollout": {"steps": [{"setWeight": 10}, {"pause": {}}]}}
        v1, _v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: cluster.get(SVCS, f"{v1}-default"), what="v1's Service")
        await cluster.server.delete(f"/api/v1/namespaces/default/services/{v1}-default")
        assert cluster.get(SVCS, f"{v1}-default") is None
        await cluster.patch_md("enc", {"spec": {"serving": {"replicas": 2}}})  # a pass
        again = await cluster.wait_for(
            lambda: cluster.get(SVCS, f"{v1}-default"), what="the Service made again"
        )
        assert again["spec"]["selector"][L_REVISION] == v1


class _SlowDeploymentWrites(list[tuple[str, str, str]]):
    """The operator's request log, recording (in its worker thread) and making each
    Deployment patch slow once armed: a reconcile pass is then surely in flight at a chosen
    moment (reads come from the informers' cache and send no request)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.in_flight = False

    def append(self, request: tuple[str, str, str]) -> None:
        super().append(request)
        if self.armed and request[:2] == ("patch", "Deployment"):
            self.in_flight = True
            time.sleep(0.5)


async def test_deleting_during_a_pass_leaves_nothing_behind(
    cluster: Cluster, operator: Any
) -> None:
    """kopf runs the deletion handler while it stops the daemon: a pass that read the object
    before its deletion must not make children again after the clean-up removed them."""
    log = _SlowDeploymentWrites()
    cluster.requests = log
    async with operator():
        await serve_first_revision(cluster, md())
        log.armed = True
        await cluster.patch_md("enc", {"spec": {"serving": {"replicas": 2}}})  # a pass
        await cluster.wait_for(lambda: log.in_flight, what="a pass in flight")
        await cluster.server.delete(
            "/apis/onnxship.io/v1alpha1/namespaces/default/modeldeployments/enc"
        )
        children = (DEPLOYS, SVCS, CMS)
        await cluster.wait_for(
            lambda: not any(cluster.objects(k) for k in children), what="children deleted"
        )
        await asyncio.sleep(2.0)  # the pass in flight has ended
        assert not any(cluster.objects(k) for k in children), {
            k: list(cluster.objects(k)) for k in children
        }
