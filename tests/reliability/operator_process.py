"""`onnxship operator` as a separate process against KMock, started, SIGKILLed and restarted.

The process is the operator image's entry point with a kubeconfig that points at the mock API
server; its stderr (the JSON log lines) goes to one file per start, so a test can read every
line an operator wrote, including those of a process it killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.controller.test_kubectl_plugin import kubeconfig

ONNXSHIP = str(Path(sys.executable).with_name("onnxship"))
RUNTIME_IMAGE = "registry.example/onnxship/runtime:test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    """Starts the operator process; ``kill()`` is a SIGKILL, ``start()`` again restarts it."""

    url: str
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    liveness_port: int = 0
    logs: list[Path] = field(default_factory=list)

    async def start(self) -> None:
        assert self.proc is None, "already running"
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig(self.folder, self.url),
            "ONNXSHIP_RUNTIME_IMAGE": RUNTIME_IMAGE,
            "ONNXSHIP_LOG_LEVEL": self.log_level,
            **self.env,
        }
        self.starts += 1
        self.liveness_port = _free_port()
        log = self.folder / f"operator-{self.starts}.log"
        self.logs.append(log)
        with log.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                ONNXSHIP, "--log-format", "json", "operator", "-A",
                "--metrics-port", "0", "--liveness-port", str(self.liveness_port),
                env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr, stderr=stderr,
            )  # fmt: skip

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until kopf answers /healthz: it has logged in and taken over SIGTERM (a SIGTERM
        before that ends the process by the signal, as it would any program starting up)."""
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"

        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        deadline = asyncio.get_running_loop().time() + timeout
        while not await asyncio.to_thread(probe):
            assert self.alive(), f"the operator exited: {self.tail()}"
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the operator did not start: {self.tail()}")
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL: no clean-up handler of the operator runs."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode
        self.proc = None

    async def stop(self) -> int:
        """SIGTERM, as the kubelet stops a pod; returns the exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            return await asyncio.wait_for(proc.wait(), timeout=20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"the operator ignored SIGTERM; log: {self.tail()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]
