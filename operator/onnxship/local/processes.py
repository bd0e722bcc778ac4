"""Child processes of `onnxship up`: `onnxship serve` per revision and `onnxship route`.

Children run in their own session, so a Ctrl-C in the terminal reaches `up` alone and `up`
stops them in order (the router first, so no request reaches a stopped server). On Linux each
child also asks the kernel for SIGTERM should `up` die without cleaning up (PDEATHSIG), so
no server outlives it even after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def onnxship_command() -> list[str]:
    """How to run the `onnxship` CLI of this very installation (same interpreter, same venv)."""
    script = Path(sys.executable).with_name("onnxship")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from onnxship.cli.main import main; main()"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """Status and body of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() if exc.fp else b""
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


@dataclass
class Child:
    """One child process with its log file and the URL that says it is ready."""

    role: str
    args: list[str]
    log_path: Path
    ready_url: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    ever_ready: bool = False  # ready at least once since it started

    def start(self, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
        log.flush()
        # JSON lines: cheap to write on every request error (rich tracebacks cost seconds).
        child_env = {**os.environ, "ONNXSHIP_LOG_FORMAT": "json", **(env or {})}
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        self.started_at = time.monotonic()
        self.ready = self.ever_ready = False

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def probe(self, timeout: float = 0.5) -> bool:
        """Ask the ready URL; remembers the answer in ``ready``."""
        if not self.alive():
            self.ready = False
        elif self.ready_url:
            self.ready = http_get(self.ready_url, timeout)[0] == 200
        else:
            self.ready = True
        self.ever_ready = self.ever_ready or self.ready
        return self.ready

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe():
                return True
            if not self.alive():
                return False
            time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: signal.Signals) -> None:
        if self.alive() and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(5)


def stop_all(children: list[Child], grace: float = 5.0) -> None:
    """Stop children concurrently: SIGTERM to all, wait, SIGKILL whoever is left."""
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if child.popen is None:
            continue
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5)
