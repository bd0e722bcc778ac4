"""The Kubernetes permissions the operator needs, written down once.

The Helm chart renders its Role/ClusterRole from ``RULES`` (``onnxship rbac`` prints them).
tests/controller/test_rbac.py checks both ways: every request the operator makes is covered
by a rule, and every permission granted here is used by a full run or listed there with the
reason it is needed (kopf's peering and namespace scanning, which those tests do not run).
"""

from __future__ import annotations

from typing import Any

RULES: list[dict[str, Any]] = [
    # The resource itself: kopf lists, watches and patches it (finalizer, its annotations);
    # each reconcile pass reads it afresh.
    {
        "apiGroups": ["onnxship.io"],
        "resources": ["modeldeployments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["onnxship.io"], "resources": ["modeldeployments/status"], "verbs": ["patch"]},
    # What the operator creates, all owned by a ModelDeployment. Kube.apply creates or
    # merge-patches; revisions and clean-up delete; informers list and watch each kind (by
    # label), so reads come from memory and a Deployment's or a Job's status wakes the owner.
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["services", "configmaps"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    # With traffic.router: gatewayAPI; deleted with its owner by the garbage collector.
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "verbs": ["get", "create", "patch"],
    },
    # Why a compression Job failed: its Pod's exit code and termination message (by label).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    # Store credentials named by spec.artifacts.credentialsSecret: read one by name, never list.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Events about ModelDeployments (kopf posts core/v1 Events).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # kopf: peering between replicas so that only one acts.
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["list", "watch", "patch"]},
]

# Only for an install that watches every namespace (kopf follows namespaces and CRDs).
CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["list", "watch", "patch"],
    },
]


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )
