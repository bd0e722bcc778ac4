"""The Kubernetes permissions the operator needs, written down once.

The Helm chart renders its Role/ClusterRole from ``RULES`` (``onnxship rbac`` prints them) and
a test checks that every request the handlers make against the API is covered by a rule.
"""

from __future__ import annotations

from typing import Any

MANAGE = ["get", "list", "watch", "create", "patch", "update", "delete"]

RULES: list[dict[str, Any]] = [
    # The resource itself: watched by kopf, annotated by kopf's progress storage.
    {
        "apiGroups": ["onnxship.io"],
        "resources": ["modeldeployments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": ["onnxship.io"],
        "resources": ["modeldeployments/status"],
        "verbs": ["get", "patch", "update"],
    },
    # What the operator creates, all owned by a ModelDeployment.
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": MANAGE},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": MANAGE},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": MANAGE},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": MANAGE},
    # Why a compression Job failed: its Pod's exit code and termination message.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    # Store credentials named by spec.artifacts.credentialsSecret: read one by name, never list.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Events about ModelDeployments.
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: peering between replicas so that only one acts.
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]

# Only for an install that watches every namespace.
CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )
