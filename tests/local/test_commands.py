"""The local commands' answers when something is wrong: which file, which field, which code."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from onnxship.api import ModelDeploymentStatus, RevisionStatus
from onnxship.cli.app import ExitCode
from onnxship.cli.main import app
from onnxship.local.state import AppliedDocument, DeploymentState

from .conftest import write_spec


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def known(tmp_path: Path, state_dir: Path, demo_models: dict[str, Path]) -> DeploymentState:
    """A deployment `up` ran before (status on disk), with no `up` running now."""
    spec = write_spec(tmp_path, demo_models, "v1")
    state = DeploymentState(state_dir, "encoder")
    state.write_applied(
        AppliedDocument(yaml.safe_load(spec.read_text()), str(tmp_path), str(spec), 1)
    )
    state.write_status(
        ModelDeploymentStatus(
            phase="Ready",
            stable_revision="encoder-aaaaaaaaaa",
            revisions=[RevisionStatus(name="encoder-aaaaaaaaaa", model_version="v1")],
        )
    )
    return state


def test_up_names_the_field_of_an_invalid_spec(tmp_path: Path, state_dir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "onnxship.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "encoder"},
                "spec": {
                    "model": {"uri": "file://m.onnx"},
                    "rollout": {"steps": [{"setWeight": 50}, {"setWeight": 10}]},
                },
            }
        )
    )
    code, output = run("up", str(bad), "--state-dir", str(state_dir))
    assert code == ExitCode.invalid_spec
    assert "bad.yaml" in output and "spec.rollout.steps" in output


def test_up_names_a_missing_model_file(tmp_path: Path, state_dir: Path) -> None:
    spec = tmp_path / "v9.yaml"
    spec.write_text(
        "apiVersion: onnxship.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: encoder}\n"
        "spec:\n  model: {uri: 'file://models/v9/model.onnx'}\n"
    )
    code, output = run("up", str(spec), "--state-dir", str(state_dir))
    assert code == ExitCode.source_error
    assert "spec.model.uri" in output and str(tmp_path / "models" / "v9" / "model.onnx") in output


def test_up_refuses_a_busy_port(
    tmp_path: Path, state_dir: Path, demo_models: dict[str, Path]
) -> None:
    spec = write_spec(tmp_path, demo_models, "v1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = run("up", str(spec), "--port", str(port), "--state-dir", str(state_dir))
    assert code == ExitCode.conflict
    assert f"port {port}" in output and "--port" in output


def test_status_without_a_deployment(state_dir: Path) -> None:
    code, output = run("status", "--state-dir", str(state_dir))
    assert code == ExitCode.not_found
    assert "onnxship up FILE" in output


def test_status_of_a_stopped_deployment(known: DeploymentState) -> None:
    code, output = run("status", "--state-dir", str(known.root))
    assert code == 0
    assert "encoder-aaaaaaaaaa" in output and "not running" in output


def test_commands_need_a_running_up(known: DeploymentState, tmp_path: Path) -> None:
    code, output = run("rollback", "--state-dir", str(known.root))
    assert code == ExitCode.conflict  # nothing earlier than the stable revision
    code, output = run("promote", "--state-dir", str(known.root))
    assert code == ExitCode.conflict and "no canary" in output
    known.write_status(
        (known.read_status() or ModelDeploymentStatus()).model_copy(
            update={"canary_revision": "encoder-bbbbbbbbbb"}
        )
    )
    code, output = run("promote", "--state-dir", str(known.root))
    assert code == ExitCode.conflict and "no `onnxship up` is running" in output
    code, output = run("apply", known.read_applied().source, "--state-dir", str(known.root))  # type: ignore[union-attr]
    assert code == ExitCode.conflict and "onnxship up" in output


def test_rollback_to_an_unknown_revision(known: DeploymentState) -> None:
    code, output = run("rollback", "--to", "encoder-zzzzzzzzzz", "--state-dir", str(known.root))
    assert code == ExitCode.not_found
    assert "encoder-aaaaaaaaaa" in output  # the known ones are listed


def test_commands_are_taken_in_order(tmp_path: Path) -> None:
    state = DeploymentState(tmp_path, "encoder")
    state.submit("promote")
    state.submit("rollback", revision="encoder-aaaaaaaaaa")
    taken = state.take_commands()
    assert [c.kind for c in taken] == ["promote", "rollback"]
    assert taken[1].args == {"revision": "encoder-aaaaaaaaaa"}
    assert state.take_commands() == []
