"""The operator, as its ServiceAccount, against the real API server and controllers.

The harness plays the node (see harness/kubelet.py): Job Pods end with the termination
message ``onnxship compress`` writes, every other Pod turns Ready. Jobs, ReplicaSets,
Deployment status and garbage collection are the real kube-controller-manager's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s
from tests.controller.conftest import compress_result

from e2e.harness.api import Api, wait_for
from e2e.harness.control_plane import ControlPlane
from e2e.harness.install import install_operator_rbac, service_account_token
from e2e.harness.kubelet import Exit, FakeKubelet
from e2e.harness.operator import Operator, start_operator
from onnxship.controller.kube import Kube
from onnxship.controller.rbac import RULES

MDS = "/apis/onnxship.io/v1alpha1/namespaces/{ns}/modeldeployments"
CHILDREN = {
    "jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "replicasets": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "services": "/api/v1/namespaces/{ns}/services",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "pods": "/api/v1/namespaces/{ns}/pods",
}


OURS = "onnxship.io/deployment=enc"  # what the operator made for ModelDeployment enc


def md(name: str = "enc", version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"s3://models/{name}/{version}/model.onnx", "version": version},
            "artifacts": {"uri": "s3://onnxship-artifacts/e2e/", "credentialsSecret": "s3-creds"},
            "serving": {"replicas": 2},
        },
    }


def status(admin: Api, ns: str, name: str = "enc") -> dict[str, Any]:
    obj = admin.get(f"{MDS.format(ns=ns)}/{name}") or {}
    return obj.get("status") or {}


def names(admin: Api, kind: str, ns: str, selector: str = "") -> set[str]:
    return {o["metadata"]["name"] for o in admin.items(CHILDREN[kind].format(ns=ns), selector)}


def serve_first_revision(
    admin: Api, kubelet: FakeKubelet, ns: str, name: str = "enc", key: str = "key-v1"
) -> str:
    """Apply, let the compression Job's Pod finish, wait for phase Ready: the revision."""
    admin.create(MDS.format(ns=ns), md(name), fieldValidation="Strict")
    job = wait_for(lambda: next(iter(names(admin, "jobs", ns)), None), what="a compression Job")
    kubelet.job_exits[job] = Exit(0, compress_result(key))
    wait_for(lambda: status(admin, ns, name).get("phase") == "Ready", timeout=90, what="Ready")
    return str(status(admin, ns, name)["stableRevision"])


def test_model_deployment_becomes_job_then_serving(
    admin: Api, namespace: str, kubelet: FakeKubelet, operator: Callable[..., Operator]
) -> None:
    ns = namespace
    operator()
    admin.create(MDS.format(ns=ns), md(), fieldValidation="Strict")

    job_name = wait_for(lambda: next(iter(names(admin, "jobs", ns)), None), what="a Job")
    revision = job_name.removesuffix("-default")
    job = admin.get(f"{CHILDREN['jobs'].format(ns=ns)}/{job_name}")
    owner = job["metadata"]["ownerReferences"][0]
    live_md = admin.get(f"{MDS.format(ns=ns)}/enc")
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "ModelDeployment",
        "enc",
        live_md["metadata"]["uid"],
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["compress", "s3://models/enc/v1/model.onnx"]
    wait_for(lambda: status(admin, ns).get("phase") == "Compressing", what="phase Compressing")
    assert not names(admin, "deployments", ns, OURS), "nothing is served before the artifact exists"
    # The Job controller made a Pod; it is still running.
    wait_for(lambda: names(admin, "pods", ns, f"job-name={job_name}"), what="the Job's Pod")

    kubelet.job_exits[job_name] = Exit(0, compress_result("key-v1"))
    wait_for(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in (admin.get(f"{CHILDREN['jobs'].format(ns=ns)}/{job_name}") or {})
            .get("status", {})
            .get("conditions", [])
        ),
        what="the Job controller to mark the Job Complete",
    )
    workload = f"{revision}-default"
    deploy = wait_for(
        lambda: admin.get(f"{CHILDREN['deployments'].format(ns=ns)}/{workload}"),
        what="the revision's Deployment",
    )
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cache-key") + 1] == "key-v1"
    # No Service of its own at rest: only a router calls a revision by one.
    assert admin.get(f"{CHILDREN['services'].format(ns=ns)}/{workload}") is None

    wait_for(lambda: status(admin, ns).get("phase") == "Ready", timeout=90, what="phase Ready")
    st = status(admin, ns)
    live_md = admin.get(f"{MDS.format(ns=ns)}/enc")
    assert st["observedGeneration"] == live_md["metadata"]["generation"]
    assert st["stableRevision"] == revision
    assert st["endpoint"] == f"http://enc.{ns}.svc"
    [rec] = st["revisions"]
    assert rec["environments"][0]["cacheKey"] == "key-v1"
    assert {c["type"]: c["status"] for c in st["conditions"]}["Available"] == "True"
    # Two ready replicas counted by the real ReplicaSet and Deployment controllers.
    live = admin.get(f"{CHILDREN['deployments'].format(ns=ns)}/{workload}")
    assert live["status"]["readyReplicas"] == 2

    # One revision in one environment: the Service users call selects its two pods, and
    # the real EndpointSlice controller lists exactly them; no router runs.
    pods = {
        p["status"]["podIP"]
        for p in admin.items(
            f"/api/v1/namespaces/{ns}/pods",
            f"onnxship.io/revision={revision},onnxship.io/component=model",
        )
    }
    assert len(pods) == 2
    wait_for(lambda: service_endpoints(admin, ns) == pods, what="the Service's endpoints")
    assert traffic(admin, ns) == {revision: 100}
    assert admin.get(f"{CHILDREN['deployments'].format(ns=ns)}/enc-router") is None
    assert admin.get(f"{CHILDREN['configmaps'].format(ns=ns)}/enc-router") is None


