"""`onnxship compress` as users and the operator's Job run it: report, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from onnxship.cli.app import ExitCode
from onnxship.cli.main import app
from onnxship.store import open_store
from tests.compress.conftest import ModelOnDisk

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--log-format", "json", "compress", *args])


def test_flags_report_and_cache_hit_in_json(mlp: ModelOnDisk, tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    args = [
        str(mlp.path),
        "--store",
        store,
        "--samples",
        str(mlp.samples),
        "--per-tensor",
        "-o",
        "json",
    ]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["ok"] and not doc["cacheHit"]
    manifest = doc["manifest"]
    assert manifest["compression"]["quantize"]["perChannel"] is False
    assert manifest["report"]["accuracy"]["passed"] is True
    assert doc["artifactUri"] == f"{store}/manifests/{doc['cacheKey']}.json"
    again = json.loads(invoke(*args).stdout)
    assert again["cacheHit"] and again["cacheKey"] == doc["cacheKey"]


def test_text_report_names_sizes_ratio_accuracy_and_cache(mlp: ModelOnDisk, tmp_path: Path) -> None:
    result = invoke(
        str(mlp.path), "--store", str(tmp_path / "store"), "--samples", str(mlp.samples)
    )
    assert result.exit_code == 0, result.output
    for word in ("ratio", "cosine mean", "cache hit", "latency", "onnxruntime"):
        assert word in result.stdout


def spec_file(tmp_path: Path, model: ModelOnDisk, store: str) -> Path:
    doc = {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "encoder"},
        "spec": {
            "model": {"uri": model.uri, "version": "v1", "sampleInputs": model.samples.as_uri()},
            "compression": {"quantize": {"mode": "dynamic", "perChannel": True}},
            "artifacts": {"uri": store},
            "serving": {
                "environments": [
                    {"name": "cpu", "executionProvider": "CPU"},
                    {
                        "name": "edge",
                        "executionProvider": "CPU",
                        "compression": {"quantize": {"mode": "fp16"}},
                    },
                ]
            },
        },
    }
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_settings_from_a_model_deployment_and_its_environment(
    encoder: ModelOnDisk, tmp_path: Path
) -> None:
    store = (tmp_path / "store").as_uri()
    path = spec_file(tmp_path, encoder, store)
    cpu = json.loads(invoke("--spec", str(path), "-o", "json").stdout)
    edge = json.loads(invoke("--spec", str(path), "--environment", "edge", "-o", "json").stdout)
    assert cpu["manifest"]["compression"]["quantize"]["mode"] == "dynamic"
    assert edge["manifest"]["compression"]["quantize"]["mode"] == "fp16"
    assert cpu["manifest"]["source"]["version"] == "v1"
    assert {m.cache_key for m in open_store(store).list_manifests()} == {
        cpu["cacheKey"],
        edge["cacheKey"],
    }

    unknown = invoke("--spec", str(path), "--environment", "tpu")
    assert unknown.exit_code == ExitCode.invalid_spec
    assert "no environment 'tpu'" in unknown.stderr and "cpu, edge" in unknown.stderr


def test_exit_codes_tell_failures_apart(mlp: ModelOnDisk, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    cases = {
        ExitCode.invalid_model: [str(bad), "--store", store],
        ExitCode.source_error: [str(tmp_path / "absent.onnx"), "--store", store],
        ExitCode.accuracy_gate: [
            str(mlp.path),
            "--store",
            store,
            "--sparsity",
            "0.9",
            "--quantize",
            "none",
        ],
        ExitCode.store_error: [
            str(mlp.path),
            "--store",
            "s3://bucket/x",
            "--endpoint",
            "http://127.0.0.1:9",
        ],
    }
    for code, args in cases.items():
        result = invoke(*args, "-o", "json")
        assert result.exit_code == code, (code, result.output)
        doc = json.loads(result.stdout)
        assert doc["ok"] is False and doc["exitCode"] == code and doc["error"]
    assert open_store(Path(store).as_uri()).list_manifests() == []


def test_gate_failure_prints_the_measured_figure_and_the_threshold(
    mlp: ModelOnDisk, tmp_path: Path
) -> None:
    result = invoke(
        str(mlp.path),
        "--store",
        str(tmp_path / "s"),
        "--gate-min",
        "0.9999999",
        "--samples",
        str(mlp.samples),
        "--quantize",
        "dynamic",
    )
    assert result.exit_code == ExitCode.accuracy_gate
    assert "< 0.9999999" in result.stderr and "cosine 0.99" in result.stderr
    # a CLI run names the flag that sets the figure, not the spec's field
    assert "(--gate-min)" in result.stderr and "accuracyGate.min" not in result.stderr


def test_an_invalid_spec_file_is_exit_code_3(tmp_path: Path) -> None:
    path = tmp_path / "md.yaml"
    path.write_text(
        "apiVersion: onnxship.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\nspec: {}\n"
    )
    result = invoke("--spec", str(path))
    assert result.exit_code == ExitCode.invalid_spec
    assert "spec.model" in result.stderr


def test_result_file_for_the_operators_job(mlp: ModelOnDisk, tmp_path: Path) -> None:
    result = tmp_path / "termination-log"
    ok = invoke(
        str(mlp.path),
        "--store",
        str(tmp_path / "s"),
        "--prune-method",
        "shrink",
        "--sparsity",
        "0.2",
        "--gate-min",
        "0.5",
        "--progress",
        "none",
        "--result-file",
        str(result),
        "-o",
        "json",
    )
    assert ok.exit_code == 0, ok.output
    doc = json.loads(result.read_text())
    assert len(result.read_text()) <= 4000
    assert doc["cacheKey"] and doc["artifactUri"] and doc["cacheHit"] is False
    assert doc["report"]["ratio"] > 0 and "prune:shrink:0.2" in doc["report"]["steps"]

    failed = invoke(
        str(tmp_path / "gone.onnx"), "--store", str(tmp_path / "s"), "--result-file", str(result)
    )
    assert failed.exit_code == ExitCode.source_error
    assert json.loads(result.read_text())["exitCode"] == ExitCode.source_error
