"""The operator against KMock when things go wrong: restarts at random moments, a canary whose
pods never become ready, and 409 Conflicts on status writes.

The cluster's controllers are played by a task that finishes every compression Job and makes
every Deployment ready (except those a test wants stuck), as a kubelet would, while the
operator is stopped and started again at random points of compression and canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from kmock._internal import aiobus

from tests.controller.conftest import MD, Cluster, compress_result, in_background
from tests.controller.test_lifecycle import (
    DEPLOYS,
    JOBS,
    SHA2,
    condition,
    md,
    serve_first_revision,
    status,
    traffic,
)

STEPS = {
    "rollout": {
        "steps": [{"setWeight": 30}, {"pause": {"duration": "1s"}}, {"setWeight": 60}],
        "analysis": {"interval": "200ms", "minRequests": 10},
    }
}
STATUS_PATH = "/apis/onnxship.io/v1alpha1/namespaces/default/modeldeployments/enc/status"
CONFLICT = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "reason": "Conflict",
    "code": 409,
    "message": 'Operation cannot be fulfilled on modeldeployments.onnxship.io "enc": '
    "the object has been modified; please apply your changes to the latest version",
}


@attrs.mutable
class VetoBus(aiobus.Bus[Any]):
    """A watch bus that leaves out the events ``veto`` says no watcher may see."""

    veto: Callable[[Any], bool] = attrs.field(default=lambda item: False)

    async def put(self, *items: Any) -> None:
        await super().put(*(item for item in items if not self.veto(item)))


def conflict_on(cluster: Cluster, write: Callable[[Mapping[str, Any]], bool]) -> list[Any]:
    """Answer 409 to the first status write of ModelDeployment ``enc`` whose result ``write``
    picks, as a real API server would: the write is not applied and no watcher hears of it.

    KMock applies every write and tells its watchers before a reaction answers; a cache fed by
    that event would hold a version the server never kept. So the write is dropped from the
    object's history and its event from the watch. Returns the versions refused (one at most)."""
    refused: list[Mapping[str, Any]] = []
    answered: list[int] = []  # the id of the request answered 409

    def veto(item: Any) -> bool:
        obj = item.get("object") or {}  # the object as the write left it
        if refused or obj.get("kind") != "ModelDeployment" or obj["metadata"]["name"] != "enc":
            return False
        if "status" not in obj or not write(obj):
            return False
        stored = cluster.server.objects[MD, "default", "enc"]
        refused.append(stored.history.pop())
        return True

    def answer_409(request: Any) -> bool:
        # KMock runs filters again over earlier requests: answer by request, not by turn.
        if answered:
            return bool(request.id == answered[0])
        body = (request.data or {}).get("status") if isinstance(request.data, dict) else None
        if refused and body and all(refused[0]["status"].get(k) == v for k, v in body.items()):
            answered.append(request.id)
            return True
        return False

    buses = cluster.server._buses  # KMock's watch buses, one per resource
    assert all(not bus.consumer_count for bus in buses.values()), "install before any watch"
    buses.clear()
    buses.default_factory = lambda: VetoBus(veto=veto)
    cluster.server[f"patch {STATUS_PATH}"][answer_409] << 409 << CONFLICT
    return refused


@contextlib.asynccontextmanager
async def kubelet(cluster: Cluster, stuck: set[str] | None = None) -> AsyncIterator[None]:
    """Finish every Job and make every Deployment ready (but ``stuck`` ones), until the end."""
    stuck = stuck or set()

    async def play() -> None:
        while True:
            for name, job in cluster.objects(JOBS).items():
                if not (job.get("status") or {}).get("conditions"):
                    await cluster.finish_job(name, 0, compress_result(f"key-{name}"))
            for name, d in cluster.objects(DEPLOYS).items():
                ready = (d.get("status") or {}).get("readyReplicas")
                if name not in stuck and ready != d["spec"].get("replicas", 1):
                    await cluster.make_ready(name)
            await asyncio.sleep(0.05)

    async with in_background(play()):
        yield


