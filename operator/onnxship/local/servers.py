"""The model servers of `onnxship up`: one `onnxship serve` per revision and environment.

What a Deployment's pods are in the cluster: started for a revision's record, restarted when
they exit (up to RESTART_LIMIT times, like a restart policy), stopped gracefully (SIGTERM,
then SIGKILL after RETIRE_GRACE) without holding up the loop, and observed as the plan's
``RevisionPods``.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

from onnxship.api import EnvironmentStatus, RevisionStatus
from onnxship.plan.observed import RevisionPods
from onnxship.plan.workloads import Owner, StoreRef, serve_args

from . import processes
from .events import Say
from .options import UpOptions
from .processes import Child
from .spec import LocalSpec
from .state import DeploymentState

RESTART_LIMIT = 3
RETIRE_GRACE = 10.0  # seconds a stopped server gets to finish its requests


@dataclass
class ServedRevision:
    record: RevisionStatus
    replicas: dict[str, int]
    children: dict[str, Child] = field(default_factory=dict)  # environment -> process
    restarts: int = 0
    failed: str = ""


class Servers:
    """The server processes of every revision, and those still draining after a stop."""

    def __init__(self, state: DeploymentState, options: UpOptions, say: Say) -> None:
        self.state = state
        self.options = options
        self.say = say
        self.served: dict[str, ServedRevision] = {}
        self.retiring: list[tuple[Child, float]] = []  # (child, when to SIGKILL it)

    # ------------------------------------------------------------ observe

    def observe(self, local: LocalSpec) -> dict[str, RevisionPods]:
        """Each revision's processes as the plan sees pods; dead servers restart first."""
        pods = {}
        for rev, served in self.served.items():
            self._supervise(local, rev, served)
            ready = bool(served.children) and all(c.probe(0.5) for c in served.children.values())
            pods[rev] = RevisionPods(
                replicas=dict(served.replicas), ready=ready and not served.failed
            )
        return pods

    def _supervise(self, local: LocalSpec, revision: str, served: ServedRevision) -> None:
        """Restart a server that died, like a pod's restart policy, up to RESTART_LIMIT times."""
        for env_name, child in list(served.children.items()):
            code = child.exit_code()
            if code is None:
                continue
            tail = child.log_tail(5)
            if served.restarts >= RESTART_LIMIT:
                if not served.failed:
                    served.failed = f"{revision}: server exited with {code} {served.restarts} times"
                    self.say("warning", f"{served.failed}; last lines:\n{tail}")
                continue
            served.restarts += 1
            self.say("warning", f"{revision}: server exited with {code}, restarting")
            env = next(e for e in served.record.environments if e.name == env_name)
            served.children[env_name] = self._start(local, revision, served.record, env)

    # ------------------------------------------------------------ execute

    def ensure(
        self,
        local: LocalSpec,
        revision: str,
        replicas: dict[str, int],
        record: RevisionStatus | None,
    ) -> bool:
        """Run ``revision`` with these replicas; False when it is not running and ``record``
        (its artifacts) is unknown, so it cannot start."""
        served = self.served.get(revision)
        if served is None:
            if record is None:
                return False
            served = ServedRevision(record=record, replicas=replicas)
            self.served[revision] = served
        else:
            served.replicas = replicas
        self._converge(local, revision, served)
        return True

    def delete(self, revision: str) -> None:
        served = self.served.pop(revision, None)
        if served is not None:
            for child in served.children.values():
                self._retire(child)
            self.say("info", f"{revision}: stopped")

    def _converge(self, local: LocalSpec, revision: str, served: ServedRevision) -> None:
        """One `onnxship serve` per environment with replicas > 0 (local mode runs one each)."""
        for env in served.record.environments:
            want = served.replicas.get(env.name, 0) > 0
            child = served.children.get(env.name)
            if want and child is None:
                served.children[env.name] = self._start(local, revision, served.record, env)
            elif not want and child is not None:
                self._retire(child)
                del served.children[env.name]

    def _start(
        self, local: LocalSpec, revision: str, record: RevisionStatus, env: EnvironmentStatus
    ) -> Child:
        http_port, grpc_port = processes.free_port(), processes.free_port()
        # The pod's arguments (plan.workloads), on this machine's address, ports and cache.
        args = processes.onnxship_command() + serve_args(
            Owner(local.name, namespace="", uid=""),
            local.spec,
            env,
            env.cache_key,
            StoreRef(local.store_uri, local.spec.artifacts.endpoint, local.spec.artifacts.region),
            record.model_version or revision,
            host=self.options.host,
            http_port=http_port,
            grpc_port=grpc_port,
            cache_dir=str(self.state.root / "cache"),  # a folder per cache key inside
            threads=self.options.serve_threads or None,
            revision=revision,
        )
        child = Child(
            role=f"serve {revision}/{env.name}",
            args=args,
            log_path=self.state.logs_dir / f"{revision}-{env.name}.log",
            ready_url=f"http://{self.options.host}:{http_port}/v2/health/ready",
            ports={"http": http_port, "grpc": grpc_port},
        )
        child.start()
        where = f" for {env.name}" if len(record.environments) > 1 else ""
        self.say(
            "info", f"{revision}: starting server{where} on :{http_port} ({record.model_version})"
        )
        return child

    # ------------------------------------------------------------ stopping

    def _retire(self, child: Child) -> None:
        """SIGTERM now (the server drains its requests); SIGKILL later if it lingers.

        The loop does not wait: the live view, commands and analysis go on meanwhile.
        """
        child.signal(signal.SIGTERM)
        self.retiring.append((child, time.monotonic() + RETIRE_GRACE))

    def reap(self) -> None:
        """Forget retired servers that exited; SIGKILL those past their grace."""
        still = []
        for child, deadline in self.retiring:
            if not child.alive():
                continue
            if time.monotonic() > deadline:
                child.signal(signal.SIGKILL)
            still.append((child, deadline))
        self.retiring = still

    def stop_all(self) -> None:
        children = [c for s in self.served.values() for c in s.children.values()]
        processes.stop_all(children + [c for c, _ in self.retiring])

    # ------------------------------------------------------------ what the user sees

    def view(self) -> dict[str, str]:
        """revision -> "ready :port", "starting :port", "failed" or "stopped"."""
        out = {}
        for rev, served in self.served.items():
            if served.failed:
                out[rev] = "failed"
                continue
            states = [
                ("ready" if child.ready else "starting") + f" :{child.ports['http']}"
                for child in served.children.values()
            ]
            out[rev] = ", ".join(states) or "stopped"
        return out

    def pids(self) -> list[int]:
        """Live server processes, draining ones included."""
        children = [c for s in self.served.values() for c in s.children.values()]
        return [c.pid for c in children + [c for c, _ in self.retiring] if c.alive()]
