"""The operator process SIGKILLed at random points of compression and canary, then restarted.

`onnxship operator` runs as its own process (the operator image's entry point) against KMock,
and is killed with SIGKILL (no clean-up code runs) at seeded random moments: while the first
revision's compression Job runs, while the second's runs, and during the canary. This test
plays the kubelet and the Job controller, with a random lag: it finishes each Job and makes
each Deployment ready some time after it appears. Each run must end in the same state: v2
stable with all the traffic, exactly one compression Job per revision and environment (none
deleted, none re-created, none running, none without a live owner), one Deployment and
Service per live revision, and no revision recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from onnxship.api import parse_spec
from onnxship.plan.revision import revision_name
from tests.controller.conftest import Cluster, compress_result, in_background
from tests.controller.test_lifecycle import CMS, DEPLOYS, JOBS, SVCS, md, status, traffic

from .operator_process import RUNTIME_IMAGE, OperatorProcess

STEPS = {
    "rollout": {
        "steps": [{"setWeight": 30}, {"pause": {"duration": "2s"}}, {"setWeight": 60}],
        "analysis": {"interval": "200ms", "minRequests": 10},
    }
}
MD_RES = "onnxship.io/v1alpha1/modeldeployments"


def v(version: str) -> dict[str, Any]:
    # No pinned digest: the operator does not look the artifact up in a store this test
    # does not run; every revision is compressed by its Job.
    return md(version=version, sha="", **STEPS)


def revision_of(version: str) -> str:
    return revision_name("enc", parse_spec(v(version)["spec"]), "", RUNTIME_IMAGE)


V1, V2 = revision_of("v1"), revision_of("v2")
# What every run must end with, whatever the kills: the names are hashes of the spec.
END_STATE = {
    "phase": "Ready",
    "stable": V2,
    "canary": "",
    "revisions": [V1, V2],
    "traffic": {V2: 100},
    "jobs": sorted([f"{V1}-default", f"{V2}-default"]),
    # At rest the Service users call selects v2's pods: the canary's router and the
    # revisions' Services it called are gone.
    "deployments": [f"{V2}-default"],
    "services": ["enc"],
    "configmaps": [],
}


def end_state(cluster: Cluster) -> dict[str, Any]:
    st = status(cluster)
    return {
        "phase": st.get("phase"),
        "stable": st.get("stableRevision"),
        "canary": st.get("canaryRevision", ""),
        "revisions": [r["name"] for r in st.get("revisions", [])],
        "traffic": traffic(cluster),
        "jobs": sorted(cluster.objects(JOBS)),
        "deployments": sorted(cluster.objects(DEPLOYS)),
        "services": sorted(cluster.objects(SVCS)),
        "configmaps": sorted(cluster.objects(CMS)),
    }


@contextlib.asynccontextmanager
async def kubelet(cluster: Cluster, rng: random.Random) -> AsyncIterator[None]:
    """Finish each Job and make each Deployment ready, a random lag after it appears."""
    due: dict[tuple[str, str], float] = {}

    async def play() -> None:
        while True:
            now = time.monotonic()
            for name, job in cluster.objects(JOBS).items():
                if (job.get("status") or {}).get("conditions"):
                    continue
                at = due.setdefault(("job", name), now + rng.uniform(0.2, 1.5))
                if now >= at:
                    await cluster.finish_job(name, 0, compress_result(f"key-{name}"))
            for name, d in cluster.objects(DEPLOYS).items():
                want = d["spec"].get("replicas", 1)
                if (d.get("status") or {}).get("readyReplicas") == want:
                    continue
                at = due.setdefault(("deploy", f"{name}/{want}"), now + rng.uniform(0.1, 1.0))
                if now >= at:
                    await cluster.make_ready(name)
            await asyncio.sleep(0.05)

    async with in_background(play()):
        yield


def assert_jobs_sound(cluster: Cluster) -> None:
    """One Job per revision and environment, finished, owned by the live ModelDeployment,
    of a revision the status records; none deleted or created twice by the operator."""
    live = cluster.get(MD_RES, "enc")
    assert live is not None
    uid = live["metadata"]["uid"]
    recorded = {r["name"] for r in status(cluster)["revisions"]}
    pairs = Counter()
    for name, job in cluster.objects(JOBS).items():
        labels = job["metadata"].get("labels", {})
        rev, env = labels.get("onnxship.io/revision"), labels.get("onnxship.io/environment")
        pairs[(rev, env)] += 1
        assert rev in recorded, f"Job {name} of revision {rev}, not in status {recorded}"
        owners = [o["uid"] for o in job["metadata"].get("ownerReferences", [])]
        assert owners == [uid], f"Job {name} is not owned by the live ModelDeployment: {owners}"
        assert (job.get("status") or {}).get("conditions"), f"Job {name} still running"
    assert all(n == 1 for n in pairs.values()), f"more than one Job per revision: {pairs}"
    jobs_deleted = [
        r for r in cluster.server
        if r.resource is not None and r.resource.plural == "jobs"
        and str(r.action.value).lower() == "delete"
    ]  # fmt: skip
    assert not jobs_deleted, "a Job was deleted (and so could be made twice)"


async def wait_until(cluster: Cluster, op: OperatorProcess, predicate: Any, what: str) -> None:
    try:
        await cluster.wait_for(predicate, timeout=60, what=what)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nend state: {end_state(cluster)}\nexpected: {END_STATE}\n"
            f"status: {json.dumps(status(cluster))[:2000]}\noperator log tail:\n{op.tail()}"
        ) from None


async def run_with_sigkills(cluster: Cluster, tmp_path: Path, seed: int) -> dict[str, Any]:
    """v1 is compressed and served, then v2 canaried, with SIGKILLs at random moments of
    both compressions and of the canary. Returns figures for the report."""
    print(f"seed {seed}")
    rng = random.Random(seed)
    op = OperatorProcess(
        url=str(cluster.server.url),
        folder=tmp_path / f"seed-{seed}",
        # A resync far beyond the test's timeouts: progress after a restart must come from
        # kopf resuming the object, watch events and the plan's own deadlines.
        # Clients hold no connections here: the canary's steps need not wait the pods' 10 s
        # connection age after the Service moves to the router.
        env={
            "ONNXSHIP_STORE_URI": "s3://artifacts/team/",
            "ONNXSHIP_RESYNC_SECONDS": "300",
            "ONNXSHIP_CONNECTION_MAX_AGE_SECONDS": "0.5",
        },
    )
    kills: list[str] = []

    async def kill_after(what: str, predicate: Any, most: float) -> None:
        await wait_until(cluster, op, predicate, what)
        delay = rng.uniform(0.0, most)
        await asyncio.sleep(delay)
        await op.kill()
        st = status(cluster)
        at = f"{st.get('phase')} {st.get('canaryWeight', 0)}%"
        kills.append(f"{what}+{delay:.2f}s ({at})")
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # down for a moment: the kubelet goes on
        await op.start()

    started = time.monotonic()
    async with kubelet(cluster, rng):
        await op.start()
        try:
            await cluster.apply(v("v1"))
            await kill_after("v1 Job", lambda: cluster.get(JOBS, f"{V1}-default"), 1.5)
            await wait_until(
                cluster, op, lambda: status(cluster).get("stableRevision") == V1, "v1 stable"
            )
            await cluster.patch_md("enc", {"spec": v("v2")["spec"]})
            await kill_after("v2 Job", lambda: cluster.get(JOBS, f"{V2}-default"), 1.5)
            if rng.random() < 0.5:  # while the canary comes up, or once it takes traffic
                await kill_after("canary", lambda: status(cluster).get("canaryRevision") == V2, 2.0)
            else:
                await kill_after("canary 30%", lambda: traffic(cluster).get(V2) == 30, 2.0)
            await op.wait_ready()  # the end state is seen by a live operator
            await wait_until(
                cluster, op, lambda: end_state(cluster) == END_STATE, f"convergence (seed {seed})"
            )
            converged = time.monotonic() - started
            await asyncio.sleep(0.5)  # settled: nothing changes afterwards
            assert end_state(cluster) == END_STATE, end_state(cluster)
            assert_jobs_sound(cluster)
            names = [r["name"] for r in status(cluster)["revisions"]]
            assert len(names) == len(set(names)), f"duplicate revisions: {names}"
            assert op.alive(), "the operator died by itself"
        finally:
            code = await op.stop()
    assert code == 0, op.tail()
    # Nothing failed in a pass (KMock answers some of kopf's Event posts 409, since it names
    # them alike: kopf logs those as warnings and goes on, and so do we).
    errors = [line for line in op.log_text().splitlines() if '"level": "error"' in line]
    assert not errors, "\n".join(errors)[:4000]
    figures = {"seed": seed, "kills": kills, "starts": op.starts, "seconds": round(converged, 1)}
    print(json.dumps(figures))
    return figures


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_operator_sigkilled_at_random_points_converges(
    cluster: Cluster, tmp_path: Path, seed: int
) -> None:
    await run_with_sigkills(cluster, tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
async def test_operator_sigkilled_at_random_points_converges_20_runs(
    cluster: Cluster, tmp_path: Path, seed: int
) -> None:
    await run_with_sigkills(cluster, tmp_path, seed)
