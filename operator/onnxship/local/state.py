"""The local state folder: what `onnxship up` persists and other terminals read and write.

Layout under the state root (default ``.onnxship/`` in the current folder), beside the
file:// artifact store that shares the root (``blobs/``, ``manifests/``)::

    local/<name>/deployment.json   the applied ModelDeployment (document + its source folder)
    local/<name>/status.json       ModelDeploymentStatus, written after every change
    local/<name>/runtime.json      the running `up`: pid, endpoint, ports, live counters
    local/<name>/commands/*.json   promote / abort / rollback / apply, consumed by `up`
    local/<name>/logs/*.log        one log per child process

Every write is atomic (temporary file, then rename), so a reader never sees half a file and
`up` can be killed at any line and resume from what is on disk.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onnxship.api import ModelDeploymentStatus

DEFAULT_ROOT = Path(".onnxship")

CommandKind = Literal["promote", "abort", "rollback", "apply", "retry"]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Command:
    """A request from another terminal; ``up`` applies it on its next tick and deletes it."""

    kind: CommandKind
    args: dict[str, Any] = field(default_factory=dict)
    issued_at: float = 0.0


@dataclass(frozen=True)
class AppliedDocument:
    """A ModelDeployment document as applied, with the folder its relative file:// URIs use."""

    document: dict[str, Any]
    base_dir: str
    source: str
    generation: int


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); /proc tells us it is gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class DeploymentState:
    """The files of one local deployment."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.dir = root / "local" / name

    @property
    def deployment_path(self) -> Path:
        return self.dir / "deployment.json"

    @property
    def status_path(self) -> Path:
        return self.dir / "status.json"

    @property
    def runtime_path(self) -> Path:
        return self.dir / "runtime.json"

    @property
    def commands_dir(self) -> Path:
        return self.dir / "commands"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    def exists(self) -> bool:
        return self.deployment_path.exists()

    # ------------------------------------------------------------ deployment document

    def read_applied(self) -> AppliedDocument | None:
        raw = read_json(self.deployment_path)
        if raw is None:
            return None
        return AppliedDocument(
            raw["document"], raw["baseDir"], raw.get("source", ""), raw["generation"]
        )

    def write_applied(self, applied: AppliedDocument) -> None:
        raw = {
            "document": applied.document,
            "baseDir": applied.base_dir,
            "source": applied.source,
            "generation": applied.generation,
        }
        write_atomic(self.deployment_path, json.dumps(raw, indent=2))

    # ------------------------------------------------------------ status

    def read_status(self) -> ModelDeploymentStatus | None:
        raw = read_json(self.status_path)
        return None if raw is None else ModelDeploymentStatus.model_validate(raw)

    def write_status(self, status: ModelDeploymentStatus) -> None:
        write_atomic(self.status_path, json.dumps(status.to_wire(), indent=2))

    # ------------------------------------------------------------ runtime (the running `up`)

    def read_runtime(self) -> dict[str, Any] | None:
        raw = read_json(self.runtime_path)
        return raw if isinstance(raw, dict) else None

    def write_runtime(self, runtime: dict[str, Any]) -> None:
        write_atomic(self.runtime_path, json.dumps(runtime, indent=2))

    def running_pid(self) -> int | None:
        """The pid of the `up` that drives this deployment, if one is running."""
        runtime = self.read_runtime()
        if not runtime or not runtime.get("running"):
            return None
        pid = int(runtime.get("pid", 0))
        return pid if pid_alive(pid) else None

    # ------------------------------------------------------------ commands

    def submit(self, kind: CommandKind, **args: Any) -> Path:
        now = time.time()
        path = self.commands_dir / f"{time.time_ns()}-{kind}.json"
        write_atomic(path, json.dumps({"kind": kind, "args": args, "issuedAt": now}))
        return path

    def take_commands(self) -> list[Command]:
        """Pending commands, oldest first; each is removed as it is read."""
        if not self.commands_dir.is_dir():
            return []
        commands = []
        for path in sorted(self.commands_dir.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            finally:
                path.unlink(missing_ok=True)
            commands.append(Command(raw["kind"], raw.get("args", {}), raw.get("issuedAt", 0.0)))
        return commands


def deployments(root: Path) -> list[str]:
    """Names of the local deployments under ``root``."""
    base = root / "local"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "deployment.json").exists())
