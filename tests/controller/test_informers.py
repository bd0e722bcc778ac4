"""The informers behind the operator's reads: one listing, then a watch, then memory.

Against KMock (a real HTTP server and watch stream); the ordering rules (an older event does
not undo the operator's own write, a deleted object is not brought back by a late event) on
the informer directly, since no server can be made to deliver events late on purpose.
"""

from __future__ import annotations

import asyncio
import json
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


def as_served(obj: dict[str, Any], rv: str) -> dict[str, Any]:
    """``obj`` as the API server answers it: with the fields its controllers and clients add."""
    served = {**obj, "metadata": dict(obj["metadata"])}
    meta = served["metadata"]
    meta.update(
        resourceVersion=rv,
        uid="6a1c-" + meta["name"],
        generation=1,
        creationTimestamp="2026-12-04T22:00:00Z",
        managedFields=[{"manager": "onnxship", "fieldsV1": {"f:spec": {}}}] * 3,
        ownerReferences=[{"apiVersion": "onnxship.io/v1alpha1", "kind": "ModelDeployment"}],
    )
    meta["annotations"] = {
        **meta.get("annotations", {}),
        "deployment.kubernetes.io/revision": "1",
        "kubectl.kubernetes.io/last-applied-configuration": "{...}" * 200,
    }
    return served


def test_the_cache_keeps_what_a_pass_reads_and_not_the_rest() -> None:
    """At 1,000 ModelDeployments the informers hold 5,000 children: each is kept as the few
    fields a pass reads (replicas, readiness, the content hash, labels), not as served."""
    inf = informer()
    served = as_served(deployment("enc-r1-default", ready=1), "120")
    served["metadata"]["annotations"]["onnxship.io/config-hash"] = "abc123"
    served["spec"] = {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "enc"}},
        "template": {"spec": {"containers": [{"name": "serve", "args": ["--x"] * 50}]}},
    }
    served["status"] = {
        "readyReplicas": 1,
        "updatedReplicas": 1,
        "conditions": [{"type": "Available", "message": "has minimum availability" * 5}] * 2,
    }
    inf._apply_event("ADDED", served)
    cached = inf.get("default", "enc-r1-default")
    assert cached["spec"] == {"replicas": 1}
    assert cached["status"] == {"readyReplicas": 1, "updatedReplicas": 1}
    assert cached["metadata"]["annotations"] == {"onnxship.io/config-hash": "abc123"}
    assert cached["metadata"]["labels"] == served["metadata"]["labels"]
    assert cached["metadata"]["resourceVersion"] == "120"
    # What Kube.apply decides from it: unchanged content is not patched again.
    assert inf.list("default", {"onnxship.io/deployment": "enc"}) == [cached]


def test_a_model_deployment_is_cached_without_kopfs_and_kubectls_copies_of_its_spec() -> None:
    inf = Informer(None, "ModelDeployment", lambda ns: "", ["default"], selector=None)  # type: ignore[arg-type]
    served = as_served(
        {
            "apiVersion": "onnxship.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {
                "name": "enc",
                "namespace": "default",
                "annotations": {
                    "onnxship.io/command": '{"action": "promote"}',
                    "kopf.onnxship.io/last-handled-configuration": '{"spec": {}}' * 100,
                },
            },
            "spec": {"model": {"uri": "s3://models/enc.onnx"}},
            "status": {"phase": "Ready", "observedGeneration": 1},
        },
        "7",
    )
    inf.wrote(served)
    cached = inf.get("default", "enc")
    assert cached["metadata"]["annotations"] == {"onnxship.io/command": '{"action": "promote"}'}
    assert cached["spec"] == served["spec"] and cached["status"] == served["status"]
    assert cached["metadata"]["generation"] == 1 and cached["metadata"]["uid"] == "6a1c-enc"


class Pages:
    """An API server's paged list (limit / continue), as kube-apiserver serves one."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.pages: list[int] = []  # objects served per request

    def __call__(self, namespace: str, verb: str, query: list[tuple[str, str]], _: Any) -> Any:
        q = dict(query)
        start = int(q.get("continue") or 0)
        end = min(start + int(q["limit"]) if "limit" in q else len(self.items), len(self.items))
        meta = {"resourceVersion": "500"}
        if end < len(self.items):
            meta["continue"] = str(end)
        body = {"metadata": meta, "items": self.items[start:end]}
        self.pages.append(end - start)

        class Response:
            data = json.dumps(body).encode()

            def read(self) -> None:
                pass

        return Response()


def test_a_listing_is_read_in_pages() -> None:
    """1,200 objects are never parsed at once (the start-up peak of the operator's memory),
    and every page's objects are in the cache."""
    inf = informer()
    server = Pages([as_served(deployment(f"enc{i}-r1-default"), str(i + 1)) for i in range(1200)])
    inf._request_ns = server  # type: ignore[method-assign]
    assert inf._relist("default") == "500"
    assert len(inf.list("default", {"onnxship.io/component": "model"})) == 1200
    assert server.pages == [500, 500, 200]
    assert inf.synced
