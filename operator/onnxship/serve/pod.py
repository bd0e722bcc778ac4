"""What the worker processes of one pod share: a private folder the supervisor creates.

``metrics/`` is prometheus_client's multiprocess folder, ``ready/`` holds one file per worker
that has loaded and warmed up, ``failed/`` a worker's start-up error for the supervisor to
report once, ``shared/`` the prepared model every worker maps, ``config.json`` the workers'
settings. Files rather than shared memory: a probe reads them every few seconds at most, and
nothing needs cleaning up but the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import StartupError

# The response header that names the worker which answered (HTTP only; with workers > 1).
WORKER_HEADER = "onnxship-worker"
# The response header that names the revision which answered (``--revision``). The router
# (router/balance.py REVISION_HEADER) sets the same name on what it proxies, so an answer
# reads the same whether a Service sends it through the router or straight to the pod; named
# here again because serve and router may not import each other (.importlinter).
REVISION_HEADER = "onnxship-revision"


@dataclass(frozen=True)
class PodFolder:
    root: Path

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def ready_dir(self) -> Path:
        return self.root / "ready"

    @property
    def failed_dir(self) -> Path:
        return self.root / "failed"

    @property
    def shared_dir(self) -> Path:
        return self.root / "shared"

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    def create(self) -> None:
        for d in (self.metrics_dir, self.ready_dir, self.failed_dir):
            d.mkdir(parents=True, exist_ok=True)

    def ready_count(self) -> int:
        return len(os.listdir(self.ready_dir))

    def record_failure(self, who: str, exc: StartupError) -> None:
        path = self.failed_dir / f"{who}.json"
        path.write_text(json.dumps({"message": str(exc), "kind": exc.kind}))

    def failure(self, who: str) -> StartupError | None:
        try:
            doc = json.loads((self.failed_dir / f"{who}.json").read_text())
        except (OSError, ValueError):
            return None
        return StartupError(str(doc.get("message", "")), kind=str(doc.get("kind", "failure")))


class PodMember:
    """One worker's view of its pod."""

    def __init__(self, folder: PodFolder, index: int, workers: int) -> None:
        self.folder = folder
        self.index = index
        self.workers = workers
        self._all_ready = False

    @property
    def metrics_dir(self) -> Path:
        return self.folder.metrics_dir

    def mark_ready(self) -> None:
        (self.folder.ready_dir / str(self.index)).touch()

    def all_ready(self) -> bool:
        # Once every worker was ready the answer stays yes: a worker that dies ends the pod,
        # and a draining worker answers from its own state first.
        if not self._all_ready:
            self._all_ready = self.folder.ready_count() >= self.workers
        return self._all_ready
