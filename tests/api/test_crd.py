"""The CRD is generated from the models, structural, committed, and not drifting."""

from __future__ import annotations

from typing import Any

import yaml

from onnxship.api.crd import crd, crd_yaml

from .conftest import COMMITTED_CRD


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED_CRD.read_text() == crd_yaml(), (
        "crds/modeldeployments.onnxship.io.yaml is stale: run `make crd` and commit it"
    )


def _nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        out.append((path, schema))
        for name, sub in schema.get("properties", {}).items():
            out += _nodes(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                out += _nodes(schema[key], f"{path}[{key}]")
    return out


def test_schema_is_structural() -> None:
    """The API server refuses non-structural schemas: every node typed, no refs, no nulls."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "title:" not in text and "type: null" not in text
    for path, node in _nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, f"{path} has no type"
        assert "anyOf" not in node, f"{path} uses anyOf"
        assert node.get("additionalProperties") is not False, path
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path


def test_resource_names_and_columns() -> None:
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["mdep"]
    assert spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Stable", "Canary", "Weight", "Variant", "Agreement", "Age"]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert wide == ["Live-Agreement", "TTFT-P99-ms", "Model"]  # kubectl get -o wide


def test_omitted_sections_get_defaults_from_the_api_server() -> None:
    """`kubectl get -o yaml` shows the compression the operator will use, not an empty spec."""
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    compression = spec["properties"]["compression"]
    assert compression["default"] == {}
    assert compression["properties"]["quantize"]["properties"]["mode"]["default"] == "auto"
    assert spec["properties"]["revisionHistoryLimit"]["default"] == 3
    # optional sections stay absent, so `has()` in CEL means "the user set it"
    assert (
        "default"
        not in spec["properties"]["rollout"]["properties"]["traffic"]["properties"]["gateway"]
    )


def test_cel_rules_hold_on_the_schemas_own_defaults() -> None:
    """The API server refuses a CRD whose defaults break its own rules ("no such key")."""
    from tests.helpers.k8s_schema import cel_errors

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    checked = 0
    for path, node in _nodes(schema):
        if "default" in node and node.get("x-kubernetes-validations"):
            checked += 1
            assert cel_errors(node, node["default"]) == [], f"{path}: default breaks a rule"
    assert checked >= 4  # rollout, traffic, analysis and serving carry rules and defaults
