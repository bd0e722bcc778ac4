"""etcd, kube-apiserver and kube-controller-manager on 127.0.0.1, as child processes.

Binaries come from ``e2e/build.sh`` (``.cache/e2e/bin``). Each run gets a fresh data folder
under ``.cache/e2e/runs/`` with the certificates, kubeconfigs and every component's log, left
there for reading after a failure (only the newest few runs are kept).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .api import Api, wait_for
from .pki import Pki, make_pki

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("E2E_BIN", REPO / ".cache" / "e2e" / "bin"))
RUNS = REPO / ".cache" / "e2e" / "runs"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_TOKEN = "e2e-admin-token"
KEEP_RUNS = 5


def missing_binaries() -> list[str]:
    return [c for c in COMPONENTS if not os.access(BIN / c, os.X_OK)]


def binary_version(name: str) -> str:
    stamp = BIN / f".{name}.version"
    return stamp.read_text().strip() if stamp.exists() else "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {"server": server, "certificate-authority": str(ca_file)},
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
                "current-context": "e2e",
            }
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.popen.returncode}; its log ends:\n{self.tail()}"
            )


def start(name: str, argv: list[str], folder: Path, env: dict[str, str] | None = None) -> Process:
    log = folder / f"{name}.log"
    out = log.open("ab")
    popen = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    out.close()
    return Process(name, popen, log)


@dataclass
class ControlPlane:
    folder: Path
    pki: Pki
    server: str = ""
    processes: list[Process] = field(default_factory=list)
    admin_kubeconfig: Path = Path()
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def admin(self) -> Api:
        return Api(self.server, str(self.pki.ca_cert), ADMIN_TOKEN)

    def api_for(self, token: str) -> Api:
        return Api(self.server, str(self.pki.ca_cert), token)

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def stop(self) -> None:
        # Controllers first, storage last.
        for p in reversed(self.processes):
            p.stop()

    def check_alive(self) -> None:
        for p in self.processes:
            p.check_alive()

    def logs(self, lines: int = 30) -> str:
        return "\n\n".join(f"--- {p.name} ({p.log})\n{p.tail(lines)}" for p in self.processes)


def _in_use(folder: Path) -> bool:
    """A run whose harness process still lives (other sessions share .cache/e2e/runs)."""
    try:
        pid = int((folder / "harness.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _new_run_folder() -> Path:
    RUNS.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in RUNS.iterdir() if p.is_dir() and not _in_use(p))
    for stale in old[: max(0, len(old) - (KEEP_RUNS - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    folder = RUNS / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while folder.exists():
        suffix += 1
        folder = RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    folder.mkdir()
    (folder / "harness.pid").write_text(str(os.getpid()))
    return folder


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# The fake node's heartbeats are not a kubelet's: with the node lifecycle controller on, the
# node went Unknown ~50 s after it was made (KWOK's node stages too) and the controller
# marked every Pod on it NotReady, which stalled rollouts at random in the tests.
CONTROLLERS = "*,-node-lifecycle-controller"


def start_control_plane(
    controllers: str = CONTROLLERS,
    apiserver_args: Sequence[str] = (),
    controller_manager_args: Sequence[str] = (),
) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager; return once all three work.

    ``apiserver_args``, ``controller_manager_args``: more flags (the scale bench's audit log,
    its controller-manager without client-side rate limits)."""
    folder = _new_run_folder()
    pki = make_pki(folder / "pki")
    cp = ControlPlane(folder=folder, pki=pki)
    try:
        _start(cp, controllers, apiserver_args, controller_manager_args)
    except BaseException:
        cp.stop()
        raise
    return cp


def _start(
    cp: ControlPlane,
    controllers: str,
    apiserver_args: Sequence[str] = (),
    controller_manager_args: Sequence[str] = (),
) -> None:
    folder, pki = cp.folder, cp.pki
    t0 = time.monotonic()
    client, peer = free_port(), free_port()
    etcd = start(
        "etcd",
        [
            str(BIN / "etcd"),
            "--name=e2e",
            f"--data-dir={folder / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        folder,
    )
    cp.processes.append(etcd)

    def etcd_up() -> bool:
        etcd.check_alive()
        return _http_ok(f"http://127.0.0.1:{client}/health")

    wait_for(etcd_up, timeout=60, what="etcd /health")
    cp.startup_seconds["etcd"] = time.monotonic() - t0

    tokens = folder / "tokens.csv"
    tokens.write_text(f'{ADMIN_TOKEN},e2e-admin,e2e-admin,"system:masters"\n')
    port = free_port()
    cp.server = f"https://127.0.0.1:{port}"
    apiserver = start(
        "kube-apiserver",
        [
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={folder / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--api-audiences={ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *apiserver_args,
        ],
        folder,
    )
    cp.processes.append(apiserver)
    admin = cp.admin

    def apiserver_ready() -> bool:
        apiserver.check_alive()
        try:
            return admin.request("GET", "/readyz", timeout=3).status == 200
        except Exception:  # connection refused while it starts
            return False

    wait_for(apiserver_ready, timeout=120, what="kube-apiserver /readyz", every=0.5)
    cp.startup_seconds["kube-apiserver"] = time.monotonic() - t0
    cp.admin_kubeconfig = write_kubeconfig(
        folder / "admin.kubeconfig", cp.server, pki.ca_cert, ADMIN_TOKEN, "e2e-admin"
    )

    kcm = start(
        "kube-controller-manager",
        [
            str(BIN / "kube-controller-manager"),
            f"--kubeconfig={cp.admin_kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers={controllers}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            "--concurrent-gc-syncs=5",
            "--v=1",
            *controller_manager_args,
        ],
        folder,
    )
    cp.processes.append(kcm)

    # The ServiceAccount controller making `default` in a new namespace says KCM works.
    probe = "e2e-kcm-probe"
    admin.create("/api/v1/namespaces", {"metadata": {"name": probe}})

    def kcm_works() -> bool:
        kcm.check_alive()
        return admin.get(f"/api/v1/namespaces/{probe}/serviceaccounts/default") is not None

    wait_for(kcm_works, timeout=120, what="kube-controller-manager (default ServiceAccount)")
    admin.delete(f"/api/v1/namespaces/{probe}")
    cp.startup_seconds["kube-controller-manager"] = time.monotonic() - t0


KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")


def kwok_available() -> bool:
    """KWOK plays the node unless E2E_NODES=harness (or kwok is not built)."""
    return os.environ.get("E2E_NODES", "kwok") == "kwok" and os.access(BIN / "kwok", os.X_OK)


def start_kwok(cp: ControlPlane, node_annotation: str) -> Process:
    """KWOK for the nodes annotated ``<node_annotation>=fake``, with the e2e stages."""
    kwok = start(
        "kwok",
        [
            str(BIN / "kwok"),
            f"--kubeconfig={cp.admin_kubeconfig}",
            f"--config={KWOK_STAGES}",
            f"--manage-nodes-with-annotation-selector={node_annotation}=fake",
            "--cidr=10.244.0.0/16",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--node-port={free_port()}",
            f"--server-address=127.0.0.1:{free_port()}",
        ],
        cp.folder,
        env={**os.environ, "HOME": str(cp.folder)},
    )
    cp.processes.append(kwok)
    return kwok