def service_endpoints(admin: Api, ns: str, name: str = "enc") -> set[str]:
    """The ready addresses behind a Service, as kube-proxy would send to them."""
    slices = admin.items(
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        f"kubernetes.io/service-name={name}",
    )
    return {
        a
        for s in slices
        for ep in s.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready") is not False
        for a in ep.get("addresses", [])
    }


def _left(admin: Api, ns: str) -> dict[str, set[str]]:
    return {k: v for k in CHILDREN if (v := names(admin, k, ns, OURS))}


def test_deleting_the_model_deployment_removes_everything_it_made(
    admin: Api, namespace: str, kubelet: FakeKubelet, operator: Callable[..., Operator]
) -> None:
    ns = namespace
    operator()
    serve_first_revision(admin, kubelet, ns)
    wait_for(lambda: admin.get(f"{CHILDREN['services'].format(ns=ns)}/enc"), what="the Service")
    assert {"jobs", "deployments", "replicasets", "services", "pods"} <= set(_left(admin, ns))
    admin.delete(f"{MDS.format(ns=ns)}/enc")
    wait_for(lambda: admin.get(f"{MDS.format(ns=ns)}/enc") is None, what="the ModelDeployment gone")
    try:
        wait_for(lambda: not _left(admin, ns), timeout=60, what="every child gone")
    except AssertionError:
        raise AssertionError(f"left behind: {_left(admin, ns)}") from None


def test_children_are_garbage_collected_through_owner_references(
    admin: Api, namespace: str, kubelet: FakeKubelet, operator: Callable[..., Operator]
) -> None:
    """With no operator running, the garbage collector alone removes what it made.

    kopf puts its finalizer on every ModelDeployment (the rollout daemon needs one), so a
    delete while no operator runs waits until someone removes it; then the ownerReferences
    must be right for the kube-controller-manager to collect the children.
    """
    ns = namespace
    op = operator()
    serve_first_revision(admin, kubelet, ns)
    wait_for(lambda: admin.get(f"{CHILDREN['services'].format(ns=ns)}/enc"), what="the Service")
    op.stop()
    path = f"{MDS.format(ns=ns)}/enc"
    finalizers = admin.get(path)["metadata"].get("finalizers", [])
    admin.delete(path)
    if finalizers:
        live = admin.get(path)
        assert live is not None and live["metadata"].get("deletionTimestamp"), finalizers
        admin.merge_patch(path, {"metadata": {"finalizers": None}})
    wait_for(lambda: admin.get(path) is None, what="the ModelDeployment gone")
    try:
        wait_for(lambda: not _left(admin, ns), timeout=90, what="the garbage collector")
    except AssertionError:
        raise AssertionError(f"left behind: {_left(admin, ns)}") from None


