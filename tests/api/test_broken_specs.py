"""Broken specs: pydantic and the API server (schema or CEL) both refuse them, naming the field.

Each case edits the valid canary example. ``field`` is the path the user must see in both
messages; ``gate`` says which API-server gate refuses it (``schema`` or ``cel``) so that a rule
dropped from the CRD fails its own case.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from onnxship.api import SpecError, parse_model_deployment
from tests.helpers.k8s_schema import (
    admission_errors,
    apply_defaults,
    cel_errors,
    schema_errors,
    unknown_fields,
)

from .conftest import ROOT, load

Doc = dict[str, Any]


def steps(*s: Doc) -> Callable[[Doc], None]:
    def edit(d: Doc) -> None:
        d["spec"]["rollout"]["steps"] = list(s)

    return edit


def setter(path: str, value: Any) -> Callable[[Doc], None]:
    def edit(d: Doc) -> None:
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        last = keys[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def two_envs(**extra: Any) -> Callable[[Doc], None]:
    def edit(d: Doc) -> None:
        d["spec"]["serving"]["environments"] = [
            {"name": "cpu", **extra.get("cpu", {})},
            {"name": "gpu", "executionProvider": "CUDA", **extra.get("gpu", {})},
        ]

    return edit


CASES: list[tuple[str, Callable[[Doc], None], str, str]] = [
    ("weight over 100", steps({"setWeight": 150}), "spec.rollout.steps[0].setWeight", "schema"),
    ("negative weight", steps({"setWeight": -1}), "spec.rollout.steps[0].setWeight", "schema"),
    (
        "weights decrease",
        steps({"setWeight": 50}, {"pause": {}}, {"setWeight": 10}),
        "spec.rollout.steps",
        "cel",
    ),
    (
        "step with two actions",
        steps({"setWeight": 10, "pause": {}}),
        "spec.rollout.steps[0]",
        "cel",
    ),
    ("empty step", steps({}), "spec.rollout.steps[0]", "cel"),
    (
        "duration in words",
        steps({"pause": {"duration": "2 minutes"}}),
        "spec.rollout.steps[0].pause.duration",
        "schema",
    ),
    (
        "mirror of 0 percent",
        steps({"mirror": {"percent": 0, "duration": "1m"}}),
        "spec.rollout.steps[0].mirror.percent",
        "schema",
    ),
    (
        "bad analysis interval",
        setter("spec.rollout.analysis.interval", "soon"),
        "spec.rollout.analysis.interval",
        "schema",
    ),
    (
        "error rate over 1",
        setter("spec.rollout.analysis.maxErrorRate", 2),
        "spec.rollout.analysis.maxErrorRate",
        "schema",
    ),
    (
        "ftp model uri",
        setter("spec.model.uri", "ftp://host/model.onnx"),
        "spec.model.uri",
        "schema",
    ),
    (
        "http artifact store",
        setter("spec.artifacts.uri", "http://bucket/"),
        "spec.artifacts.uri",
        "schema",
    ),
    ("short sha256", setter("spec.model.sha256", "abc123"), "spec.model.sha256", "schema"),
    (
        "int4 quantization",
        setter("spec.compression.quantize.mode", "int4"),
        "spec.compression.quantize.mode",
        "schema",
    ),
    (
        "sparsity of 1",
        setter("spec.compression.prune.sparsity", 1.0),
        "spec.compression.prune.sparsity",
        "schema",
    ),
    (
        "unknown optimize level",
        setter("spec.compression.optimize", "max"),
        "spec.compression.optimize",
        "schema",
    ),
    ("misspelt field", setter("spec.model.url", "s3://b/k"), "spec.model.url", "schema"),
    ("replicas negative", setter("spec.serving.replicas", -2), "spec.serving.replicas", "schema"),
    (
        "static without samples",
        lambda d: (
            setter("spec.compression.quantize.mode", "static")(d),
            setter("spec.model.sampleInputs", "")(d),
        ),
        "spec.model.sampleInputs",
        "cel",
    ),
    (
        "env name not DNS",
        lambda d: setter("spec.serving.environments", [{"name": "GPU_Pool"}])(d),
        "spec.serving.environments[0].name",
        "schema",
    ),
    (
        "unknown provider",
        lambda d: setter(
            "spec.serving.environments", [{"name": "tpu", "executionProvider": "TPU"}]
        )(d),
        "spec.serving.environments[0].executionProvider",
        "schema",
    ),
    (
        "duplicate env names",
        lambda d: setter("spec.serving.environments", [{"name": "cpu"}, {"name": "cpu"}])(d),
        "spec.serving.environments",
        "cel",
    ),
    (
        "env weights not 100",
        two_envs(cpu={"weight": 60}, gpu={"weight": 30}),
        "spec.serving.environments",
        "cel",
    ),
    ("env weight on one only", two_envs(cpu={"weight": 100}), "spec.serving.environments", "cel"),
    (
        "static int8 on GPU",
        two_envs(gpu={"compression": {"quantize": {"mode": "static"}}}),
        "spec.serving.environments[1].compression.quantize.mode",
        "cel",
    ),
    (
        "gatewayAPI without gateway",
        setter("spec.rollout.traffic", {"router": "gatewayAPI"}),
        "spec.rollout.traffic.gateway",
        "cel",
    ),
    (
        "prometheus without address",
        setter("spec.rollout.analysis.provider", "prometheus"),
        "spec.rollout.analysis.prometheus",
        "cel",
    ),
    ("uppercase name", setter("metadata.name", "Encoder_V2"), "metadata.name", "cel"),
    ("name too long", setter("metadata.name", "a" * 31), "metadata.name", "cel"),
]


def _broken(edit: Callable[[Doc], None]) -> Doc:
    doc = copy.deepcopy(load(ROOT / "examples" / "canary.yaml"))
    edit(doc)
    return doc


@pytest.mark.parametrize(
    ("edit", "field"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_pydantic_names_the_field(edit: Callable[[Doc], None], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_model_deployment(_broken(edit), source="broken.yaml")
    assert any(p.startswith(field) for p in info.value.problems), info.value.problems
    assert "broken.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "field", "gate"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_api_server_refuses_naming_the_field(
    committed_crd: Doc, edit: Callable[[Doc], None], field: str, gate: str
) -> None:
    doc = _broken(edit)
    schema = committed_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    if gate == "schema":
        errors = unknown_fields(schema, doc) + schema_errors(schema, doc)
    else:
        assert not schema_errors(schema, doc), "a CEL case must pass the schema to reach CEL"
        errors = admission_errors(committed_crd, doc)
        assert errors == cel_errors(schema, apply_defaults(schema, doc))
    assert any(e.startswith(field) or field in e for e in errors), errors


def test_every_cel_rule_has_a_case(committed_crd: Doc) -> None:
    """A CEL rule nobody breaks in a test is a rule nobody knows works."""
    rules: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(r["message"] for r in node.get("x-kubernetes-validations", ()))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(committed_crd)
    hit: set[str] = set()
    for _, edit, _, gate in CASES:
        if gate == "cel":
            for e in admission_errors(committed_crd, _broken(edit)):
                hit.update(m for m in rules if m in e)
    assert set(rules) == hit, f"CEL rules without a failing example: {set(rules) - hit}"
