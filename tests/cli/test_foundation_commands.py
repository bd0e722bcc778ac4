"""The CLI as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from onnxship.api.crd import crd_yaml

ROOT = Path(__file__).resolve().parents[2]
ONNXSHIP = str(Path(sys.executable).with_name("onnxship"))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ONNXSHIP, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("crd", "validate", "version"):
        assert command in result.stdout


def test_crd_prints_the_committed_crd() -> None:
    result = run("crd")
    assert result.returncode == 0
    assert (
        result.stdout
        == crd_yaml()
        == (ROOT / "crds" / "modeldeployments.onnxship.io.yaml").read_text()
    )
    assert yaml.safe_load(result.stdout)["kind"] == "CustomResourceDefinition"


def test_validate_accepts_the_examples() -> None:
    result = run("validate", *sorted(str(p) for p in (ROOT / "examples").glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert "reranker (environments: cpu, gpu)" in result.stderr


def test_validate_names_file_and_field_and_exits_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: onnxship.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\n"
        "spec:\n  model: {uri: s3://b/m.onnx}\n"
        "  rollout:\n    steps: [{setWeight: 50}, {setWeight: 20}]\n"
    )
    result = run("validate", str(bad))
    assert result.returncode == 3
    assert str(bad) in result.stderr
    assert "spec.rollout.steps" in result.stderr and "never decrease" in result.stderr


def test_validate_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    missing = run("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 3 and "nope.yaml: cannot read" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = run("validate", str(broken))
    assert result.returncode == 3 and "not valid YAML" in result.stderr