def revisions_by_version(cluster: Cluster) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in status(cluster).get("revisions", []):
        out.setdefault(r["modelVersion"], []).append(r["name"])
    return out


def converged_on_v2(cluster: Cluster) -> bool:
    st = status(cluster)
    v2 = revisions_by_version(cluster).get("v2")
    return bool(
        v2
        and st.get("phase") == "Ready"
        and st.get("stableRevision") == v2[0]
        and not st.get("canaryRevision")
        and traffic(cluster) == {v2[0]: 100}
    )


def assert_no_orphans(cluster: Cluster) -> None:
    """No duplicate revisions; nothing left running or left without an owner.

    A finished Job of a superseded revision may remain: it is owned by the ModelDeployment
    and expires by its TTL. A Deployment of a revision the status does not list would run
    pods nobody tracks: that is an orphan.
    """
    names = [r["name"] for r in status(cluster)["revisions"]]
    assert len(names) == len(set(names)), f"duplicate revisions: {names}"
    assert len(revisions_by_version(cluster)["v2"]) == 1, status(cluster)["revisions"]
    uid = cluster.get("onnxship.io/v1alpha1/modeldeployments", "enc")["metadata"]["uid"]
    for job_name, job in cluster.objects(JOBS).items():
        assert (job.get("status") or {}).get("conditions"), f"Job {job_name} still running"
        owners = [o["uid"] for o in job["metadata"].get("ownerReferences", [])]
        assert owners == [uid], f"Job {job_name} has no owner: {owners}"
        assert job["spec"].get("ttlSecondsAfterFinished") is not None, f"Job {job_name} stays"
    for deploy in cluster.objects(DEPLOYS):
        rev = deploy.removesuffix("-default")
        assert deploy == "enc-router" or rev in names, f"orphaned Deployment {deploy}"


async def run_with_kills(cluster: Cluster, operator: Any, seed: int) -> int:
    """Apply v1, then v2, while the operator is stopped and started at random moments."""
    rng = random.Random(seed)
    kills = 0
    async with kubelet(cluster):
        async with operator():
            await cluster.apply(md(**STEPS))
            await asyncio.sleep(rng.uniform(0.0, 1.5))
        kills += 1
        v2_at = rng.randint(0, 2)
        for i in range(4):
            if i == v2_at:
                await cluster.patch_md("enc", {"spec": md(version="v2", sha=SHA2, **STEPS)["spec"]})
            async with operator():
                await asyncio.sleep(rng.uniform(0.05, 2.0))
            kills += 1
        async with operator():
            await cluster.wait_for(
                lambda: converged_on_v2(cluster), timeout=60, what=f"convergence (seed {seed})"
            )
            assert_no_orphans(cluster)
    return kills


@pytest.mark.parametrize("seed", [0, 1])
async def test_operator_restarted_at_random_points_converges(
    cluster: Cluster, operator: Any, seed: int
) -> None:
    await run_with_kills(cluster, operator, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 20))
async def test_operator_restarted_at_random_points_converges_long(
    cluster: Cluster, operator: Any, seed: int
) -> None:
    await run_with_kills(cluster, operator, seed)


