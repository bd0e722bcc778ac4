"""The committed CRD against a real kube-apiserver: accepted, structural, served as designed."""

from __future__ import annotations

from typing import Any

from e2e.harness.api import Api
from e2e.harness.install import CRD_NAME, CRD_PATH

MDS = "/apis/onnxship.io/v1alpha1/namespaces/{ns}/modeldeployments"


def test_crd_is_accepted_and_established(admin: Api, crd_install: Any) -> None:
    assert crd_install.ok, f"{crd_install.status}: {crd_install.message}"
    assert crd_install.warnings == [], crd_install.warnings
    crd = admin.get(f"{CRD_PATH}/{CRD_NAME}")
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    assert "NonStructuralSchema" not in conditions, conditions["NonStructuralSchema"]["message"]
    assert crd["status"]["acceptedNames"]["shortNames"] == ["mdep"]


def test_discovery_names_the_resource(admin: Api, crd: Any) -> None:
    resources = admin.must("GET", "/apis/onnxship.io/v1alpha1")["resources"]
    by_name = {r["name"]: r for r in resources}
    md = by_name["modeldeployments"]
    assert md["kind"] == "ModelDeployment" and md["namespaced"] is True
    assert md["shortNames"] == ["mdep"]
    assert "modeldeployments/status" in by_name, "the status subresource is served"


def test_printer_columns(admin: Api, namespace: str) -> None:
    """What `kubectl get mdep` shows: the API server renders the CRD's printer columns."""
    path = MDS.format(ns=namespace)
    admin.create(path, _md("cols"))
    admin.merge_patch(
        f"{path}/cols/status",
        {
            "status": {
                "phase": "Progressing",
                "stableRevision": "cols-aaaa",
                "canaryRevision": "cols-bbbb",
                "canaryWeight": 10,
                "variant": "int4-hqq-b32-emb8",
                "agreement": 0.97,
            }
        },
    )
    table = admin.request("GET", path, accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert table.ok, table.message
    body = table.body
    columns = [c["name"] for c in body["columnDefinitions"] if c.get("priority", 0) == 0]
    assert columns == [
        "Name", "Phase", "Stable", "Canary", "Weight", "Variant", "Agreement", "Age"
    ], columns
    wide = [c["name"] for c in body["columnDefinitions"] if c.get("priority", 0) > 0]
    assert wide == ["Live-Agreement", "TTFT-P99-ms", "Model"]
    [row] = body["rows"]
    assert row["cells"][:7] == [
        "cols", "Progressing", "cols-aaaa", "cols-bbbb", 10, "int4-hqq-b32-emb8", 0.97
    ]
    assert row["cells"][9] == "v1"


def _md(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://models/enc/v1/model.onnx", "version": "v1"}},
    }
