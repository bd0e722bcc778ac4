"""The operator as users run it: ``onnxship operator -n <namespace>`` in its own process,
logged in with a kubeconfig that holds its ServiceAccount's token."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .api import wait_for
from .control_plane import Process, free_port, start, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
ONNXSHIP = Path(sys.executable).with_name("onnxship")
# `<resource> ["<name>"] is forbidden: User ... cannot <verb> ...` inside a JSON log line.
_REFUSAL = re.compile(r'([\w./-]+ (?:\\?"[^"\\]*\\?" )?is forbidden: [^\'{]*?)(?:\', \{|", "|$)')


@dataclass
class Operator:
    process: Process
    liveness_port: int
    metrics_port: int

    def stop(self) -> None:
        self.process.stop(grace=15)

    def kill(self) -> None:
        self.process.popen.kill()
        self.process.popen.wait(10)

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")

    def refusals(self) -> set[str]:
        """Each distinct RBAC refusal in the log, as the API server worded it."""
        found = set()
        for line in self.forbidden():
            m = _REFUSAL.search(line)
            found.add(m.group(1).replace('\\"', '"') if m else line[:300])
        return found

    def forbidden(self) -> list[str]:
        """Log lines where the API server refused the operator (a missing RBAC rule)."""
        return [
            line
            for line in self.log().splitlines()
            if re.search(r"[Ff]orbidden|answered 403|status=403", line)
        ]


def start_operator(
    folder: Path,
    server: str,
    ca_file: Path,
    token: str,
    namespace: str,
    env: dict[str, str] | None = None,
    name: str = "operator",
) -> Operator:
    kubeconfig = write_kubeconfig(
        folder / f"{name}-{namespace}.kubeconfig", server, ca_file, token, "onnxship-operator"
    )
    live, metrics = free_port(), free_port()
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("ONNXSHIP_", "AWS_", "KUBE"))
    }
    environ.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "ONNXSHIP_RESYNC_SECONDS": "1",
            "ONNXSHIP_RUNTIME_IMAGE": "ghcr.io/onnxship/runtime:e2e",
            "PYTHONUNBUFFERED": "1",
            # E2E_OPERATOR_LOG_LEVEL=DEBUG shows every reconcile pass in the run folder's logs.
            "ONNXSHIP_LOG_LEVEL": os.environ.get("E2E_OPERATOR_LOG_LEVEL", "INFO"),
            **(env or {}),
        }
    )
    proc = start(
        f"{name}-{namespace}",
        [
            str(ONNXSHIP),
            "operator",
            "-n",
            namespace,
            "--liveness-port",
            str(live),
            "--metrics-port",
            str(metrics),
        ],
        folder,
        env=environ,
    )
    op = Operator(proc, live, metrics)

    def healthy() -> bool:
        proc.check_alive()
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_for(healthy, timeout=90, what=f"the operator's /healthz ({proc.log})", every=0.5)
    return op