async def test_a_canary_that_never_becomes_ready_is_rolled_back(
    cluster: Cluster, operator: Any
) -> None:
    spec = {**STEPS, "rollout": {**STEPS["rollout"], "progressDeadline": "2s"}}
    async with operator():
        v1 = await serve_first_revision(cluster, md(**spec))
        await cluster.patch_md("enc", {"spec": md(version="v2", sha=SHA2, **spec)["spec"]})
        job = await cluster.wait_for(
            lambda: next((j for j in cluster.objects(JOBS) if not j.startswith(v1)), None),
            what="v2 Job",
        )
        await cluster.finish_job(job, 0, compress_result("key-v2"))
        v2 = job.removesuffix("-default")
        await cluster.wait_for(lambda: cluster.get(DEPLOYS, job), what="canary Deployment")
        # Its pods never become ready: within the deadline (and a little), back to v1.
        await cluster.wait_for(
            lambda: condition(cluster, "Degraded").get("reason") == "ProgressDeadlineExceeded",
            timeout=15,
            what="rollback on the progress deadline",
        )
        degraded = condition(cluster, "Degraded")
        assert v2 in degraded["message"] and "2s" in degraded["message"], degraded
        assert status(cluster)["stableRevision"] == v1
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 100}, what="traffic back on v1")


async def test_a_409_on_a_status_write_is_retried_promptly(cluster: Cluster, operator: Any) -> None:
    # The write that makes the phase Ready: nothing else will wake the operator after it.
    conflicts = conflict_on(cluster, lambda obj: obj["status"].get("phase") == "Ready")
    async with operator():
        # The router's pods stay unready, so no later event wakes the operator by chance.
        async with kubelet(cluster, stuck={"enc-router"}):
            await cluster.apply(md())
            await cluster.wait_for(lambda: conflicts, timeout=20, what="the 409 being served")
            # The operator's resync is 30 s in these tests: only a prompt retry is in time.
            await cluster.wait_for(
                lambda: status(cluster).get("phase") == "Ready", timeout=10, what="Ready after 409"
            )
        assert len(cluster.objects(JOBS)) == 1


async def test_a_model_uri_that_does_not_exist_ends_degraded(
    cluster: Cluster, operator: Any, tmp_path: Path
) -> None:
    """The Job's real `onnxship compress` fails on a missing model; the spec ends Degraded,
    once, with the reason and the CLI's message, and is not compressed again in a loop."""
    missing = tmp_path / "models" / "enc" / "v9" / "model.onnx"
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("onnxship")), "compress", missing.as_uri(),
         "--store", (tmp_path / "store").as_uri(), "--result-file", str(result)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 7, proc.stdout + proc.stderr  # ExitCode.source_error
    doc = md()
    doc["spec"]["model"]["uri"] = missing.as_uri()
    async with operator():
        await cluster.apply(doc)
        name = await cluster.wait_for(lambda: next(iter(cluster.objects(JOBS)), None), what="Job")
        # The kubelet reports what the container left: exit code and termination message.
        await cluster.finish_job(name, proc.returncode, result.read_text())
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Degraded", what="Degraded")
        degraded = condition(cluster, "Degraded")
        assert degraded["reason"] == "CompressionFailed", degraded
        assert "could not be fetched" in degraded["message"]
        assert str(missing) in degraded["message"] or "no such file" in degraded["message"]
        assert not cluster.objects(DEPLOYS)
        jobs_before = set(cluster.objects(JOBS))
        await asyncio.sleep(1.0)
        assert set(cluster.objects(JOBS)) == jobs_before, "the failed Job was re-created"
        assert status(cluster).get("phase") == "Degraded"


async def test_a_409_on_a_status_only_pass_is_retried_promptly(
    cluster: Cluster, operator: Any
) -> None:
    """An invalid spec makes a pass whose only write is the status: no child object changes,
    so no event will wake the operator; the conflict itself must lead to a prompt retry."""
    conflicts = conflict_on(cluster, lambda obj: True)
    doc = md()
    doc["spec"]["rollout"] = {"steps": [{"setWeight": 80}, {"setWeight": 20}]}
    async with operator():
        await cluster.apply(doc)
        await cluster.wait_for(lambda: conflicts, timeout=20, what="the 409 being served")
        # The operator's resync is 30 s in these tests.
        await cluster.wait_for(
            lambda: status(cluster).get("phase") == "Degraded", timeout=10, what="Degraded"
        )
        assert condition(cluster, "Degraded")["reason"] == "InvalidSpec"
