"""The Argo CD examples point at what exists and carry values the chart accepts."""

from __future__ import annotations

import json

import jsonschema
import yaml

from onnxship.api import ModelDeployment

from .conftest import CHART, ROOT

ARGOCD = ROOT / "examples" / "argocd"


def test_application_installs_the_chart_with_values_it_accepts() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    source = app["spec"]["source"]
    assert (ROOT / source["path"] / "Chart.yaml").exists()
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(source["helm"]["valuesObject"], schema)


def test_the_values_schema_rejects_what_helm_would() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors(yaml.safe_load((CHART / "values.yaml").read_text())))
    errors = list(validator.iter_errors({"logging": {"format": "xml"}, "replica": 2}))
    assert len(errors) == 2


def test_applicationset_sends_valid_model_deployments() -> None:
    appset = yaml.safe_load((ARGOCD / "applicationset.yaml").read_text())
    folder = ROOT / appset["spec"]["template"]["spec"]["source"]["path"]
    files = sorted(folder.glob("*.yaml"))
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            md = ModelDeployment.model_validate(doc)
            # Shared by every cluster: the same store, so the second cluster gets cache hits.
            assert md.spec.artifacts.uri.startswith("s3://")
            # Pinned: the operator finds the artifact before it would start a Job.
            assert md.spec.model.sha256
