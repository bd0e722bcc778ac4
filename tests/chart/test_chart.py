"""The Helm chart as a user meets it: lint, render, the objects and settings it produces."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from onnxship.controller.rbac import CLUSTER_RULES, RULES
from onnxship.controller.settings import OperatorSettings, Workloads
from tests.helpers.pod_security import assert_restricted

from .conftest import CHART, NAMESPACE, ROOT, Helm, find, one, operator_container

pytestmark = pytest.mark.timeout(1800)  # the first test may build helm (minutes, cold)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ------------------------------------------------------------------ files, no helm needed


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == package
    assert chart["version"] == package


def test_chart_crd_is_the_generated_one() -> None:
    generated = (ROOT / "crds" / "modeldeployments.onnxship.io.yaml").read_text()
    in_chart = (CHART / "crds" / "modeldeployments.onnxship.io.yaml").read_text()
    assert in_chart == generated, (
        "charts/onnxship/crds/ is stale: cp crds/modeldeployments.onnxship.io.yaml "
        "charts/onnxship/crds/ (or `make chart-sync`)"
    )


def test_chart_rbac_files_are_the_operators_rules() -> None:
    files = CHART / "files" / "rbac"
    assert json.loads((files / "namespaced.json").read_text()) == RULES, "run `make chart-sync`"
    assert json.loads((files / "cluster.json").read_text()) == RULES + CLUSTER_RULES


# ------------------------------------------------------------------ helm lint and template


def test_helm_lint_strict(helm: Helm, value_set: tuple[str, dict[str, Any]]) -> None:
    name, values = value_set
    proc = helm.run("lint", "--strict", str(CHART), *Helm.value_args(values), check=False)
    assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_defaults_install_a_cluster_wide_operator(helm: Helm) -> None:
    docs = helm.render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    deploy = one(docs, "Deployment")
    assert deploy["metadata"]["namespace"] == NAMESPACE
    assert deploy["spec"]["replicas"] == 1
    # One replica and no peering: never two operators at once, even during an upgrade.
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    c = operator_container(docs)
    assert c["image"] == "ghcr.io/onnxship/operator:0.1.0"
    assert c["args"] == [
        "operator",
        "--all-namespaces",
        "--liveness-port=8080",
        "--metrics-port=9090",
    ]
    assert not any(a.startswith("--peering") for a in c["args"])


def test_operator_pod_meets_restricted_pod_security(helm: Helm) -> None:
    workloads = find(helm.render(), "Deployment")
    workloads += find(helm.render({"replicas": 2}), "StatefulSet")
    assert len(workloads) == 2
    for workload in workloads:
        assert_restricted(workload)
        spec = workload["spec"]["template"]["spec"]
        for c in spec["containers"]:  # beyond the profile: what the chart promises too
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_probes_hit_kopf_liveness_endpoint_on_the_port_the_operator_listens_on(
    helm: Helm,
) -> None:
    c = operator_container(helm.render(sets=["ports.health=8181", "ports.metrics=9191"]))
    assert "--liveness-port=8181" in c["args"] and "--metrics-port=9191" in c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8181, "metrics": 9191}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_metrics_service_selects_the_operator_pod_only(helm: Helm) -> None:
    docs = helm.render()
    svc = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    # Model and router pods carry app.kubernetes.io/name=onnxship too: not these components.
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "operator"


def test_the_operator_reads_the_settings_the_chart_passes(helm: Helm) -> None:
    values = {
        "store": {
            "uri": "s3://artifacts/team-a/",
            "endpoint": "http://minio.storage:9000",
            "region": "eu-west-1",
            "credentialsSecret": "s3-creds",
        },
        "runtimeImage": {"repository": "registry.local/onnxship/runtime", "tag": "1.2.3"},
        "workloads": {
            "serviceAccountName": "models",
            "jobDeadlineSeconds": 900,
            "routerReplicas": 2,
        },
        "resyncSeconds": 2.5,
        "logging": {"format": "text", "level": "DEBUG"},
    }
    env = env_of(operator_container(helm.render(values)))
    settings = OperatorSettings.from_env(env)
    assert settings.store.uri == "s3://artifacts/team-a/"
    assert settings.store.endpoint == "http://minio.storage:9000"
    assert settings.store.region == "eu-west-1"
    assert settings.store.credentials_secret == "s3-creds"
    assert settings.workloads.runtime_image == "registry.local/onnxship/runtime:1.2.3"
    assert settings.workloads.service_account == "models"
    assert settings.workloads.job_active_deadline_seconds == 900
    assert settings.workloads.router_replicas == 2
    assert settings.timing.resync_seconds == 2.5
    assert env["ONNXSHIP_LOG_FORMAT"] == "text" and env["ONNXSHIP_LOG_LEVEL"] == "DEBUG"


def test_every_onnxship_variable_the_chart_sets_is_read_by_the_operator(helm: Helm) -> None:
    docs = helm.render(
        {
            "replicas": 2,
            "store": {
                "uri": "s3://bucket/",
                "endpoint": "http://s3:9000",
                "region": "r",
                "credentialsSecret": "s",
            },
            "workloads": {"serviceAccountName": "sa"},
        }
    )
    set_by_chart = {e["name"] for e in operator_container(docs)["env"]}
    source = "\n".join(p.read_text() for p in (ROOT / "operator" / "onnxship").rglob("*.py"))
    read_by_code = set(re.findall(r'"(ONNXSHIP_[A-Z0-9_]+)"', source))
    assert {n for n in set_by_chart if n.startswith("ONNXSHIP_")} <= read_by_code


def test_default_runtime_image_is_the_operators_default(helm: Helm) -> None:
    env = env_of(operator_container(helm.render()))
    assert env["ONNXSHIP_RUNTIME_IMAGE"] == Workloads().runtime_image


def test_image_digest_wins_over_the_tag(helm: Helm) -> None:
    digest = "sha256:" + "b" * 64
    c = operator_container(
        helm.render(
            {"image": {"tag": "9.9.9", "digest": digest}, "runtimeImage": {"digest": digest}}
        )
    )
    assert c["image"] == f"ghcr.io/onnxship/operator@{digest}"
    assert env_of(c)["ONNXSHIP_RUNTIME_IMAGE"] == f"ghcr.io/onnxship/runtime@{digest}"


# ------------------------------------------------------------------ RBAC from controller/rbac.py


def test_cluster_wide_install_gets_a_cluster_role_with_the_operators_rules(helm: Helm) -> None:
    docs = helm.render()
    role = one(docs, "ClusterRole")
    assert role["rules"] == RULES + CLUSTER_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")


def test_namespaced_install_gets_a_role_per_watched_namespace_and_no_cluster_role(
    helm: Helm,
) -> None:
    docs = helm.render({"watchNamespaces": ["team-a", "team-b"]})
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for r in roles:
        assert r["rules"] == RULES
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == NAMESPACE
    c = operator_container(docs)
    assert c["args"][:3] == ["operator", "--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in c["args"]


def test_rbac_can_be_left_to_the_cluster_admin(helm: Helm) -> None:
    docs = helm.render(
        sets=[
            "rbac.create=false",
            "serviceAccount.create=false",
            "serviceAccount.name=onnxship-operator",
        ]
    )
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "ServiceAccount"} & {
        d["kind"] for d in docs
    }
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "onnxship-operator"


# ------------------------------------------------------------------ replicas and peering


def test_more_replicas_elect_one_operator_through_kopf_peering(helm: Helm) -> None:
    docs = helm.render({"replicas": 3})
    assert not find(docs, "Deployment")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    c = operator_container(docs)
    assert "--peering=onnxship" in c["args"]
    # Distinct priorities: kopf pauses every peer when two share one.
    priority = next(e for e in c["env"] if e["name"] == "ONNXSHIP_PRIORITY")
    assert priority["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    peering = one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "onnxship"
    assert not find(docs, "KopfPeering")


def test_namespaced_peering_objects_live_in_the_watched_namespaces(helm: Helm) -> None:
    docs = helm.render({"replicas": 2, "watchNamespaces": ["ml", "ops"]})
    peerings = find(docs, "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("ml", "onnxship"),
        ("ops", "onnxship"),
    ]
    assert not find(docs, "ClusterKopfPeering")


def test_peering_crds_ship_with_the_chart(helm: Helm) -> None:
    out = helm.template(extra=["--include-crds"]).stdout
    crds = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all(out)
        if d and d["kind"] == "CustomResourceDefinition"
    }
    assert crds == {
        "modeldeployments.onnxship.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }


def test_single_replica_with_peering_enabled_keeps_a_deployment(helm: Helm) -> None:
    docs = helm.render(sets=["peering.enabled=true", "peering.name=blue"])
    assert one(docs, "Deployment")
    assert "--peering=blue" in operator_container(docs)["args"]
    assert one(docs, "ClusterKopfPeering", "blue")


# ------------------------------------------------------------------ wrong values


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["logging.format=yaml"], ["logging", "format", "json"]),
        (["replicas=0"], ["replicas", "minimum"]),
        (["replica=2"], ["replica"]),
        (["store.uri=http://bucket/prefix"], ["store", "uri"]),
        (["store.endpoint=minio:9000"], ["store", "endpoint"]),
        (["watchNamespaces={Team_A}"], ["watchNamespaces"]),
        (["image.digest=latest"], ["image", "digest"]),
        (["image.pullPolicy=Sometimes"], ["image", "pullPolicy"]),
        (["ports.health=9090"], ["ports.health and ports.metrics must differ"]),
        (["serviceAccount.create=false"], ["serviceAccount.name"]),
        (["monitoring.prometheusRule.errorRateThreshold=5"], ["errorRateThreshold"]),
    ],
)
def test_a_wrong_value_fails_with_a_message_that_names_it(
    helm: Helm, sets: list[str], expected: list[str]
) -> None:
    proc = helm.template(sets=sets, check=False)
    assert proc.returncode != 0, f"{sets} rendered:\n{proc.stdout[:500]}"
    for word in expected:
        assert word in proc.stderr, proc.stderr


# ------------------------------------------------------------------ optional objects


def test_monitoring_objects_appear_when_enabled(helm: Helm) -> None:
    docs = helm.render(
        {
            "monitoring": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                "podMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
            }
        }
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert one(docs, "PrometheusRule")
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["onnxship.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())


def test_pod_monitor_follows_the_watched_namespaces(helm: Helm) -> None:
    docs = helm.render({"watchNamespaces": ["ml"], "monitoring": {"podMonitor": {"enabled": True}}})
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


def test_the_pod_monitor_selects_the_pods_the_operator_creates(helm: Helm) -> None:
    from onnxship.plan import workloads as w

    pm = one(helm.render({"monitoring": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    owner = w.Owner(name="encoder", namespace="ml", uid="u")
    selector = pm["spec"]["selector"]
    for component in ("model", "router"):
        labels = w.labels(owner, component, "encoder-abc", "cpu")
        assert selector["matchLabels"].items() <= labels.items()
        expr = selector["matchExpressions"][0]
        assert labels[expr["key"]] in expr["values"]
    for label in pm["spec"]["podTargetLabels"]:
        assert label in w.labels(owner, "model", "encoder-abc", "cpu")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_notes_tell_the_user_what_to_apply_next(helm: Helm, tmp_path: Path) -> None:
    # `helm install --dry-run` wants a cluster and `helm template` skips NOTES.txt: render it
    # with `tpl` from a copy of the chart that exposes it as an object.
    chart = tmp_path / "onnxship"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'kind: Notes\ntext: {{ tpl (.Files.Get "notes-under-test.txt") . | toJson }}\n'
    )

    def notes(*sets: str) -> str:
        out = helm.run(
            "template",
            "onnxship",
            str(chart),
            "--namespace",
            NAMESPACE,
            "--show-only",
            "templates/zz-notes.yaml",
            *[a for s in sets for a in ("--set", s)],
        ).stdout
        return str(yaml.safe_load(out)["text"])

    bare = notes()
    assert "watches every namespace" in bare
    assert "kubectl -n default apply -f examples/minimal.yaml" in bare
    assert "--set store.uri=s3://" in bare
    with_store = notes(
        "store.uri=s3://models/x/",
        "store.credentialsSecret=s3-creds",
        "watchNamespaces={ml}",
        "replicas=2",
    )
    assert "kubectl -n ml create secret generic s3-creds" in with_store
    assert "kubectl -n ml apply -f examples/minimal.yaml" in with_store
    assert "2 replicas electing one active operator" in with_store
    assert "--set store.uri" not in with_store


def test_rendered_files_do_not_depend_on_this_checkout(tmp_path: Path, helm: Helm) -> None:
    """`helm package` keeps every file the templates read (the .helmignore drops none)."""
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("onnxship-*.tgz")
    docs = [
        d
        for d in yaml.safe_load_all(
            helm.run("template", "onnxship", str(archive), "--namespace", NAMESPACE).stdout
        )
        if d
    ]
    assert one(docs, "ClusterRole")["rules"] == RULES + CLUSTER_RULES


def test_a_cluster_older_than_1_28_is_refused(helm: Helm) -> None:
    """StatefulSet pods get the pod-index label (their kopf priority) from 1.28 on."""
    old = helm.template(extra=["--kube-version", "1.27.9"], check=False)
    assert old.returncode != 0
    assert "kubeVersion: >=1.28.0-0" in old.stderr
    assert helm.template(extra=["--kube-version", "1.28.0"]).returncode == 0
