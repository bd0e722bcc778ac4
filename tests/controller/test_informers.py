"""The informers behind the operator's reads: one listing, then a watch, then memory.

Against KMock (a real HTTP server and watch stream); the ordering rules (an older event does
not undo the operator's own write, a deleted object is not brought back by a late event) on
the informer directly, since no server can be made to deliver events late on purpose.
"""

from __future__ import annotations

import asyncio
from typing import Any

from onnxship.controller.informers import Informer
from onnxship.controller.kube import Kube

from .conftest import Cluster

DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"


def deployment(name: str, owner: str = "enc", ready: int = 0, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"onnxship.io/deployment": owner, "onnxship.io/component": "model", **labels}
            if owner
            else labels,
        },
        "spec": {"replicas": 1},
        "status": {"readyReplicas": ready},
    }


async def test_reads_come_from_memory_and_changes_arrive_by_watch(cluster: Cluster) -> None:
    await cluster.create(DEPLOYS, deployment("enc-r1-default"))
    await cluster.create(DEPLOYS, deployment("someone-elses", owner="", app="web"))
    requests: list[tuple[str, str, str]] = []
    changes: list[tuple[str, str, str]] = []
    kube = Kube(
        Kube.for_url(str(cluster.server.url))._api,
        on_request=lambda *r: requests.append(r),
    )
    kube.start_informers(
        on_change=lambda kind, type_, obj: changes.append((kind, type_, obj["metadata"]["name"])),
        kinds=("Deployment",),
    )
    try:
        got = await asyncio.to_thread(kube.get, "Deployment", "default", "enc-r1-default")
        assert got is not None and got["status"]["readyReplicas"] == 0
        assert await asyncio.to_thread(kube.get, "Deployment", "default", "someone-elses") is None
        listed = kube.list("Deployment", "default", {"onnxship.io/deployment": "enc"})
        assert [d["metadata"]["name"] for d in listed] == ["enc-r1-default"]
        assert ("get", "Deployment", "") not in requests, "a read went to the API server"
        assert ("list", "Deployment", "") in requests and ("watch", "Deployment", "") in requests

        # The cluster's controller makes the pods ready: the cache follows, the owner hears.
        await cluster.patch(f"{DEPLOYS}/enc-r1-default", {"status": {"readyReplicas": 1}})
        await cluster.wait_for(
            lambda: kube.get("Deployment", "default", "enc-r1-default")["status"]["readyReplicas"]
            == 1,
            what="the watch event in the cache",
        )
        assert ("Deployment", "MODIFIED", "enc-r1-default") in changes

        # The operator's own write is there at once (no wait for its event).
        created = await asyncio.to_thread(kube.create, deployment("enc-r2-default"))
        assert kube.get("Deployment", "default", "enc-r2-default") == created
        await asyncio.to_thread(kube.delete, "Deployment", "default", "enc-r2-default")
        assert kube.get("Deployment", "default", "enc-r2-default") is None
        await cluster.server.delete(f"{DEPLOYS}/enc-r1-default")
        await cluster.wait_for(
            lambda: kube.get("Deployment", "default", "enc-r1-default") is None,
            what="the deletion in the cache",
        )
    finally:
        kube.stop_informers()


def informer() -> Informer:
    return Informer(None, "Deployment", lambda ns: "", ["default"])  # type: ignore[arg-type]


def versioned(rv: str, ready: int) -> dict[str, Any]:
    obj = deployment("enc-r1-default", ready=ready)
    obj["metadata"]["resourceVersion"] = rv
    obj["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    return obj


def test_an_older_event_does_not_undo_the_operators_write() -> None:
    inf = informer()
    inf.wrote(versioned("120", ready=2))
    inf._apply_event("MODIFIED", versioned("118", ready=1))  # sent before the write
    assert inf.get("default", "enc-r1-default")["status"]["readyReplicas"] == 2
    inf._apply_event("MODIFIED", versioned("125", ready=3))
    cached = inf.get("default", "enc-r1-default")
    assert cached["status"]["readyReplicas"] == 3
    assert "managedFields" not in cached["metadata"], "kept in memory 1,000 times for nothing"


def test_a_deleted_object_is_not_brought_back_by_a_late_event() -> None:
    inf = informer()
    inf.wrote(versioned("120", ready=1))
    inf.deleted("default", "enc-r1-default")
    inf._apply_event("MODIFIED", versioned("121", ready=1))  # a status update before the delete
    assert inf.get("default", "enc-r1-default") is None
    inf._apply_event("DELETED", versioned("122", ready=1))
    inf._apply_event("ADDED", versioned("130", ready=0))  # made again, by name
    assert inf.get("default", "enc-r1-default") is not None