def test_status_writes_and_create_conflicts_through_the_operators_client(
    control_plane: ControlPlane, admin: Api, namespace: str
) -> None:
    """The operator's own Kube client: a create that loses a race (409) becomes a patch,
    and its status patches go through the status subresource."""
    ns = namespace
    cfg = k8s.Configuration(host=control_plane.server)
    cfg.ssl_ca_cert = str(control_plane.pki.ca_cert)
    cfg.api_key = {"authorization": admin.token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    kube = Kube(k8s.ApiClient(cfg))

    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "raced", "namespace": ns},
        "data": {"routes.json": "{}"},
    }
    # Another writer creates it between the operator's GET and its POST.
    admin.create(f"/api/v1/namespaces/{ns}/configmaps", {**cm, "data": {"routes.json": "old"}})
    real_get = kube.get
    calls = {"n": 0}

    def stale_get(kind: str, namespace: str, name: str) -> Any:
        calls["n"] += 1
        return None if calls["n"] == 1 else real_get(kind, namespace, name)

    kube.get = stale_get  # type: ignore[method-assign]
    obj, changed = kube.apply(cm)
    assert changed and obj["data"] == {"routes.json": "{}"}
    assert admin.get(f"/api/v1/namespaces/{ns}/configmaps/raced")["data"] == {"routes.json": "{}"}

    admin.create(MDS.format(ns=ns), md("st"))
    kube.patch(
        "ModelDeployment", ns, "st", {"status": {"phase": "Compressing"}}, subresource="status"
    )
    live = admin.get(f"{MDS.format(ns=ns)}/st")
    assert live["status"]["phase"] == "Compressing" and live["metadata"]["generation"] == 1


def test_operator_killed_mid_compression_converges_after_restart(
    admin: Api, namespace: str, kubelet: FakeKubelet, operator: Callable[..., Operator]
) -> None:
    """SIGKILL while the Job runs; the Job ends while no operator runs; a new one finishes."""
    ns = namespace
    first = operator()
    admin.create(MDS.format(ns=ns), md(), fieldValidation="Strict")
    job = wait_for(lambda: next(iter(names(admin, "jobs", ns)), None), what="a Job")
    wait_for(lambda: status(admin, ns).get("phase") == "Compressing", what="Compressing")
    first.kill()
    kubelet.job_exits[job] = Exit(0, compress_result("key-v1"))
    wait_for(
        lambda: (
            (admin.get(f"{CHILDREN['jobs'].format(ns=ns)}/{job}") or {})
            .get("status", {})
            .get("succeeded")
        ),
        what="the Job to succeed with no operator running",
    )
    operator()
    wait_for(lambda: status(admin, ns).get("phase") == "Ready", timeout=90, what="Ready")
    assert names(admin, "jobs", ns) == {job}, "the restarted operator compressed again"
    assert names(admin, "deployments", ns, "onnxship.io/component=model") == {
        f"{job.removesuffix('-default')}-default"
    }


def test_a_missing_rbac_rule_is_refused_by_the_api_server(
    control_plane: ControlPlane, admin: Api, namespace: str
) -> None:
    """The harness's RBAC is real: without the Jobs rule the operator is refused (403)."""
    ns = namespace
    install_operator_rbac(admin, ns, [r for r in RULES if "jobs" not in r["resources"]])
    op = start_operator(
        control_plane.folder,
        control_plane.server,
        control_plane.pki.ca_cert,
        service_account_token(admin, ns),
        ns,
        name="operator-no-jobs",
    )
    try:
        admin.create(MDS.format(ns=ns), md(), fieldValidation="Strict")
        refused = wait_for(
            lambda: [line for line in op.forbidden() if re.search(r'resource \\?"jobs', line)],
            what="a 403 on jobs in the operator's log",
        )
        assert f"system:serviceaccount:{ns}:onnxship-operator" in refused[0]
        assert not names(admin, "jobs", ns)
    finally:
        op.stop()


def traffic(admin: Api, ns: str, name: str = "enc") -> dict[str, int]:
    """Each revision's share of what users send to the Service: the router's table when the
    Service selects the router, else all to the revision whose pods it selects."""
    svc = admin.get(f"{CHILDREN['services'].format(ns=ns)}/{name}") or {}
    selector = (svc.get("spec") or {}).get("selector") or {}
    if selector.get("onnxship.io/component") == "router":
        cm = admin.get(f"{CHILDREN['configmaps'].format(ns=ns)}/{name}-router") or {}
        raw = (cm.get("data") or {}).get("routes.json")
        return {b["revision"]: b["weight"] for b in json.loads(raw)["backends"]} if raw else {}
    revision = selector.get("onnxship.io/revision", "")
    return {revision: 100} if revision else {}


