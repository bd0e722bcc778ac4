"""A revision's pod killed during a canary, against KMock: what the router and status show.

The test plays the kubelet and the Deployment controller: a pod kill is the Deployment's
readyReplicas and availableReplicas dropping (and its replacement becoming ready later).
"""

from __future__ import annotations

import asyncio
from typing import Any

from onnxship.controller.commands import annotation_patch, new_command
from onnxship.plan.observed import CommandKind
from tests.controller.conftest import Cluster
from tests.controller.test_lifecycle import condition, start_canary, status, traffic


async def kill_pods(cluster: Cluster, deployment: str) -> None:
    """Every pod of ``deployment`` killed: none ready until the kubelet starts replacements."""
    d = cluster.get("apps/v1/deployments", deployment)
    assert d is not None, deployment
    n = d["spec"]["replicas"]
    await cluster.patch(
        f"/apis/apps/v1/namespaces/default/deployments/{deployment}",
        {"status": {"replicas": n, "readyReplicas": 0, "availableReplicas": 0,
                    "unavailableReplicas": n, "updatedReplicas": n}},
    )  # fmt: skip


async def test_a_canary_whose_pod_is_killed_gets_no_traffic_until_it_is_back(
    cluster: Cluster, operator: Any
) -> None:
    steps = {
        "rollout": {
            "steps": [{"setWeight": 30}, {"pause": {"duration": "2s"}}, {"setWeight": 60},
                      {"pause": {"duration": "1s"}}],
            "analysis": {"interval": "200ms", "minRequests": 10},
        }
    }  # fmt: skip
    async with operator():
        v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 70, v2: 30}, what="30% canary")
        await kill_pods(cluster, f"{v2}-default")
        # Its 30% would fail: the stable takes it back, and status says why.
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 100}, what="stable takes all")
        await cluster.wait_for(
            lambda: condition(cluster, "Progressing").get("reason") == "CanaryUnavailable",
            what="the Progressing condition saying why",
        )
        progressing = condition(cluster, "Progressing")
        assert f"{v2} has no ready pods" in progressing["message"], progressing
        st = status(cluster)
        assert (st["phase"], st["canaryRevision"], st["canaryWeight"]) == ("Progressing", v2, 0)
        assert st["currentStep"] == 1 and not st.get("aborted")
        # The 2 s pause ends meanwhile: no step is taken while the canary has no ready pod.
        await asyncio.sleep(3.0)
        assert traffic(cluster) == {v1: 100} and status(cluster)["currentStep"] == 1
        assert condition(cluster, "Degraded").get("status") == "False", "not rolled back"

        await cluster.make_ready(f"{v2}-default")  # the replacement pod is ready
        await cluster.wait_for(
            lambda: traffic(cluster) == {v1: 40, v2: 60}, what="the canary back, then on"
        )
        await cluster.wait_for(
            lambda: status(cluster).get("stableRevision") == v2, what="v2 promoted at the end"
        )
        await cluster.wait_for(lambda: traffic(cluster) == {v2: 100}, what="all traffic to v2")


async def test_the_stables_pod_killed_mid_canary_is_reported_and_the_canary_not_promoted(
    cluster: Cluster, operator: Any
) -> None:
    steps = {"rollout": {"steps": [{"setWeight": 30}, {"pause": {}}]}}
    async with operator():
        v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Paused", what="paused")
        await kill_pods(cluster, f"{v1}-default")
        await cluster.wait_for(
            lambda: condition(cluster, "Available").get("status") == "False",
            what="Available False",
        )
        available = condition(cluster, "Available")
        assert available["reason"] == "NoStableRevision"
        assert f"{v1} has no ready pods" in available["message"]
        rec = next(r for r in status(cluster)["revisions"] if r["name"] == v1)
        assert rec["environments"][0]["readyReplicas"] == 0, "status shows the ready count"
        # The stable's trouble does not hand the users to an unfinished canary, nor abort it.
        await asyncio.sleep(0.5)
        assert traffic(cluster) == {v1: 70, v2: 30}
        st = status(cluster)
        assert (st["stableRevision"], st["canaryRevision"], st["phase"]) == (v1, v2, "Paused")

        await cluster.make_ready(f"{v1}-default")
        await cluster.wait_for(
            lambda: condition(cluster, "Available").get("status") == "True", what="Available"
        )
        await cluster.patch_md("enc", annotation_patch(new_command(CommandKind.promote)))
        await cluster.wait_for(lambda: traffic(cluster) == {v2: 100}, what="promoted")


async def test_a_canary_whose_pods_never_come_back_is_rolled_back_at_the_deadline(
    cluster: Cluster, operator: Any
) -> None:
    steps = {"rollout": {"steps": [{"setWeight": 30}, {"pause": {}}], "progressDeadline": "2s"}}
    async with operator():
        v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 70, v2: 30}, what="30% canary")
        await kill_pods(cluster, f"{v2}-default")
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 100}, what="stable takes all")
        await cluster.wait_for(
            lambda: condition(cluster, "Degraded").get("reason") == "ProgressDeadlineExceeded",
            timeout=10,
            what="rolled back at the deadline",
        )
        assert f"{v2} lost its ready pods" in condition(cluster, "Degraded")["message"]
        st = status(cluster)
        assert (st["stableRevision"], st["aborted"], st["phase"]) == (v1, True, "Degraded")
        await cluster.wait_for(
            lambda: cluster.get("apps/v1/deployments", f"{v2}-default")["spec"]["replicas"] == 0,
            what="the canary scaled to zero",
        )
