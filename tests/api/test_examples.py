"""Every file in examples/ is a valid ModelDeployment for pydantic and for the API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from onnxship.api import parse_model_deployment
from tests.helpers.k8s_schema import admission_errors

from .conftest import EXAMPLES, load


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in EXAMPLES:
        docs.append((path, load(path)))
    return docs


def test_there_are_examples_for_each_feature() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"minimal", "canary", "multi-environment"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted_everywhere(path: Path, committed_crd: dict[str, Any]) -> None:
    doc = load(path)
    md = parse_model_deployment(doc, source=str(path))
    assert md.metadata.name == doc["metadata"]["name"]
    assert admission_errors(committed_crd, doc) == []


def test_round_trip_keeps_the_users_spelling() -> None:
    """What we write back (status, `onnxship validate`) uses the camelCase the user wrote."""
    doc = load(next(p for p in EXAMPLES if p.stem == "canary"))
    md = parse_model_deployment(doc)
    wire = md.spec.to_wire()
    assert wire["rollout"]["analysis"]["maxLatencyP99Ms"] == 250
    assert wire["compression"]["quantize"]["weightType"] == "int8"
    assert parse_model_deployment({**doc, "spec": wire}).spec == md.spec


def test_environments_without_weights_are_accepted(committed_crd: dict[str, Any]) -> None:
    doc = load(next(p for p in EXAMPLES if p.stem == "multi-environment"))
    for env in doc["spec"]["serving"]["environments"]:
        del env["weight"]
    parse_model_deployment(doc)
    assert admission_errors(committed_crd, doc) == []
