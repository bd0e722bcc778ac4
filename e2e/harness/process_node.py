"""A node whose kubelet runs each Pod's container as a local process (issue 10's full path).

``ProcessKubelet`` extends the harness's ``FakeKubelet`` (one Node, Pods bound by the harness,
the same polling loop) but, for each Pod it runs, does what a kubelet and a container runtime
would, on 127.0.0.1 instead of in a network namespace:

- an address of its own: the process listens on 127.<a>.<b>.<c> (all of 127/8 is loopback
  on Linux), checked free on every container port before it is handed out; the API server
  refuses loopback addresses in EndpointSlices, so the Pod's ``podIP`` is reported as
  198.18.<b>.<c> (RFC 2544's benchmarking range: never a real host), and the harness plays
  the Pod network: ``pod_env/sitecustomize.py`` maps 198.18.x.y to 127.<a>.x.y in the
  processes given ``pod_network_env()`` (every Pod; the operator, whose analysis scrapes
  router Pod IPs), and tests use ``local_address()``;
- ``command + args`` (the runtime image's entry point is ``onnxship``: the venv's) with
  ``$(VAR)`` references expanded, in a clean environment made of the image's ``ENV``, the
  Pod's ``env``/``envFrom`` (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``) and
  what the harness adds (PYTHONPATH to ``pod_env/`` for cluster DNS, see
  ``pod_env/sitecustomize.py``);
- volumes: ``emptyDir``, ``configMap`` and ``secret`` become folders under the run folder;
  every argument or env value that starts with a ``mountPath`` (or the
  ``terminationMessagePath``) is rewritten to the host path; configMap and secret folders are
  refreshed every ``E2E_VOLUME_SYNC`` seconds (3) when the object changed, atomically, the
  way the kubelet's atomic writer does (``..data`` symlink swap), so a reader never sees
  half a file and, as in a cluster, a route table reaches the router a while after it was
  written; ``--host 0.0.0.0`` (an
  address inside the Pod's own network namespace) becomes the Pod's address;
- status: phase, podIP, hostIP, conditions, containerStatuses (started, ready, restartCount,
  state, lastState); readiness from the ``startupProbe`` and ``readinessProbe`` (``httpGet``
  against the Pod's address, named ports resolved); when the process ends, its exit code and
  termination message (the file at ``terminationMessagePath``, or with
  ``FallbackToLogsOnError`` the log's tail on failure); ``restartPolicy: Always`` restarts it
  with a doubling back-off and counts restarts;
- a Pod being deleted gets SIGTERM, its grace period, SIGKILL (to its process group), then the
  deletion is confirmed (DELETE with ``gracePeriodSeconds: 0``), as the kubelet does.

Each Pod's output goes to ``<run>/pods/<namespace>_<pod>.log``. The Services' endpoints for
the DNS stand-in are written to ``<run>/pods/services.json`` from the real EndpointSlices.

What it does not play: liveness probes, init and sidecar containers (one container a Pod),
resource limits, ``readOnlyRootFilesystem``, projected volumes (ServiceAccount tokens) and
the Pod's own loopback (127.0.0.1 in a Pod is the host's here). Probe periods are capped
at ``E2E_PROBE_PERIOD`` seconds (default 1) and the restart back-off starts at 1 s, so tests
do not wait 5 s for each readiness check or 10 s for each restart.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .api import ApiError
from .kubelet import FakeKubelet

PROCESS_NODE = "e2e-process-node"
POD_NETWORK = "198.18."  # Pod IPs the API server sees; the processes listen on 127.<a>.x.y
VENV_BIN = Path(sys.executable).parent
POD_ENV = Path(__file__).with_name("pod_env")
PROBE_PERIOD_CAP = float(os.environ.get("E2E_PROBE_PERIOD", "1"))
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
# How often mounted ConfigMaps and Secrets follow their objects. A kubelet takes up to its
# sync period plus its cache's TTL (about a minute); a few seconds keep the lag visible.
# Where a Service with no ready endpoint resolves (pod_env/sitecustomize.py's NO_ENDPOINT: a
# loopback address nothing listens on, as kube-proxy's reject rule answers).
NO_ENDPOINT = "127.255.255.254"
VOLUME_SYNC_SECONDS = float(os.environ.get("E2E_VOLUME_SYNC", "3"))
# The kubelet's limits on a termination message (pkg/kubelet/kuberuntime).
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048
# What the runtime image sets (runtime-image/Dockerfile ENV); HOME is the Pod's own folder.
IMAGE_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "ONNXSHIP_LOG_FORMAT": "json",
    "LANG": "C.UTF-8",
}
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes, the rest
    is left as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


class ConfigError(Exception):
    """The container cannot be created yet (a missing Secret or ConfigMap key): the kubelet's
    CreateContainerConfigError; it tries again."""


def atomic_write_dir(target: Path, files: dict[str, bytes]) -> bool:
    """Write ``files`` into ``target`` the way the kubelet's AtomicWriter does: a fresh
    timestamped folder, the ``..data`` symlink swapped to it by a rename, and one symlink per
    file through ``..data``. Returns whether anything changed."""
    target.mkdir(parents=True, exist_ok=True)
    data = target / "..data"
    if data.is_symlink():
        current = target / os.readlink(data)
        old = {
            str(p.relative_to(current)): p.read_bytes() for p in current.rglob("*") if p.is_file()
        }
        if old == files:
            return False
    stamp = target / f"..{datetime.now(UTC).strftime('%Y_%m_%d_%H_%M_%S.%f')}"
    for rel, content in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    tmp = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(stamp.name)
    previous = os.readlink(data) if data.is_symlink() else None
    os.replace(tmp, data)
    for rel in {r.split("/", 1)[0] for r in files}:
        link = target / rel
        if not link.is_symlink():
            link.symlink_to(Path("..data") / rel)
    for stale in target.iterdir():
        if stale.is_symlink() and not stale.name.startswith("..") and not stale.exists():
            stale.unlink()  # a key that was removed
    if previous:
        shutil.rmtree(target / previous, ignore_errors=True)
    return True


def _ports_free(ip: str, ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    return False
                raise
    return True


# ---------------------------------------------------------------------- one Pod


@dataclass
class PodWorker:
    """What a kubelet's pod worker and the container runtime do for one Pod."""

    node: ProcessKubelet
    pod: dict[str, Any]
    ip: str  # the podIP the API server knows
    local: str  # the loopback address the process listens on
    folder: Path
    log: Path
    restarts: int = 0
    popen: subprocess.Popen[bytes] | None = None
    delete_grace: float | None = None  # set when the Pod is being deleted
    gone: bool = False  # the Pod vanished from the API: kill at once
    thread: threading.Thread | None = None
    last_status: dict[str, Any] | None = None
    last_error: str = ""
    _log_offset: int = 0
    _wake: threading.Event = field(default_factory=threading.Event)

    @property
    def ns(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.name}"

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.pod["spec"]["containers"][0])

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"pod {self.ns}/{self.name}")
        self.thread.daemon = True
        self.thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        ts = pod["metadata"].get("deletionTimestamp")
        if ts and self.delete_grace is None:
            self.delete_grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
            self._wake.set()

    def _sleep(self, seconds: float) -> None:
        """Wait, woken early when the Pod is being deleted."""
        self._wake.wait(seconds)
        self._wake.clear()

    def vanish(self) -> None:
        self.gone = True
        self.delete_grace = 0.0
        self._wake.set()

    @property
    def deleting(self) -> bool:
        return self.delete_grace is not None

    # ------------------------------------------------------------ lifecycle

    def _run(self) -> None:
        try:
            self._lifecycle()
        except Exception as exc:  # the test sees it in the node's errors
            self.node.errors.append(f"{self.ns}/{self.name}: {exc!r}")
            self._kill_group()
        finally:
            self._confirm_deletion()

    def _lifecycle(self) -> None:
        spec = self.pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        backoff = BACKOFF_START
        last_terminated: dict[str, Any] | None = None
        while not self.deleting:
            try:
                argv, env, cwd = self._prepare()
            except ConfigError as exc:
                self._report(self._waiting("CreateContainerConfigError", str(exc), last_terminated))
                self._sleep(1.0)
                continue
            started_at = _now()
            self._launch(argv, env, cwd)
            code = self._supervise(started_at, last_terminated)
            terminated = self._terminated_state(code, started_at)
            if self.deleting:
                return
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                phase = "Succeeded" if code == 0 else "Failed"
                self._report(self._status(phase, terminated, ready=False, started=False))
                while not self.deleting:
                    self._sleep(1.0)
                return
            self.restarts += 1
            last_terminated = terminated
            self._report(
                self._waiting(
                    "CrashLoopBackOff",
                    f"back-off {backoff:.0f}s restarting failed container",
                    last_terminated,
                )
            )
            self._sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    def _launch(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            where = f"{self.local} (podIP {self.ip})"
            line = f"=== {_now()} start #{self.restarts} on {where}: {' '.join(argv)}\n"
            out.write(line.encode())
            out.flush()
            self._log_offset = out.tell()
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: SIGKILL reaches its children
            )

    def _supervise(self, started_at: str, last_terminated: dict[str, Any] | None) -> int:
        """Probe until the process ends or the Pod is deleted; returns the exit code."""
        assert self.popen is not None
        c = self.container
        startup, readiness = c.get("startupProbe"), c.get("readinessProbe")
        started = startup is None
        ready = readiness is None and started
        fails = {"startup": 0, "readiness": 0}
        next_probe = time.monotonic()
        while True:
            running = {"running": {"startedAt": started_at}}
            self._report(self._status("Running", running, ready, started, last_terminated))
            code = self.popen.poll()
            if code is not None:
                return code
            if self.deleting:
                return self._stop()
            if time.monotonic() >= next_probe:
                if not started:
                    assert startup is not None
                    if self._probe(startup):
                        started, fails["startup"] = True, 0
                        ready = readiness is None
                    else:
                        fails["startup"] += 1
                        if fails["startup"] >= int(startup.get("failureThreshold", 3)):
                            self._kill_group()  # the kubelet kills and restarts it
                    probe = startup
                elif readiness is not None:
                    ok = self._probe(readiness)
                    fails["readiness"] = 0 if ok else fails["readiness"] + 1
                    if ok:
                        ready = True
                    elif fails["readiness"] >= int(readiness.get("failureThreshold", 3)):
                        ready = False
                    probe = readiness
                else:
                    probe = {}
                period = min(float(probe.get("periodSeconds", 10)), PROBE_PERIOD_CAP)
                next_probe = time.monotonic() + period
            self._sleep(0.1)

    def _stop(self) -> int:
        """SIGTERM, the grace period, SIGKILL: what the runtime does to a deleted Pod."""
        assert self.popen is not None
        grace = 0.0 if self.gone else float(self.delete_grace or 0)
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(max(grace, 0.1))
        except subprocess.TimeoutExpired:
            self._kill_group()
            return self.popen.wait(10)
        finally:
            self._kill_group()  # children left behind die with the container

    def _kill_group(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def _confirm_deletion(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self._kill_group()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        if self.deleting and not self.gone:
            self.node.api.request("DELETE", self.path, {"gracePeriodSeconds": 0})
        self.node.forget(self)

    # ------------------------------------------------------------ probes

    def _probe(self, probe: dict[str, Any]) -> bool:
        get = probe.get("httpGet")
        if get is None:
            return True  # exec and tcpSocket probes: not played, taken as passing
        port = self._port(get.get("port"))
        host = get.get("host") or self.local
        url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as r:
                return 200 <= r.status < 400
        except urllib.error.HTTPError as exc:
            return 200 <= exc.code < 400
        except (OSError, ValueError):
            return False

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.container.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    # ------------------------------------------------------------ the container's world

    def _prepare(self) -> tuple[list[str], dict[str, str], Path]:
        c, spec = self.container, self.pod["spec"]
        mounts = self._volumes(spec, c)
        message = self.folder / "termination-log"
        message.write_bytes(b"")
        mounts[c.get("terminationMessagePath", "/dev/termination-log")] = message
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.folder / "home"),
            "HOSTNAME": self.name,
            **IMAGE_ENV,
        }
        (self.folder / "home").mkdir(exist_ok=True)
        for name, value in self._pod_env(c).items():
            env[name] = value
        for name in list(env):
            env[name] = self._rewrite(env[name], mounts)
        if "/tmp" in mounts and "TMPDIR" not in env:
            env["TMPDIR"] = str(mounts["/tmp"])  # an emptyDir at /tmp is the Pod's /tmp
        theirs = env.get("PYTHONPATH", "")
        env.update(self.node.pod_network_env())
        if theirs:
            env["PYTHONPATH"] += os.pathsep + theirs
        command = [expand(a, env) for a in c.get("command") or ["onnxship"]]
        args = [expand(a, env) for a in c.get("args") or []]
        if command and "/" not in command[0]:
            found = shutil.which(command[0], path=env["PATH"])
            if found is None:
                raise ConfigError(f"executable {command[0]!r} not found")
            command[0] = found
        argv = [self._rewrite(self._address(a), mounts) for a in [*command, *args]]
        cwd = mounts.get(c.get("workingDir") or "", self.folder / "home")
        return argv, env, Path(cwd)

    def _address(self, arg: str) -> str:
        for wildcard in ("0.0.0.0", "::", "[::]"):
            if arg == wildcard:
                return self.local
            if arg.endswith("=" + wildcard):
                return arg[: -len(wildcard)] + self.local
        return arg

    @staticmethod
    def _rewrite(value: str, mounts: dict[str, Path]) -> str:
        """``/mount/path/rest`` (or ``--flag=/mount/path/rest``) -> the host path."""

        def one(v: str) -> str | None:
            for mount in sorted(mounts, key=len, reverse=True):
                m = mount.rstrip("/")
                if m and (v == m or v.startswith(m + "/")):
                    return str(mounts[mount]) + v[len(m) :]
            return None

        whole = one(value)
        if whole is not None:
            return whole
        if value.startswith("-") and "=" in value:
            flag, _, rest = value.partition("=")
            part = one(rest)
            if part is not None:
                return f"{flag}={part}"
        return value

    def _volumes(self, spec: dict[str, Any], c: dict[str, Any]) -> dict[str, Path]:
        """Each mountPath and the host folder (or file) that plays it."""
        folders: dict[str, Path] = {}
        for vol in spec.get("volumes", []):
            where = self.folder / "volumes" / vol["name"]
            if "emptyDir" in vol:
                where.mkdir(parents=True, exist_ok=True)
            elif "configMap" in vol or "secret" in vol:
                self._project(vol, where)
            else:
                raise ConfigError(f"volume {vol['name']}: only emptyDir, configMap and secret")
            folders[vol["name"]] = where
        mounts: dict[str, Path] = {}
        for m in c.get("volumeMounts", []):
            host = folders[m["name"]]
            mounts[m["mountPath"]] = host / m["subPath"] if m.get("subPath") else host
        return mounts

    def _project(self, vol: dict[str, Any], where: Path) -> bool:
        """Write a configMap / secret volume's files; True when they changed."""
        if "configMap" in vol:
            src = vol["configMap"]
            obj = self.node.lookup(self.ns, "configmaps", src["name"])
            data = {k: v.encode() for k, v in ((obj or {}).get("data") or {}).items()}
            data.update(
                {k: base64.b64decode(v) for k, v in ((obj or {}).get("binaryData") or {}).items()}
            )
        else:
            src = vol["secret"]
            obj = self.node.lookup(self.ns, "secrets", src.get("secretName", ""))
            data = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
        if obj is None and not src.get("optional"):
            raise ConfigError(f"volume {vol['name']}: {src} not found")
        files = (
            {i["path"]: data[i["key"]] for i in src["items"] if i["key"] in data}
            if src.get("items")
            else data
        )
        return atomic_write_dir(where, files)

    def refresh_volumes(self) -> None:
        """ConfigMap and Secret volumes follow their objects (the kubelet's periodic sync)."""
        for vol in self.pod["spec"].get("volumes", []):
            if "configMap" in vol or "secret" in vol:
                with contextlib.suppress(ConfigError):
                    self._project(vol, self.folder / "volumes" / vol["name"])

    def _pod_env(self, c: dict[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for source in c.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, ref in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                if ref in source:
                    obj = self.node.lookup(self.ns, kind, source[ref]["name"])
                    if obj is None:
                        if source[ref].get("optional"):
                            continue
                        raise ConfigError(f"{kind} {source[ref]['name']!r} not found")
                    for k, v in (obj.get("data") or {}).items():
                        out[prefix + k] = base64.b64decode(v).decode() if kind == "secrets" else v
        for item in c.get("env", []):
            if "value" in item or "valueFrom" not in item:
                out[item["name"]] = expand(item.get("value", ""), out)
                continue
            value = self._value_from(item["valueFrom"])
            if value is not None:
                out[item["name"]] = value
        return out

    def _value_from(self, source: dict[str, Any]) -> str | None:
        for kind, ref in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
            if ref in source:
                sel = source[ref]
                obj = self.node.lookup(self.ns, kind, sel["name"])
                raw = ((obj or {}).get("data") or {}).get(sel["key"])
                if raw is None:
                    if sel.get("optional"):
                        return None
                    what = "not found" if obj is None else f"has no key {sel['key']!r}"
                    raise ConfigError(f"{kind[:-1]} {sel['name']!r} {what}")
                return base64.b64decode(raw).decode() if kind == "secrets" else str(raw)
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        raise ConfigError(f"env valueFrom {sorted(source)} is not played by the process node")

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        return {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": self.node.node,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": self.ip,
            "status.podIPs": self.ip,
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }.get(path, "")

    # ------------------------------------------------------------ status

    def _terminated_state(self, code: int, started_at: str) -> dict[str, Any]:
        c = self.container
        message = (self.folder / "termination-log").read_bytes()[:MAX_MESSAGE_BYTES]
        fallback = c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not message.strip() and code != 0 and fallback:
            message = self._log_tail()
        reason = "Completed" if code == 0 else "Error"
        if code < 0:  # killed by a signal: what a runtime reports as 128 + signal
            code, reason = 128 - code, "Error"
        return {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "message": message.decode(errors="replace"),
                "startedAt": started_at,
                "finishedAt": _now(),
            }
        }

    def _log_tail(self) -> bytes:
        try:
            with self.log.open("rb") as fh:
                fh.seek(self._log_offset)
                lines = fh.read().splitlines()[-FALLBACK_LOG_LINES:]
        except OSError:
            return b""
        return b"\n".join(lines)[-FALLBACK_LOG_BYTES:]

    def _waiting(self, reason: str, message: str, last: dict[str, Any] | None) -> dict[str, Any]:
        phase = "Pending" if last is None and not self.restarts else "Running"
        return self._status(
            phase, {"waiting": {"reason": reason, "message": message}}, False, False, last
        )

    def _status(
        self,
        phase: str,
        state: dict[str, Any],
        ready: bool,
        started: bool,
        last: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        c = self.container
        flag = "True" if ready else "False"
        done = phase in ("Succeeded", "Failed")
        extra = {"reason": "PodCompleted"} if done else {}
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag, **extra},
                {"type": "Ready", "status": flag, **extra},
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "containerID": f"e2e-process://{self.popen.pid if self.popen else 0}",
                    "ready": ready,
                    "started": started,
                    "restartCount": self.restarts,
                    "state": state,
                    **({"lastState": last} if last else {}),
                }
            ],
        }
        return status

    def _report(self, status: dict[str, Any]) -> None:
        """Patch the Pod's status when it changed (times are set on a change only)."""
        if status == self.last_status:
            return
        now = _now()
        body = json.loads(json.dumps(status))
        old = {c["type"]: c for c in (self.last_status or {}).get("conditions", []) if "type" in c}
        for cond in body["conditions"]:
            prev = old.get(cond["type"])
            same = prev is not None and prev["status"] == cond["status"]
            cond["lastTransitionTime"] = prev.get("lastTransitionTime", now) if same else now
        body["startTime"] = (self.pod.get("status") or {}).get("startTime") or now
        try:
            self.node.api.must(
                "PATCH",
                f"{self.path}/status",
                {"status": body},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            if exc.response.status == 404:
                self.vanish()
                return
            raise
        status["conditions"] = body["conditions"]
        self.last_status = status


# ---------------------------------------------------------------------- the node


@dataclass
class ProcessKubelet(FakeKubelet):
    """The process node. ``selector`` (``key=value``): the Pods it runs; others stay Pending
    (the chart's operator Deployment: the tests run the operator as a process themselves)."""

    node: str = PROCESS_NODE
    folder: Path = Path()
    selector: str = "app.kubernetes.io/managed-by=onnxship"
    workers: dict[str, PodWorker] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    services_file: Path = Path()
    _services: dict[str, dict[str, dict[str, list[list[Any]]]]] = field(default_factory=dict)
    _services_text: str = "{}"
    _volumes_due: dict[str, float] = field(default_factory=dict)
    _net: int = field(default_factory=lambda: random.randint(16, 250))
    _next_ip: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.folder = self.folder / "pods"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.services_file = self.folder / "services.json"
        self.services_file.write_text("{}")

    def stop(self) -> None:
        super().stop()
        for worker in list(self.workers.values()):
            worker.vanish()
        for worker in list(self.workers.values()):
            if worker.thread is not None:
                worker.thread.join(15)

    def forget(self, worker: PodWorker) -> None:
        with self._lock:
            if self.workers.get(worker.pod["metadata"]["uid"]) is worker:
                del self.workers[worker.pod["metadata"]["uid"]]

    def lookup(self, ns: str, kind: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap as of the last poll (the first use reads it directly)."""
        cached = self.objects.get((ns, kind))
        if cached is None:
            cached = self._list(ns, kind)
        return cached.get(name)

    def _list(self, ns: str, kind: str) -> dict[str, dict[str, Any]]:
        items = self.api.items(f"/api/v1/namespaces/{ns}/{kind}")
        found = {o["metadata"]["name"]: o for o in items}
        self.objects[(ns, kind)] = found
        return found

    def _wanted(self, pod: dict[str, Any]) -> bool:
        key, _, value = self.selector.partition("=")
        return not key or (pod["metadata"].get("labels") or {}).get(key) == value

    def _allocate_ip(self, ports: list[int]) -> tuple[str, str]:
        """(podIP, loopback address) for a new Pod."""
        while True:
            self._next_ip += 1
            n = self._next_ip
            host = f"{n // 250 % 250}.{n % 250 + 2}"
            if _ports_free(f"127.{self._net}.{host}", ports):
                return f"{POD_NETWORK}{host}", f"127.{self._net}.{host}"

    def local_address(self, pod_ip: str) -> str:
        """Where a Pod IP of this node is reached from the host."""
        if pod_ip.startswith(POD_NETWORK):
            return f"127.{self._net}." + pod_ip[len(POD_NETWORK) :]
        return pod_ip

    def service_address(self, ns: str, name: str, port: int = 80) -> tuple[str, int]:
        """Where a new connection to Service ``name``'s ``port`` goes, as kube-proxy picks it:
        one ready endpoint at random (from the EndpointSlices, as of the last sync), the port
        translated; an address that refuses connections when there is none."""
        entry = self._services.get(ns, {}).get(f"{name}.{ns}", {})
        endpoints = entry.get(str(port)) or []
        if not endpoints:
            return NO_ENDPOINT, port
        ip, target = random.choice(endpoints)
        return self.local_address(ip), int(target)

    def has_endpoint(self, ns: str, name: str, port: int = 80) -> bool:
        """Whether connections to Service ``name``'s ``port`` reach a ready Pod yet."""
        return self.service_address(ns, name, port)[0] != NO_ENDPOINT

    def pod_network_env(self) -> dict[str, str]:
        """Environment for a process that must reach Pods and Services by their cluster
        addresses and names (``pod_env/sitecustomize.py``)."""
        return {
            "PYTHONPATH": str(POD_ENV),
            "E2E_SERVICES_FILE": str(self.services_file),
            "E2E_POD_NETWORK": f"{POD_NETWORK}=127.{self._net}.",
        }

    # ------------------------------------------------------------ the loop

    def _sync_namespace(self, ns: str, pods: list[dict[str, Any]]) -> None:
        live = {p["metadata"]["uid"] for p in pods}
        for uid, worker in list(self.workers.items()):
            if worker.ns == ns and uid not in live:
                worker.vanish()  # deleted behind the kubelet's back (grace 0, force)
        if not any(self._wanted(p) for p in pods) and not any(
            w.ns == ns for w in self.workers.values()
        ):
            return
        for kind in ("configmaps", "secrets"):
            self._list(ns, kind)
        if time.monotonic() >= self._volumes_due.get(ns, 0.0):
            self._volumes_due[ns] = time.monotonic() + VOLUME_SYNC_SECONDS
            for worker in list(self.workers.values()):
                if worker.ns == ns:
                    worker.refresh_volumes()
        self._services[ns] = self._endpoints(ns)
        self._write_services()

    def _sync(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        if not self._wanted(pod):
            return
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        if meta.get("deletionTimestamp"):
            # Nothing runs for it (any more): confirm, as the kubelet does.
            self.api.request("DELETE", path, {"gracePeriodSeconds": 0})
            return
        if not spec.get("nodeName"):
            self._bind(pod, path)
            return
        if spec["nodeName"] != self.node:
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # ran before this kubelet started; nothing to do
        ports = [int(p["containerPort"]) for c in spec["containers"] for p in c.get("ports", [])]
        ip, local = self._allocate_ip(ports)
        worker = PodWorker(
            node=self,
            pod=pod,
            ip=ip,
            local=local,
            folder=self.folder / f"{ns}_{name}",
            log=self.folder / f"{ns}_{name}.log",
        )
        worker.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.workers[uid] = worker
        worker.start()

    # ------------------------------------------------------------ DNS and kube-proxy

    def _endpoints(self, ns: str) -> dict[str, dict[str, list[list[Any]]]]:
        """``<service>.<namespace>`` -> {service port: [[endpoint IP, target port], ...]} over
        the ready endpoints of the namespace's EndpointSlices."""
        services = self.api.items(f"/api/v1/namespaces/{ns}/services")
        slices = self.api.items(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
        by_service: dict[str, list[dict[str, Any]]] = {}
        for s in slices:
            owner = (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            if owner:
                by_service.setdefault(owner, []).append(s)
        table: dict[str, dict[str, list[list[Any]]]] = {}
        for svc in services:
            entry: dict[str, list[list[Any]]] = {}
            for port in svc["spec"].get("ports", []):
                targets: list[list[Any]] = []
                for s in by_service.get(svc["metadata"]["name"], []):
                    # The slice's port of the same name carries the resolved target port.
                    numbers = [
                        p["port"]
                        for p in s.get("ports") or []
                        if p.get("name", "") == port.get("name", "") and p.get("port")
                    ]
                    for ep in s.get("endpoints") or []:
                        if (ep.get("conditions") or {}).get("ready") is False:
                            continue
                        targets += [[a, n] for a in ep.get("addresses", []) for n in numbers]
                entry[str(port["port"])] = sorted(targets)
            table[f"{svc['metadata']['name']}.{ns}"] = entry
        return table

    def _write_services(self) -> None:
        """The table ``pod_env/sitecustomize.py`` reads, replaced atomically when it changes."""
        table = {k: v for entries in self._services.values() for k, v in entries.items()}
        text = json.dumps(table, sort_keys=True)
        if text != self._services_text:
            tmp = self.services_file.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.services_file)
            self._services_text = text

    # ------------------------------------------------------------ for tests

    def pod_log(self, ns: str, name: str) -> Path:
        return self.folder / f"{ns}_{name}.log"