# Moments of a canary at which the operator is SIGKILLed and started again.
KILL_POINTS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "never": lambda w: False,
    "right after the spec change": lambda w: True,
    "while the v2 Job runs": lambda w: bool(w["job"]),
    "at 30% to the canary": lambda w: w["v2"] is not None and w["routes"].get(w["v2"]) == 30,
    "during the pause at 60%": lambda w: w["v2"] is not None and w["routes"].get(w["v2"]) == 60,
    "once v2 takes all traffic": lambda w: w["v2"] is not None and w["routes"] == {w["v2"]: 100},
}


@pytest.mark.parametrize("kill_at", list(KILL_POINTS))
def test_new_version_walks_the_canary_steps(
    admin: Api,
    namespace: str,
    kubelet: FakeKubelet,
    operator: Callable[..., Operator],
    kill_at: str,
) -> None:
    """A spec change (generation 2) starts a canary whose weights follow the steps; an
    operator killed at any moment and started again ends in the same state."""
    ns = namespace
    op = operator()
    v1 = serve_first_revision(admin, kubelet, ns)
    wait_for(lambda: traffic(admin, ns) == {v1: 100}, what="all traffic to v1")
    spec = md(version="v2")["spec"]
    spec["rollout"] = {
        "steps": [
            {"setWeight": 30},
            {"pause": {"duration": "2s"}},
            {"setWeight": 60},
            {"pause": {"duration": "2s"}},
        ]
    }
    admin.merge_patch(f"{MDS.format(ns=ns)}/enc", {"spec": spec})
    world: dict[str, Any] = {"job": None, "v2": None, "routes": {}}
    seen: list[dict[str, int]] = []
    killed = False

    def step() -> bool:
        nonlocal op, killed
        world["job"] = world["job"] or next(
            (j for j in names(admin, "jobs", ns) if not j.startswith(v1)), None
        )
        if world["job"] and world["v2"] is None:
            world["v2"] = world["job"].removesuffix("-default")
            kubelet.job_exits[world["job"]] = Exit(0, compress_result("key-v2"))
        world["routes"] = traffic(admin, ns)
        if world["routes"] and (not seen or seen[-1] != world["routes"]):
            seen.append(world["routes"])
        if not killed and KILL_POINTS[kill_at](world):
            op.kill()
            killed = True
            op = operator()
        return world["v2"] is not None and world["routes"] == {world["v2"]: 100}

    try:
        wait_for(step, timeout=150, what="all traffic to v2", every=0.1)
    except AssertionError as exc:
        st = status(admin, ns)
        meta = (admin.get(f"{MDS.format(ns=ns)}/enc") or {}).get("metadata", {})
        deployments = {
            d["metadata"]["name"]: (
                d["metadata"].get("generation"),
                d["spec"].get("replicas"),
                d.get("status"),
            )
            for d in admin.items(CHILDREN["deployments"].format(ns=ns), OURS)
        }
        raise AssertionError(
            f"{exc}; weights seen: {seen}; phase {st.get('phase')}: {st.get('message')}; "
            f"canary {st.get('canaryRevision')} at step {st.get('currentStep')} since "
            f"{st.get('stepStartedAt')!r}, paused {st.get('paused')}, analysis "
            f"{st.get('analysis')}; conditions {st.get('conditions')}; "
            f"operator log {op.process.log}; deployments {deployments}; "
            f"annotations {meta.get('annotations')}"
        ) from None
    v2 = world["v2"]
    assert killed or kill_at == "never"
    if kill_at == "never":  # a restart may skip a step's weight; without one, none is skipped
        assert {v1: 70, v2: 30} in seen and {v1: 40, v2: 60} in seen, seen
    wait_for(lambda: status(admin, ns).get("stableRevision") == v2, what="v2 stable")
    wait_for(
        lambda: names(admin, "deployments", ns, "onnxship.io/component=model") == {f"{v2}-default"},
        what="v1's Deployment removed",
    )
    st = status(admin, ns)
    assert st["observedGeneration"] == 2 and st["phase"] == "Ready", st
    assert names(admin, "jobs", ns) == {f"{v1}-default", f"{v2}-default"}, "one Job a revision"
    # Done: the Service selects v2's pods again, and the router made for the canary goes,
    # with the revisions' Services it called.
    wait_for(
        lambda: not names(admin, "deployments", ns, "onnxship.io/component=router")
        and not names(admin, "configmaps", ns, OURS)
        and names(admin, "services", ns, OURS) == {"enc"},
        what="the router removed",
    )
    assert traffic(admin, ns) == {v2: 100}
    assert all(set(r) <= {v1, v2} for r in seen), seen
