"""What a reconcile pass costs the API server, and how soon it runs (issue 21).

At 1,000 ModelDeployments every request of a pass counts a thousand times a resync: a pass at
rest sends none (the ModelDeployment comes from the informers' cache like its children), the
status it wrote is what the next pass reads, and a change is acted on at once without a GET.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from onnxship.controller.commands import annotation_patch, new_command
from onnxship.controller.informers import Informer
from onnxship.controller.kube import Kube
from onnxship.controller.settings import OperatorSettings, Timing
from onnxship.plan.observed import CommandKind

from .conftest import Cluster, compress_result
from .test_informers import DEPLOYS as DEPLOYS_PATH
from .test_informers import deployment
from .test_lifecycle import DEPLOYS, JOBS, SHA1, SHA2, md, status, traffic

GET_MD = ("get", "ModelDeployment", "")
MD_PATH = "/apis/onnxship.io/v1alpha1/namespaces/default/modeldeployments"


def passes(shared: dict[str, Any]) -> float:
    return float(shared["metrics"].reconciles.labels("ok")._value.get())


async def serve(cluster: Cluster, doc: dict[str, Any]) -> str:
    """Apply ``doc`` (its artifact already in the store), make its pods ready; the revision."""
    await cluster.apply(doc)
    name = doc["metadata"]["name"]
    deadline = time.monotonic() + 20
    while status(cluster, name).get("phase") != "Ready":
        assert time.monotonic() < deadline, f"{name} never Ready: {status(cluster, name)}"
        for deploy, d in cluster.objects(DEPLOYS).items():
            if not (d.get("status") or {}).get("readyReplicas"):
                await cluster.make_ready(deploy)
        await asyncio.sleep(0.05)
    return str(status(cluster, name)["stableRevision"])


async def test_a_pass_at_rest_sends_no_request(cluster: Cluster, operator: Any) -> None:
    cluster.index.known[SHA1] = json.loads(compress_result("k", cache_hit=True))
    async with operator() as shared:
        revision = await serve(cluster, md())
        await cluster.wait_for(lambda: traffic(cluster) == {revision: 100}, what="serving")
        before, cluster.requests[:] = passes(shared), []
        # The Deployment controller notes something that changes nothing: the owner's pass
        # runs (woken by the informer) and finds nothing to do.
        await cluster.patch(
            f"{DEPLOYS_PATH}/{revision}-default", {"status": {"observedGeneration": 7}}
        )
        await cluster.wait_for(lambda: passes(shared) >= before + 1, what="a pass")
        await asyncio.sleep(0.5)  # the pass's own requests, if any, are recorded by now
        assert cluster.requests == [], "a pass at rest asked the API server"


async def test_each_pass_reads_the_status_the_previous_one_wrote_without_a_get(
    cluster: Cluster, operator: Any
) -> None:
    """A canary's steps only advance if each pass sees the step the previous pass wrote;
    a spec change and a command are acted on at once, long before the 30 s resync."""
    cluster.index.known[SHA1] = json.loads(compress_result("k1", cache_hit=True))
    cluster.index.known[SHA2] = json.loads(compress_result("k2", cache_hit=True))
    steps = {"steps": [{"setWeight": 20}, {"setWeight": 40}, {"setWeight": 60}, {"pause": {}}]}
    async with operator():
        v1 = await serve(cluster, md(rollout=steps))
        cluster.requests[:] = []
        started = time.monotonic()
        await cluster.patch_md("enc", {"spec": md(version="v2", sha=SHA2, rollout=steps)["spec"]})
        v2 = await cluster.wait_for(
            lambda: next(
                (d for d in cluster.objects(DEPLOYS) if v1 not in d and d != "enc-router"), None
            ),
            timeout=5,
            what="the canary's Deployment (at once, not at the resync)",
        )
        assert time.monotonic() - started < 5
        await cluster.make_ready(v2)
        await cluster.wait_for(lambda: cluster.get(DEPLOYS, "enc-router"), what="the router")
        await cluster.make_ready("enc-router")
        canary = v2.removesuffix("-default")
        await cluster.wait_for(
            lambda: traffic(cluster) == {v1: 40, canary: 60}, what="three steps in a row"
        )
        await cluster.wait_for(
            lambda: (status(cluster)["currentStep"], status(cluster)["canaryWeight"]) == (3, 60),
            what="the pause in status",
        )
        started = time.monotonic()
        await cluster.patch_md("enc", annotation_patch(new_command(CommandKind.promote)))
        await cluster.wait_for(
            lambda: traffic(cluster) == {canary: 100}, timeout=5, what="promoted at once"
        )
        assert time.monotonic() - started < 5
        await cluster.wait_for(lambda: status(cluster).get("stableRevision") == canary)
        assert not cluster.objects(JOBS)
    assert GET_MD not in cluster.requests, "a pass read the ModelDeployment from the API server"


async def test_the_first_status_shows_the_replicas_the_pass_asked_for(
    cluster: Cluster, operator: Any
) -> None:
    """One status write fewer per rollout: the pass that creates a revision's Deployment
    writes its replicas (1 asked, 0 ready) instead of 0, which the next pass would rewrite."""
    cluster.index.known[SHA1] = json.loads(compress_result("k", cache_hit=True))
    async with operator():
        await serve(cluster, md())
    written = [
        r.data["status"]
        for r in cluster.server
        if r.resource is not None
        and r.resource.plural == "modeldeployments"
        and r.subresource == "status"
        and str(r.method.value).upper() == "PATCH"
    ]
    # No status ever shows the revision asking for 0 replicas (the old first write did, and
    # the next pass rewrote it). Which pass writes first depends on the machine's load: the
    # creating one (1 asked, 0 ready), or a later one once KMock made the Pod ready.
    shown = [s["revisions"][0]["environments"][0] for s in written if s.get("revisions")]
    assert shown and all(env["replicas"] == 1 for env in shown), shown
    assert shown[0]["readyReplicas"] in (0, 1)
    assert any(s.get("phase") == "Ready" for s in written), [s.get("phase") for s in written]


async def test_slow_store_lookups_of_many_objects_run_at_once(
    cluster: Cluster, operator: Any
) -> None:
    """Ten ModelDeployments whose store lookups each take a while are looked up together
    (timing.workers threads), not six at a time as in asyncio's default pool on 2 CPUs."""
    count = 10
    # Only the first lookup of each object waits: a later one (a pass that runs before the
    # status its first pass wrote is back) would otherwise hold a pass thread in a barrier
    # nobody else joins, up to its timeout, and the operator could not stop in time.
    released = threading.Event()
    barrier = threading.Barrier(count, action=released.set, timeout=15)
    found = json.loads(compress_result("k", cache_hit=True))
    threads: set[str] = set()

    class SlowStore:
        def find(self, *_: Any, **__: Any) -> dict[str, Any]:
            threads.add(threading.current_thread().name)
            if not released.is_set():
                barrier.wait()  # BrokenBarrierError unless all ten lookups are in flight at once
            return found

    cluster.finder = SlowStore()
    async with operator(Timing(resync_seconds=30, min_requeue_seconds=0.05, workers=count)):
        for i in range(count):
            await cluster.apply(md(name=f"m{i}"))
        await cluster.wait_for(
            lambda: len(cluster.objects(DEPLOYS)) >= count, timeout=30, what="ten revisions"
        )
        assert not cluster.objects(JOBS), "a lookup failed and a Job was made instead"
    assert len(threads) == count and all(t.startswith("reconcile") for t in threads), threads


def test_workers_come_from_the_environment() -> None:
    assert OperatorSettings.from_env({"ONNXSHIP_WORKERS": "48"}).timing.workers == 48
    assert OperatorSettings.from_env({}).timing.workers == 16


def versioned(name: str, rv: str, phase: str) -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "spec": {"model": {"version": phase}},
        "status": {"phase": phase},
    }


def md_informer() -> Informer:
    return Informer(None, "ModelDeployment", lambda ns: "", ["default"], selector=None)  # type: ignore[arg-type]


def test_what_kopf_saw_goes_into_the_cache_only_when_newer() -> None:
    inf = md_informer()
    assert inf.observe(versioned("enc", "5", "first"))  # nothing cached yet
    inf.wrote(versioned("enc", "9", "written"))  # our status patch's answer
    assert not inf.observe(versioned("enc", "8", "older")), "kopf's copy predates our write"
    assert not inf.observe(versioned("enc", "9", "same"))
    assert inf.get("default", "enc")["status"]["phase"] == "written"
    assert inf.observe(versioned("enc", "11", "spec changed"))
    assert inf.get("default", "enc")["status"]["phase"] == "spec changed"
    # Versions that do not tell (a mock server's): the cache keeps what it has.
    assert not inf.observe(versioned("enc", "", "unordered"))
    inf._apply_event("DELETED", versioned("enc", "12", "deleted"))
    assert not inf.observe(versioned("enc", "11", "late")), "a deleted object came back"


def test_a_name_deleted_and_made_again_follows_the_new_object() -> None:
    """The watch brings the deletion before the operator's delete call returns, then the
    re-created object's events: a rollback's revision must be seen ready (mock versions)."""
    inf = md_informer()
    inf._apply_event("ADDED", versioned("enc", "", "old"))
    inf._apply_event("DELETED", versioned("enc", "", "old"))
    inf.deleted("default", "enc")  # the DELETE's answer, handled after its event
    inf._apply_event("ADDED", versioned("enc", "", "made again"))
    inf.wrote(versioned("enc", "", "made again"))  # the create's answer, after its event
    inf._apply_event("MODIFIED", versioned("enc", "", "ready"))
    assert inf.get("default", "enc")["status"]["phase"] == "ready"


