"""What the API server admits: every example, none of the broken specs (each refused with a
message naming the field), and the status subresource's rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.api.test_broken_specs import CASES, _broken

from e2e.harness.api import Api
from onnxship.api import parse_model_deployment

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(
    p
    for p in (REPO / "examples").rglob("*.yaml")
    if (yaml.safe_load(p.read_text()) or {}).get("kind") == "ModelDeployment"
)
MDS = "/apis/onnxship.io/v1alpha1/namespaces/{ns}/modeldeployments"
# What `kubectl apply` sends: unknown fields are errors, not silently dropped.
STRICT = {"fieldValidation": "Strict"}


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_example_is_accepted(admin: Api, namespace: str, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    resp = admin.request("POST", MDS.format(ns=namespace), doc, query=STRICT)
    assert resp.ok, f"{path.name}: {resp.status} {resp.message}"
    assert resp.warnings == [], resp.warnings
    # What the server stored (its defaults applied) is what the operator will parse.
    stored = resp.body
    assert stored["metadata"]["generation"] == 1
    parse_model_deployment(stored, source=f"{path.name} as stored")


@pytest.mark.parametrize(
    ("edit", "field", "gate"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_spec_is_refused_naming_the_field(
    admin: Api, namespace: str, edit: Any, field: str, gate: str
) -> None:
    doc = _broken(edit)
    resp = admin.request("POST", MDS.format(ns=namespace), doc, query={**STRICT, "dryRun": "All"})
    assert not resp.ok, f"the API server accepted it ({gate} should refuse {field})"
    if resp.status == 400:  # strict decoding (an unknown field): no causes, one message
        assert f'unknown field "{field}"' in resp.message, resp.message
        return
    assert resp.status == 422, (resp.status, resp.message)
    # What kubectl prints as "<field>: Invalid value: ..." for each cause.
    causes = [(c.get("field", ""), c.get("message", "")) for c in resp.body["details"]["causes"]]
    assert any(f == field or f.startswith((f"{field}.", f"{field}[")) for f, _ in causes), (
        f"no cause names {field}: {causes}"
    )


def test_broken_specs_refused_by_cel_say_the_rule(admin: Api, namespace: str) -> None:
    """Each CEL case is refused by its rule's own message (not only by a schema error)."""
    crd = yaml.safe_load((REPO / "crds" / "modeldeployments.onnxship.io.yaml").read_text())
    rules: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(r["message"] for r in node.get("x-kubernetes-validations", ()))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(crd)
    hit: set[str] = set()
    for name, edit, _, gate in CASES:
        if gate != "cel":
            continue
        resp = admin.request(
            "POST", MDS.format(ns=namespace), _broken(edit), query={**STRICT, "dryRun": "All"}
        )
        said = {r for r in rules if r in resp.message}
        assert said, f"{name}: no CEL rule message in {resp.message!r}"
        hit |= said
    assert set(rules) == hit, f"CEL rules no case reaches on a real server: {set(rules) - hit}"


def test_status_is_a_subresource(admin: Api, namespace: str) -> None:
    """Status written with the object is ignored; /status writes leave generation alone."""
    path = MDS.format(ns=namespace)
    doc = copy.deepcopy(yaml.safe_load((REPO / "examples" / "minimal.yaml").read_text()))
    doc["status"] = {"phase": "Ready"}
    created = admin.create(path, doc)
    assert "phase" not in (created.get("status") or {}), "status taken from a main-resource write"
    name = created["metadata"]["name"]

    after = admin.merge_patch(f"{path}/{name}/status", {"status": {"phase": "Compressing"}})
    assert after["status"]["phase"] == "Compressing"
    assert after["metadata"]["generation"] == 1

    after = admin.merge_patch(f"{path}/{name}", {"spec": {"serving": {"replicas": 3}}})
    assert after["metadata"]["generation"] == 2
    assert after["status"]["phase"] == "Compressing"

    # Spec sent to /status is ignored too.
    after = admin.merge_patch(f"{path}/{name}/status", {"spec": {"serving": {"replicas": 9}}})
    assert after["spec"]["serving"]["replicas"] == 3


def test_status_the_schema_refuses(admin: Api, namespace: str) -> None:
    """The status schema is enforced on /status writes (the operator's writes included)."""
    path = MDS.format(ns=namespace)
    created = admin.create(path, yaml.safe_load((REPO / "examples" / "minimal.yaml").read_text()))
    name = created["metadata"]["name"]
    resp = admin.request(
        "PATCH",
        f"{path}/{name}/status",
        {"status": {"canaryWeight": "ten"}},
        content_type="application/merge-patch+json",
    )
    assert resp.status == 422, (resp.status, resp.message)
    assert "status.canaryWeight" in resp.message
