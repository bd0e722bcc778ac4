"""Every request the operator makes is allowed by the RBAC rules the Helm chart installs."""

from __future__ import annotations

from typing import Any

from onnxship.controller.rbac import CLUSTER_RULES, RULES, allows

from .conftest import Cluster, compress_result
from .test_lifecycle import DEPLOYS, JOBS, md, status

VERBS = {
    "list": "list",
    "watch": "watch",
    "fetch": "get",
    "create": "create",
    "update": "patch",
    "delete": "delete",
}


async def test_every_api_call_is_covered(cluster: Cluster, operator: Any) -> None:
    with operator():
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
    operator_agents = ("kopf/", "OpenAPI-Generator/")
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
