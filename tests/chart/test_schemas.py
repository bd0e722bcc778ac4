"""Every rendered manifest against the Kubernetes API schemas, offline and strict."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import CHART, Helm

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (a test extra) holds the API schemas"
)

pytestmark = pytest.mark.timeout(1800)  # may build helm (minutes, cold)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
# Kinds of the Prometheus operator: no schema of theirs is available offline, so
# test_chart.py and test_monitoring.py check them by what they select and fire instead.
NO_SCHEMA_HERE = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in (CHART / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            for v in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
                out[key] = v["schema"]["openAPIV3Schema"]
    return out


def render_all(helm: Helm, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = helm.template(values, extra=["--include-crds"]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_manifests_match_the_kubernetes_schemas(
    helm: Helm, value_set: tuple[str, dict[str, Any]]
) -> None:
    name, values = value_set
    docs = render_all(helm, values)
    custom = crd_schemas()
    skipped = set()
    for doc in docs:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        key = (doc["apiVersion"], doc["kind"])
        if key in custom:
            jsonschema.validate(doc, custom[key])
            continue
        if doc["kind"] in NO_SCHEMA_HERE:
            skipped.add(doc["kind"])
            continue
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{what} is not a valid {version} object: {exc.message} at {list(exc.path)}"
                )


def test_the_validator_catches_a_misspelt_field(helm: Helm) -> None:
    """The strict check above would catch a typo in a template (no test that cannot fail)."""
    docs = render_all(helm, {})
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, VERSIONS[0], strict=True)
