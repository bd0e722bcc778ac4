"""`onnxship up` with a causal LM: a model folder goes through local mode like a file.

The slow test is the local story of issue 20 on the tiny decoder: v1 serves streamed chat
through the router, v2 (other weights: another model that still answers) is mirrored,
compared token by token and rolled back while the users keep getting v1's streams.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from onnxship.api import SpecError
from onnxship.local.loadgen import LoadGenerator, chat_url
from onnxship.local.spec import model_sha256, parse_local
from onnxship.local.state import DeploymentState
from tests.helpers.tiny_llm import build_tiny_llm

from .conftest import Up


def llm_spec(folder: Path, model: Path, version: str, prompts: Path) -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llm"},
        "spec": {
            "model": {"uri": model.as_uri(), "version": version, "sampleInputs": prompts.as_uri()},
            "compression": {"quantize": {"mode": "none"}, "accuracyGate": {"metric": "top1"}},
            "serving": {"generation": {"maxSequences": 4, "maxContext": 256}},
            "rollout": {
                "steps": [
                    {"mirror": {"percent": 100, "duration": "30s"}},
                    {"setWeight": 50},
                    {"pause": {}},
                ],
                "analysis": {
                    "interval": "2s",
                    "failureLimit": 0,
                    "minRequests": 5,
                    "maxTimeToFirstTokenP99Ms": 10000,
                    "minOutputAgreement": {"metric": "tokens", "min": 0.9},
                },
                "progressDeadline": "120s",
            },
        },
    }
    path = folder / f"{version}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_model_folder_is_a_local_model_named_by_its_folder_digest(
    tiny_llm: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "Once upon a time"}\n')
    doc = yaml.safe_load(llm_spec(tmp_path, tiny_llm, "v1", prompts).read_text())
    local = parse_local(doc, tmp_path, tmp_path / ".onnxship", "v1.yaml")
    assert local.model_path == tiny_llm
    # the digest `spec.model.sha256` pins a folder by: sha256sum's lines of every file
    lines = subprocess.run(
        "sha256sum $(ls | LC_ALL=C sort)", shell=True, cwd=tiny_llm, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    assert model_sha256(tiny_llm) == hashlib.sha256(lines.encode()).hexdigest()
    missing = {**doc, "spec": {**doc["spec"], "model": {"uri": (tmp_path / "gone").as_uri()}}}
    with pytest.raises(SpecError, match=r"spec\.model\.uri: .*gone does not exist"):
        parse_local(missing, tmp_path, tmp_path / ".onnxship", "v1.yaml")


@pytest.mark.slow
def test_up_rolls_back_an_llm_canary_on_token_agreement(up_factory: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    v1, v2 = build_tiny_llm(models / "v1", seed=0), build_tiny_llm(models / "v2", seed=7)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "Once upon a time"}\n')
    up: Up = up_factory()
    up.state = DeploymentState(up.cwd / ".onnxship", "llm")
    up.start(str(llm_spec(up.cwd, v1, "v1", prompts)))
    status = up.wait_for("v1 stable", lambda s: s.phase == "Ready", timeout=180)
    stable = status.stable_revision
    with LoadGenerator(chat_url(up.endpoint), rate=4, concurrency=2, chat_model="llm") as load:
        assert up.cli("apply", str(llm_spec(up.cwd, v2, "v2", prompts))).exit_code == 0
        status = up.wait_for("v2 rolled back", lambda s: s.aborted, timeout=240)
        before = load.stats.ok
        up.wait_for("users still answered", lambda s: load.stats.ok >= before + 4, timeout=60)
    assert status.stable_revision == stable and status.analysis is not None
    assert "output agreement (tokens)" in status.analysis.message
    assert status.analysis.output_agreement is not None and status.analysis.output_agreement < 0.9
    assert load.stats.ok > 0 and load.stats.error_rate == 0.0, load.stats.statuses
    assert load.stats.ttft_ms, "the users' answers were streamed"
    log = (up.state.logs_dir / f"{stable}-default.log").read_text()
    assert "--max-sequences 4 --max-context 256" in log  # serving.generation reached the server
    assert up.interrupt() == 0
