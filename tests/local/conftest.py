"""Fixtures for local mode: the demo models, short-step specs, and `onnxship up` as a process."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from onnxship.api import ModelDeploymentStatus
from onnxship.cli.main import app
from onnxship.local.processes import free_port, onnxship_command
from onnxship.local.state import DeploymentState

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("demo_build_model", DEMO / "build_model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1, v2, v3 and samples.npz, built by the demo's own builder."""
    return _builder().build(tmp_path_factory.mktemp("demo-models"))  # type: ignore[no-any-return]


FAST_ROLLOUT = {
    "steps": [
        {"mirror": {"percent": 50, "duration": "2s"}},
        {"setWeight": 50},
        {"pause": {"duration": "1s"}},
    ],
    "analysis": {
        "interval": "1s",
        "maxErrorRate": 0.05,
        "minOutputAgreement": {"metric": "cosine", "min": 0.95},
        "failureLimit": 0,
        "minRequests": 5,
    },
    "progressDeadline": "60s",
}


def write_spec(folder: Path, models: dict[str, Path], version: str, **overrides: Any) -> Path:
    """A ModelDeployment for the demo model ``version`` with short steps, in ``folder``."""
    doc: dict[str, Any] = {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "encoder"},
        "spec": {
            "model": {
                "uri": models[version].as_uri(),
                "version": version,
                "sampleInputs": models["samples"].as_uri(),
            },
            "compression": {"quantize": {"mode": "dynamic"}},
            "serving": {"batching": {"maxBatchSize": 8, "maxDelayMs": 1}},
            "rollout": FAST_ROLLOUT,
        },
    }
    doc["spec"].update(overrides)
    path = folder / f"{version}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Up:
    """`onnxship up` as a user runs it, in a folder of its own, on a free port."""

    def __init__(self, cwd: Path, log: Path) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.state = DeploymentState(cwd / ".onnxship", "encoder")
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, env: dict[str, str] | None = None, ui: str = "plain") -> Up:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *onnxship_command(),
                    "up",
                    *args,
                    "--port",
                    str(self.port),
                    "--ui",
                    ui,
                    "--serve-threads",
                    "1",
                ],
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ONNXSHIP_LOG_FORMAT": "text", "COLUMNS": "200", **(env or {})},
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, *args: str) -> Result:
        """An `onnxship` command from "another terminal" in the same folder (in-process: fast)."""
        return CliRunner().invoke(app, [*args, "--state-dir", str(self.state.root)])

    def wait_for(
        self,
        what: str,
        check: Callable[[ModelDeploymentStatus], bool],
        timeout: float = 60,
        resume_when_inconclusive: bool = False,
    ) -> ModelDeploymentStatus:
        """Poll the status file until ``check`` holds.

        ``resume_when_inconclusive``: a machine busy with other work can starve a mirror step
        of requests, and the canary then waits for a person; resume it, as a person would.
        """
        deadline = time.monotonic() + timeout
        resumed = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"up exited ({self.proc.returncode}) waiting for {what}:\n{self.output()}"
                )
            status = self.state.read_status()
            if status is not None and check(status):
                return status
            if (
                resume_when_inconclusive
                and status is not None
                and status.paused
                and not status.aborted
                and status.step_started_at != resumed
            ):
                resumed = status.step_started_at
                self.cli("resume")
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}: {self.state.read_status()}\n{self.output()}")

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C, as a terminal sends it; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator[Callable[[], Up]]:
    """Makes `Up` runners sharing one working folder (so one state folder); kills leftovers."""
    made: list[Up] = []
    work = tmp_path / "work"
    work.mkdir()

    def make() -> Up:
        up = Up(work, tmp_path / f"up-{len(made)}.log")
        made.append(up)
        return up

    yield make
    for up in made:
        pids = (up.state.read_runtime() or {}).get("pids", [])
        up.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def version_of(status: ModelDeploymentStatus, revision: str) -> str:
    return next((r.model_version for r in status.revisions if r.name == revision), "")
