"""The node the tests play: one Node object, a scheduler that binds every pending Pod to it,
and a kubelet that reports Pod status the way a real one would.

Pods of a Job end when the test says so (exit code and termination message, as
``onnxship compress --result-file`` leaves them); every other Pod runs and turns Ready. A Pod
being deleted is confirmed gone, as a kubelet does once its containers stop. What the
controllers make of these statuses (Job conditions, ReplicaSet and Deployment counts) is the
real kube-controller-manager's work.
"""

from __future__ import annotations

import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .api import Api, ApiError

log = logging.getLogger(__name__)
NODE = "e2e-node"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
A_EXIT_CODE = "e2e.onnxship.io/exit-code"
A_MESSAGE = "e2e.onnxship.io/message"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Exit:
    code: int
    message: str = ""


@dataclass
class FakeKubelet:
    api: Api
    namespaces: set[str] = field(default_factory=set)
    # Job name -> how its Pod ends; a Job Pod not listed here stays Running.
    job_exits: dict[str, Exit] = field(default_factory=dict)
    ready: bool = True  # False: non-Job Pods run but never turn Ready
    # KWOK reports node and Pod status (harness/kwok-stages.yaml); this only binds Pods and
    # hands a Job Pod its exit through annotations.
    kwok: bool = False
    node: str = NODE
    errors: list[str] = field(default_factory=list)
    _ips: itertools.count = field(default_factory=lambda: itertools.count(2))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    # The client's connection pool holds 4: more binders would only open and drop connections.
    _binder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="bind")
    )

    def start(self) -> None:
        if self.api.get(f"/api/v1/nodes/{self.node}") is None:
            node: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": self.node,
                    "labels": {"kubernetes.io/hostname": self.node},
                },
            }
            if self.kwok:
                node["metadata"]["annotations"] = {KWOK_ANNOTATION: "fake"}
            self.api.must("POST", "/api/v1/nodes", node)
        if self.kwok:
            self._start_thread()
            return
        self.api.must(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                    "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                }
            },
            content_type="application/merge-patch+json",
        )
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.node, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._binder.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for ns in list(self.namespaces):
                try:
                    if self.kwok:
                        self._sync_kwok_namespace(ns)
                        continue
                    pods = self.api.items(f"/api/v1/namespaces/{ns}/pods")
                    self._sync_namespace(ns, pods)
                    for pod in pods:
                        self._sync(pod)
                except ApiError as exc:
                    if exc.response.status != 404:
                        self.errors.append(str(exc))
                except Exception as exc:  # keep playing the node; the test sees errors
                    self.errors.append(repr(exc))
            self._stop.wait(0.2)

    def _sync_namespace(self, ns: str, pods: list[dict[str, Any]]) -> None:
        """Before the namespace's Pods are synced, one by one (a hook for subclasses)."""

    # ------------------------------------------------------------------ one pod

    def _sync(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        if self.kwok:
            self._sync_kwok(pod, path)
            return
        if meta.get("deletionTimestamp"):
            # The containers are "stopped": confirm, as the kubelet does.
            self.api.request("DELETE", path, {"gracePeriodSeconds": 0})
            return
        if not spec.get("nodeName"):
            self._bind(pod, path)
            return
        status = pod.get("status") or {}
        phase = status.get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            return
        job = (meta.get("labels") or {}).get("job-name") or (meta.get("labels") or {}).get(
            "batch.kubernetes.io/job-name"
        )
        if job and job in self.job_exits:
            self._patch_status(path, self._terminated(pod, self.job_exits[job]))
        elif phase == "Pending":
            self._patch_status(path, self._running(pod, ready=self.ready and not job))
        elif not job and self.ready and not _is_ready(status):
            self._patch_status(path, self._running(pod, ready=True, ip=status.get("podIP")))

    def _bind(self, pod: dict[str, Any], path: str) -> None:
        meta = pod["metadata"]
        self.api.must(
            "POST",
            f"{path}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            },
        )

    def _sync_kwok_namespace(self, ns: str) -> None:
        """With KWOK the harness is only the scheduler (and a Job Pod's exit). It reads the
        Pods it has work for, not all of them, and binds them a few at a time: at 1,000
        ModelDeployments (2,000 Pods), listing every Pod each turn and binding one by one
        made Pods turn Ready at 5 a second, which the scale bench then measured as the
        operator's time."""
        path = f"/api/v1/namespaces/{ns}/pods"
        unbound = self.api.must("GET", path, query={"fieldSelector": "spec.nodeName="})
        pending = [p for p in unbound["items"] if not p["metadata"].get("deletionTimestamp")]

        def bind(pod: dict[str, Any]) -> None:
            self._bind(pod, f"{path}/{pod['metadata']['name']}")

        list(self._binder.map(bind, pending))
        if self.job_exits:
            for pod in self.api.items(path, selector="job-name"):
                self._sync_kwok(pod, f"{path}/{pod['metadata']['name']}")

    def _sync_kwok(self, pod: dict[str, Any], path: str) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        if not pod["spec"].get("nodeName"):
            self._bind(pod, path)
            return
        labels = meta.get("labels") or {}
        job = labels.get("job-name") or labels.get("batch.kubernetes.io/job-name")
        annotations = meta.get("annotations") or {}
        if job and job in self.job_exits and A_EXIT_CODE not in annotations:
            exit_ = self.job_exits[job]
            self.api.merge_patch(
                path,
                {
                    "metadata": {
                        "annotations": {A_EXIT_CODE: str(exit_.code), A_MESSAGE: exit_.message}
                    }
                },
            )

    def _patch_status(self, path: str, status: dict[str, Any]) -> None:
        self.api.must(
            "PATCH",
            f"{path}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    def _ip(self) -> str:
        n = next(self._ips)
        return f"10.244.{n // 250}.{n % 250 + 2}"

    def _running(self, pod: dict[str, Any], ready: bool, ip: str | None = None) -> dict[str, Any]:
        now = _now()
        flag = "True" if ready else "False"
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip or self._ip(),
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": ready,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
                for c in pod["spec"]["containers"]
            ],
        }

    def _terminated(self, pod: dict[str, Any], exit_: Exit) -> dict[str, Any]:
        now = _now()
        phase = "Succeeded" if exit_.code == 0 else "Failed"
        return {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": (pod.get("status") or {}).get("podIP") or self._ip(),
            "startTime": (pod.get("status") or {}).get("startTime") or now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": now,
                },
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": exit_.code,
                            "reason": "Completed" if exit_.code == 0 else "Error",
                            "message": exit_.message,
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
                for c in pod["spec"]["containers"]
            ],
        }


def _is_ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
