"""Every request the operator makes is allowed by the RBAC rules the Helm chart installs."""

from __future__ import annotations

from typing import Any

from onnxship.controller.rbac import CLUSTER_RULES, RULES, allows

from .conftest import Cluster, compress_result
from .scenarios import full_run
from .test_lifecycle import DEPLOYS, JOBS, md, status

VERBS = {
    "list": "list",
    "watch": "watch",
    "fetch": "get",
    "create": "create",
    "update": "patch",
    "delete": "delete",
}
# The operator's requests: kopf's own, and our Kubernetes client's. The test's own client
# (playing the kubelet and the user) is not the operator.
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


async def test_every_api_call_is_covered(cluster: Cluster, operator: Any) -> None:
    async with operator():
        await cluster.apply(md())
        job = await cluster.wait_for(lambda: next(iter(cluster.objects(JOBS)), None), what="Job")
        await cluster.finish_job(job, 0, compress_result("k"))
        deploy = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS)), None), what="Deployment"
        )
        await cluster.make_ready(deploy)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Ready", what="Ready")
        await cluster.server.delete(
            "/apis/onnxship.io/v1alpha1/namespaces/default/modeldeployments/enc"
        )
        await cluster.wait_for(lambda: not cluster.objects(DEPLOYS), what="clean-up")

    # The operator's requests: kopf's own, and our Kubernetes client's. The test's own
    # client (playing the kubelet and the user) is not the operator.
    operator_agents = OPERATOR_AGENTS
    checked, missing = set(), set()
    for request in cluster.server:
        if request.resource is None or request.action is None or not request.resource.plural:
            continue  # discovery: /api, /apis, /version are open to every authenticated user
        agent = {k.lower(): v for k, v in request.headers.items()}.get("user-agent", "")
        if not agent.startswith(operator_agents):
            continue
        verb = VERBS[str(request.action.value).lower()]
        res = request.resource
        resource = res.plural + (f"/{request.subresource}" if request.subresource else "")
        key = (res.group or "", resource, verb)
        checked.add(key)
        if not allows(RULES + CLUSTER_RULES, *key):
            missing.add(key)
    assert ("apps", "deployments", "create") in checked and (
        "onnxship.io",
        "modeldeployments/status",
        "patch",
    ) in checked
    assert not missing, f"requests not covered by controller/rbac.py: {sorted(missing)}"


# What the operator is granted but a full run against KMock does not use, and why it stays.
NOT_IN_A_RUN: dict[tuple[str, str, str], str] = {
    **{
        (group, resource, "get"): "passes read the children from the informers' cache; a GET "
        "goes to the API server before a kind's first listing and when a create finds the "
        "object there already (409, a race the cache had not seen yet)"
        for group, resource in (
            ("", "services"),
            ("", "configmaps"),
            ("apps", "deployments"),
            ("batch", "jobs"),
        )
    },
    ("onnxship.io", "modeldeployments", "get"): "passes read the ModelDeployment from the "
    "informers' cache (fed kopf's copy too); a GET goes to the API server for one not in it yet "
    "and after a conflict on a status write; kubectl onnxship reads it",
    ("", "namespaces", "list"): "kopf with -A lists namespaces (scanning is off under KopfRunner)",
    ("", "namespaces", "watch"): "kopf with -A watches namespaces (scanning is off here)",
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf with -A lists CRDs "
    "to follow resources that appear (scanning is off here)",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "kopf with -A watches CRDs",
    **{
        ("kopf.dev", peering, verb): "kopf peering (--peering, the chart's replicas > 1) lists, "
        "watches and patches the peering object the chart creates; these tests run --standalone"
        for peering in ("kopfpeerings", "clusterkopfpeerings")
        for verb in ("list", "watch", "patch")
    },
}


def granted() -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in RULES + CLUSTER_RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_every_rule_is_used_by_a_full_run_or_says_why_it_is_needed(
    cluster: Cluster, operator: Any
) -> None:
    """Least privilege: over compress, serve, canary, promote, rollback, replicas changed, a
    failed gate, the Gateway API and deletion, every (group, resource, verb) the chart grants
    is used by an operator request, or NOT_IN_A_RUN says why it is needed anyway."""
    async with operator():
        await full_run(cluster)
    used = set()
    for request in cluster.server:
        if request.resource is None or request.action is None or not request.resource.plural:
            continue
        agent = {k.lower(): v for k, v in request.headers.items()}.get("user-agent", "")
        if not agent.startswith(OPERATOR_AGENTS):
            continue
        verb = VERBS[str(request.action.value).lower()]
        if verb == "patch" and str(request.method.value).upper() == "PUT":
            verb = "update"
        res = request.resource
        resource = res.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((res.group or "", resource, verb))
    rules = granted()
    assert not {k for k in used if not allows(RULES + CLUSTER_RULES, *k)}, "see the test above"
    unused = sorted(rules - used - set(NOT_IN_A_RUN))
    assert not unused, f"granted, never used, not explained (drop them from rbac.py): {unused}"
    stale = sorted(k for k in NOT_IN_A_RUN if k in used or k not in rules)
    assert not stale, f"NOT_IN_A_RUN entries that are used or not granted: {stale}"
    print(f"{len(rules)} permissions: {len(rules & used)} used, {len(NOT_IN_A_RUN)} explained")