def test_after_its_own_write_the_cache_skips_older_events_even_without_versions() -> None:
    """A mock server keeps one resourceVersion for every change: the write's own event (in
    order on the watch) marks where older events end."""
    inf = md_informer()
    inf._apply_event("ADDED", versioned("enc", "1", "created"))
    inf.wrote(versioned("enc", "1", "written"))
    inf._apply_event("MODIFIED", versioned("enc", "1", "finalizer added"))  # before our write
    assert inf.get("default", "enc")["status"]["phase"] == "written"
    inf._apply_event("MODIFIED", versioned("enc", "1", "written"))  # our write's own event
    inf._apply_event("MODIFIED", versioned("enc", "1", "after"))
    assert inf.get("default", "enc")["status"]["phase"] == "after"

    # The write's own event, and a user's change after it, both came before the write's
    # answer was handled: the cache keeps the change, and takes the next event.
    inf._apply_event("MODIFIED", versioned("enc", "1", "written again"))
    inf._apply_event("MODIFIED", versioned("enc", "1", "spec changed"))
    inf.wrote(versioned("enc", "1", "written again"))
    assert inf.get("default", "enc")["status"]["phase"] == "spec changed"
    inf._apply_event("MODIFIED", versioned("enc", "1", "next"))
    assert inf.get("default", "enc")["status"]["phase"] == "next"


async def test_a_miss_is_read_once_then_kept(cluster: Cluster) -> None:
    await cluster.create(MD_PATH, versioned("enc", "3", "Ready"))
    requests: list[tuple[str, str, str]] = []
    api = Kube.for_url(str(cluster.server.url))._api
    kube = Kube(api, on_request=lambda *r: requests.append(r))
    kube.start_informers(kinds=("ModelDeployment",))
    try:
        # In a thread: the listing it waits for is answered by KMock, on this loop.
        assert await asyncio.to_thread(kube._informers["ModelDeployment"].wait_synced)
        await cluster.create(MD_PATH, versioned("new", "4", "Progressing"))
        # Perhaps in the cache by now, else read (in a thread: KMock serves on this loop).
        got = await asyncio.to_thread(kube.current, "ModelDeployment", "default", "new")
        assert got is not None and got["status"]["phase"] == "Progressing"
        requests.clear()
        assert kube.current("ModelDeployment", "default", "enc")["status"]["phase"] == "Ready"
        assert kube.current("ModelDeployment", "default", "new") is not None
        assert requests == []
        await cluster.server.delete(f"{MD_PATH}/enc")
        await cluster.wait_for(
            lambda: kube.current("ModelDeployment", "default", "enc") is None, what="deletion"
        )
        assert requests == [], "a deleted object is known gone, not asked for again"
    finally:
        kube.stop_informers()


def test_a_list_by_owner_reads_its_own_children_only() -> None:
    inf = Informer(None, "Deployment", lambda ns: "", ["default"])  # type: ignore[arg-type]
    for i in range(3000):
        inf.wrote(deployment(f"m{i}-r1-default", owner=f"m{i}"))
    owner = {"onnxship.io/deployment": "m7"}
    assert [d["metadata"]["name"] for d in inf.list("default", owner)] == ["m7-r1-default"]
    assert inf.list("other", owner) == []

    def timed(selector: dict[str, str]) -> float:
        start = time.perf_counter()
        for _ in range(200):
            inf.list("default", selector)
        return time.perf_counter() - start

    scan = timed({"onnxship.io/component": "model"})  # no owner: every cached object
    by_owner = timed(owner)
    assert by_owner * 20 < scan, (by_owner, scan)

    # The index follows relabels and deletions.
    inf.wrote(deployment("m7-r1-default", owner="m8"))
    assert inf.list("default", owner) == []
    assert len(inf.list("default", {"onnxship.io/deployment": "m8"})) == 2
    inf.deleted("default", "m7-r1-default")
    left = inf.list("default", {"onnxship.io/deployment": "m8"})
    assert [d["metadata"]["name"] for d in left] == ["m8-r1-default"]


async def test_cached_workloads_keep_no_pod_template_and_apply_still_skips_them(
    cluster: Cluster,
) -> None:
    requests: list[tuple[str, str, str]] = []
    api = Kube.for_url(str(cluster.server.url))._api
    kube = Kube(api, on_request=lambda *r: requests.append(r))
    kube.start_informers(kinds=("Deployment",))
    try:
        desired = deployment("enc-r1-default")
        desired["spec"]["template"] = {"spec": {"containers": [{"name": "serve", "image": "a"}]}}
        _, changed = await _apply(kube, desired)
        assert changed
        cached = kube.get("Deployment", "default", "enc-r1-default")
        assert "template" not in cached["spec"] and cached["spec"]["replicas"] == 1
        requests.clear()
        assert (await _apply(kube, desired))[1] is False and requests == []
        desired["spec"]["template"]["spec"]["containers"][0]["image"] = "b"
        assert (await _apply(kube, desired))[1] is True
        assert requests == [("patch", "Deployment", "")]
        live = cluster.get(DEPLOYS, "enc-r1-default")
        assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "b"
    finally:
        kube.stop_informers()


async def _apply(kube: Kube, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    return await asyncio.to_thread(kube.apply, obj)
