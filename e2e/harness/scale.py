"""The scale run (issue 21): N ModelDeployments on the real API server, measured from outside.

Shared by ``bench/scale_bench.py`` (``make bench-scale``, 1,000 objects) and
``e2e/test_scale.py`` (the CI-sized smoke). One run, per operator under test (the onnxship
operator, and the anchor: a minimal kopf operator that only writes status), in a namespace of
its own on one control plane:

1. N ModelDeployments whose model digests are pinned and whose artifacts are already in the
   store (moto S3, published beforehand by ``onnxship.compress``), so no Job runs; created
   before the operator starts ("applied at once"); the clock starts with the process.
2. All Ready (ours: phase Ready at generation 1, its pods Ready through KWOK; the anchor: its
   status written). A quiet spell, then a rest window: requests at rest.
3. A spec change (model v2, another pinned digest in the store) on K of them: a canary each,
   ``setWeight`` steps without pauses. Done when the new revision is stable; every route table
   the operator writes is recorded from a watch, so skipped steps show.
4. The operator restarted at rest (SIGTERM, then a new process): the time until its requests
   fall back to the rest rate, and every write it made meanwhile (all objects are unchanged).
5. Every ModelDeployment deleted at once (one deletecollection); the time until they and their
   children are gone.

What is counted, and how (honest about whose requests are whose):

- The operator's API requests: the API server's audit log, filtered by user (the policy logs
  ServiceAccounts only: the operator and the anchor run with their ServiceAccount's token;
  KWOK, the controller-manager and this harness use the admin token). Every request is
  counted once, watches when they start: kopf's own (list, watch, finalizers, annotations,
  events) as well as the reconciles'.
- The API server's whole request rate: ``apiserver_request_total`` deltas from its /metrics.
- The process: peak RSS (VmHWM), CPU seconds (utime + stime), threads and established TCP
  connections sampled every second, all from /proc.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .api import Api, wait_for
from .control_plane import ControlPlane, free_port, start, start_kwok, write_kubeconfig
from .install import install_crd, install_operator_rbac, service_account_token
from .kubelet import KWOK_ANNOTATION, NODE, FakeKubelet
from .operator import Operator, start_operator

log = logging.getLogger(__name__)


def kwok_node(cp: ControlPlane) -> FakeKubelet:
    """The CRD installed, KWOK started and the Node it plays Ready; the run binds the Pods.
    The caller stops the returned kubelet."""
    crd = install_crd(cp.admin)
    assert crd.ok, crd.message
    start_kwok(cp, KWOK_ANNOTATION)
    kubelet = FakeKubelet(cp.admin, kwok=True)
    kubelet.start()
    wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (cp.admin.get(f"/api/v1/nodes/{NODE}") or {})
            .get("status", {})
            .get("conditions", [])
        ),
        timeout=60,
        what="KWOK to make the node Ready",
    )
    return kubelet

MDS = "/apis/onnxship.io/v1alpha1/namespaces/{ns}/modeldeployments"
OURS_LABEL = "onnxship.io/deployment"
CHILD_KINDS = {
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "replicasets": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "services": "/api/v1/namespaces/{ns}/services",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "pods": "/api/v1/namespaces/{ns}/pods",
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
# The canary's steps: setWeight without pauses (issue 21).
STEPS = (25, 50, 75)
S3_REGION = "us-east-1"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "scale-bench", "AWS_SECRET_ACCESS_KEY": "scale-bench-secret"}

# ---------------------------------------------------------------------- the audit log

AUDIT_POLICY = textwrap.dedent(
    """
    apiVersion: audit.k8s.io/v1
    kind: Policy
    # One event per request: ResponseComplete (watches: ResponseStarted, when they begin).
    omitStages: [RequestReceived]
    rules:
      # The operators under test run with ServiceAccount tokens; KWOK, the controller-manager
      # and the harness with the admin token, so they are not logged. Writes with their body:
      # a write to an unchanged object must say what it changed.
      - level: Request
        userGroups: ["system:serviceaccounts"]
        verbs: [create, update, patch, delete, deletecollection]
      - level: Metadata
        userGroups: ["system:serviceaccounts"]
      - level: None
    """
).lstrip()


# The controller-manager's client rate limit raised (kwokctl's --disable-qps-limits does the
# same for its scale runs): with its default, 20 requests/s per controller, the ReplicaSet
# controller created Pods at 5 a second: 2,000 Pods (1,000 ModelDeployments' revisions and
# routers) took 400 s whatever the operator did, and that is what "time to Ready" measured.
CONTROLLER_MANAGER_ARGS = ("--kube-api-qps=1000", "--kube-api-burst=2000")


def apiserver_args(folder: Path) -> list[str]:
    """kube-apiserver flags that write the audit log of ServiceAccounts' requests, and room
    for the Services of 1,000 ModelDeployments (two each, three in a canary): the harness's
    10.0.0.0/24 ran out at 127 ("failed to allocate a serviceIP: range is full")."""
    policy = folder / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={folder / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-maxsize=0",
        "--audit-log-mode=blocking",
        "--service-cluster-ip-range=10.0.0.0/16",  # the later flag wins
    ]


@dataclass(frozen=True)
class Request:
    at: float  # epoch seconds, when the API server received it
    user: str
    verb: str
    resource: str  # plural[/subresource], or the path of a non-resource URL
    namespace: str
    name: str
    code: int
    body: str = ""  # of a write, as sent (cut at 400 characters)

    @property
    def key(self) -> str:
        return f"{self.verb} {self.resource}"


class AuditTail:
    """Follows the audit log in a thread; every ServiceAccount request once, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[Request] = []
        self.parsed_bytes = 0  # of the file, read and parsed
        self._watches: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-tail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.path.exists() and not self._stop.is_set():
            self._stop.wait(0.2)
        with self.path.open("rb") as f:
            buf = b""
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    if self._stop.is_set():
                        return
                    self._stop.wait(0.2)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                parsed = [r for r in map(self._parse, lines) if r is not None]
                with self._lock:
                    self.requests.extend(parsed)
                    self.parsed_bytes += len(chunk)

    def _parse(self, line: bytes) -> Request | None:
        """One request once: a watch that started logs ResponseStarted, then ResponseComplete
        when it ends (RequestReceived is not logged)."""
        if not line.strip():
            return None
        try:
            e = json.loads(line)
        except ValueError:
            return None
        if e.get("verb") == "watch":
            if e.get("auditID") in self._watches:
                return None
            self._watches.add(e.get("auditID"))
        return _request_of(e)

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until everything the log holds now has been read (the API server writes
        an event once the request completes: give it a moment first)."""
        time.sleep(0.5)
        size = self.path.stat().st_size if self.path.exists() else 0
        deadline = time.monotonic() + timeout
        while self.parsed_bytes < size and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def of(self, user: str, t0: float, t1: float | None = None) -> list[Request]:
        with self._lock:
            reqs = list(self.requests)
        end = float("inf") if t1 is None else t1
        return [r for r in reqs if r.user == user and t0 <= r.at < end]


def _request_of(e: dict[str, Any]) -> Request:
    verb = e.get("verb", "")
    ref = e.get("objectRef") or {}
    resource = ref.get("resource", "")
    if resource and ref.get("subresource"):
        resource += "/" + ref["subresource"]
    if not resource:
        resource = urllib.parse.urlsplit(e.get("requestURI", "")).path
    at = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
    return Request(
        at=at,
        user=(e.get("user") or {}).get("username", ""),
        verb=verb,
        resource=resource,
        namespace=ref.get("namespace", ""),
        name=ref.get("name", ""),
        code=int((e.get("responseStatus") or {}).get("code") or 0),
        body=json.dumps(e["requestObject"])[:400] if e.get("requestObject") else "",
    )


def by_key(reqs: Iterable[Request]) -> dict[str, int]:
    return dict(sorted(Counter(r.key for r in reqs).items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------- /proc


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()  # utime, stime


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def proc_connections(pid: int) -> int:
    """Established TCP connections of the process (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "01" and cols[9] in inodes:
                n += 1
    return n


@dataclass
class Sample:
    at: float
    cpu_s: float
    rss_mb: float
    threads: int
    connections: int


class ProcSampler:
    """One process, sampled every ``every`` seconds until stopped (or it ends)."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[Sample] = []
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sample-{pid}", daemon=True)
        self._thread.start()

    def sample(self) -> Sample | None:
        try:
            st = proc_status(self.pid)
            s = Sample(
                at=time.time(),
                cpu_s=proc_cpu_seconds(self.pid),
                rss_mb=int(st["VmRSS"].split()[0]) / 1024,
                threads=int(st["Threads"]),
                connections=proc_connections(self.pid),
            )
            self.peak_rss_mb = max(self.peak_rss_mb, int(st["VmHWM"].split()[0]) / 1024)
        except (OSError, KeyError, ValueError, IndexError):
            return None
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def stop(self) -> None:
        """Take a last sample (call before the process ends: /proc goes with it)."""
        self.sample()
        self._stop.set()
        self._thread.join(5)

    def cpu_at(self, t: float) -> float:
        """CPU seconds used by ``t`` (the last sample at or before it)."""
        before = [s.cpu_s for s in self.samples if s.at <= t]
        return before[-1] if before else 0.0

    def summary(self, t0: float = 0.0, t1: float = float("inf")) -> dict[str, Any]:
        ss = [s for s in self.samples if t0 <= s.at <= t1]
        if not ss:
            return {}
        return {
            "cpu_seconds": round(ss[-1].cpu_s - (self.cpu_at(t0) if t0 else 0.0), 2),
            "rss_mb_max": round(max(s.rss_mb for s in ss), 1),
            "threads_max": max(s.threads for s in ss),
            "threads_last": ss[-1].threads,
            "connections_max": max(s.connections for s in ss),
            "connections_last": ss[-1].connections,
        }


# ---------------------------------------------------------------------- watches


class Watch:
    """List then watch one collection in a thread, keeping the objects by name.

    ``on_event(type, obj)`` sees every event in order (a watch delivers each write), so a
    caller can record histories, such as every route table written.
    """

    def __init__(
        self,
        api: Api,
        path: str,
        query: dict[str, str] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.api, self.path, self.query = api, path, dict(query or {})
        self.on_event = on_event
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._ctx = ssl.create_default_context(cafile=api.ca_file)
        self._resp: Any = None
        self._listed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self._thread.start()
        self._listed.wait(60)

    def _list(self) -> str:
        body = self.api.must("GET", self.path, query=self.query or None)
        with self.lock:
            self.objects = {o["metadata"]["name"]: o for o in body.get("items", [])}
        for o in body.get("items", []):
            if self.on_event:
                self.on_event("ADDED", o)
        self._listed.set()
        return str(body["metadata"]["resourceVersion"])

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._list()
                rv = self._watch(rv)
            except Exception as exc:  # keep watching; a gap relists
                if self._stop.is_set():
                    return
                self.errors.append(repr(exc))
                rv = ""
                self._stop.wait(1)

    def _watch(self, rv: str) -> str:
        q = {
            **self.query,
            "watch": "1",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "240",
        }
        url = f"{self.api.server}{self.path}?{urllib.parse.urlencode(q)}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.api.token}"})
        with urllib.request.urlopen(req, context=self._ctx, timeout=300) as resp:
            self._resp = resp
            for line in resp:
                if self._stop.is_set():
                    return rv
                ev = json.loads(line)
                kind, obj = ev["type"], ev["object"]
                if kind == "ERROR":
                    return ""  # 410 Gone and the like: relist
                rv = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                with self.lock:
                    if kind == "DELETED":
                        self.objects.pop(name, None)
                    else:
                        self.objects[name] = obj
                if self.on_event:
                    self.on_event(kind, obj)
        return rv

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.objects)

    def stop(self) -> None:
        self._stop.set()
        # Not resp.close(): it waits for the reader thread's lock, i.e. for the next event
        # or the watch's timeout. Shutting the socket down ends the read at once.
        resp = self._resp
        sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


class Binder:
    """The scheduler's one job here: bind each pending Pod of ``namespace`` to the node.

    A watch, not the harness kubelet's poll: at 1,000 objects a full Pod list every 0.2 s
    would load the API server more than the operator under test."""

    def __init__(self, api: Api, namespace: str, node: str) -> None:
        self.api, self.namespace, self.node = api, namespace, node
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="bind")
        self.asked: set[str] = set()
        self.errors: list[str] = []
        self.watch = Watch(
            api,
            f"/api/v1/namespaces/{namespace}/pods",
            {"fieldSelector": "spec.nodeName="},
            self._event,
        )

    def _event(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if kind == "DELETED" or meta.get("deletionTimestamp") or pod["spec"].get("nodeName"):
            return
        if meta["uid"] in self.asked:
            return
        self.asked.add(meta["uid"])
        self.pool.submit(self._bind, meta["name"])

    def _bind(self, name: str) -> None:
        resp = self.api.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/pods/{name}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": self.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            },
        )
        if not resp.ok and resp.status not in (404, 409):
            self.errors.append(f"bind {name}: {resp.status} {resp.message}")

    def stop(self) -> None:
        self.watch.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Model:
    version: str
    uri: str
    sha256: str
    cache_key: str


@dataclass(frozen=True)
class Store:
    endpoint: str
    bucket: str
    v1: Model
    v2: Model

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/artifacts/"


COMPRESSION: dict[str, Any] = {"accuracyGate": {"min": 0.9}}


def prepare_store(endpoint: str, folder: Path, bucket: str = "onnxship-scale") -> Store:
    """Two small models (v1, v2) uploaded to moto and compressed into its artifact store by
    the project's own ``compress`` (what the Job would have run): every pinned digest the
    ModelDeployments name is found there, so no Job runs."""
    import boto3
    from tests.helpers import models

    from onnxship.api import parse_spec
    from onnxship.compress import compress
    from onnxship.store import S3Credentials, open_store, sha256_file

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=bucket)
    store = open_store(
        f"s3://{bucket}/artifacts/",
        endpoint=endpoint,
        region=S3_REGION,
        credentials=S3Credentials(
            access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
            secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        ),
    )
    compression = parse_spec(
        {"model": {"uri": "s3://x/m.onnx", "sha256": "0" * 64}, "compression": COMPRESSION}
    ).compression
    made = []
    for version, seed in (("v1", 1), ("v2", 2)):
        path = models.save(models.mlp(seed=seed), folder / version / "model.onnx")
        sha, _ = sha256_file(path)
        key = f"models/{version}/model.onnx"
        s3.upload_file(str(path), bucket, key)
        outcome = compress(
            path.as_uri(), compression, store, expected_sha256=sha, model_version=version
        )
        made.append(Model(version, f"s3://{bucket}/{key}", sha, outcome.manifest.cache_key))
    return Store(endpoint, bucket, made[0], made[1])


# ---------------------------------------------------------------------- objects


def model_deployment(i: int, store: Store, model: Model) -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"m{i:04d}"},
        "spec": spec_for(store, model),
    }


def spec_for(store: Store, model: Model) -> dict[str, Any]:
    return {
        "model": {"uri": model.uri, "sha256": model.sha256, "version": model.version},
        "compression": COMPRESSION,
        "artifacts": {
            "uri": store.uri,
            "endpoint": store.endpoint,
            "region": S3_REGION,
            "credentialsSecret": "s3-creds",
        },
        "serving": {"replicas": 1},
        # The first revision skips the steps; the spec change later only changes the model.
        "rollout": {"steps": [{"setWeight": w} for w in STEPS]},
    }


def s3_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-creds"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in S3_KEYS.items()},
    }


# ---------------------------------------------------------------------- operators


# Both anchors' kopf settings: progress in annotations, kopf's own Events off (as the onnxship
# operator's), no cluster scanning.
ANCHOR_SETTINGS = textwrap.dedent(
    """
    import logging
    import kopf

    def configure_kopf(settings):
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix='bench.io')
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix='bench.io')
        settings.posting.level = logging.WARNING
        settings.scanning.disabled = True
    """
)

ANCHOR = ANCHOR_SETTINGS + textwrap.dedent(
    """
    # The anchor: a minimal kopf operator that only writes status (bench/operator_bench.py's,
    # with the spec change handled too).
    @kopf.on.startup()
    def configure(settings, **_):
        configure_kopf(settings)

    @kopf.on.create('onnxship.io', 'v1alpha1', 'modeldeployments')
    @kopf.on.update('onnxship.io', 'v1alpha1', 'modeldeployments', field='spec')
    def seen(meta, patch, **_):
        patch.status['phase'] = 'Ready'
        patch.status['observedGeneration'] = meta.get('generation', 0)
    """
)


# The second anchor: what a kopf user would write to make the same critical path as onnxship's
# first revision (one Deployment and one Service per object, Ready once its Pod is), with
# nothing else: no store, no plan, no router. Its Ready waits for the same controller-manager
# and KWOK as onnxship's; the status-only anchor's does not.
ANCHOR_CHILDREN = ANCHOR_SETTINGS + textwrap.dedent(
    """
    import kubernetes

    LABEL = 'onnxship.io/deployment'
    GROUP, VERSION, PLURAL = 'onnxship.io', 'v1alpha1', 'modeldeployments'

    @kopf.on.startup()
    def configure(settings, **_):
        configure_kopf(settings)
        kubernetes.config.load_kube_config()

    @kopf.index(GROUP, VERSION, PLURAL)
    def phases(name, status, meta, **_):
        return {name: (status.get('phase'), meta.get('generation', 0))}

    @kopf.on.create(GROUP, VERSION, PLURAL)
    def create(name, namespace, body, **_):
        labels = {LABEL: name}
        service = {
            'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': name, 'labels': labels},
            'spec': {'selector': labels, 'ports': [{'port': 80, 'targetPort': 8000}]},
        }
        container = {'name': 'model', 'image': 'onnxship/runtime:bench',
                     'ports': [{'containerPort': 8000}]}
        deployment = {
            'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': name, 'labels': labels},
            'spec': {'replicas': 1, 'selector': {'matchLabels': labels},
                     'template': {'metadata': {'labels': labels},
                                  'spec': {'containers': [container]}}},
        }
        kopf.adopt([service, deployment], owner=body)
        for make, obj in (
            (kubernetes.client.CoreV1Api().create_namespaced_service, service),
            (kubernetes.client.AppsV1Api().create_namespaced_deployment, deployment),
        ):
            try:
                make(namespace, obj)
            except kubernetes.client.ApiException as exc:
                if exc.status != 409:
                    raise

    @kopf.on.update(GROUP, VERSION, PLURAL, field='spec')
    def changed(meta, patch, **_):
        patch.status['phase'] = 'Ready'
        patch.status['observedGeneration'] = meta.get('generation', 0)

    @kopf.on.event('apps', 'v1', 'deployments', labels={LABEL: kopf.PRESENT})
    def deployment(body, namespace, phases, **_):
        name = body['metadata']['labels'][LABEL]
        if (body.get('status') or {}).get('readyReplicas', 0) < 1:
            return
        for phase, generation in phases.get(name, []):
            if phase != 'Ready':
                kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name,
                    {'status': {'phase': 'Ready', 'observedGeneration': generation}},
                )
    """
)
ANCHORS = {"anchor": ANCHOR, "anchor-children": ANCHOR_CHILDREN}


@dataclass
class Running:
    """An operator process under test."""

    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int = 0  # the onnxship operator's Prometheus port; 0 for the anchor

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"{self.log.name} exited ({self.popen.returncode}):\n{tail}")

    def counters(self) -> dict[str, float]:
        """The onnxship operator's own counters (reconciles, client-side API requests)."""
        if not self.metrics_port:
            return {}
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            for name in ("onnxship_operator_reconciles_total", "onnxship_operator_api_requests"):
                if line.startswith(name + "{") or line.startswith(name + "_total{"):
                    out[name.removesuffix("_total")] += float(line.split()[-1])
        return dict(out)


@dataclass
class Case:
    """One operator under test: how to start it, and when an object is done."""

    name: str  # "onnxship" or one of ANCHORS
    namespace: str
    user: str = ""
    token: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_anchor(self) -> bool:
        return self.name in ANCHORS

    def start(self, cp: ControlPlane, run: int) -> Running:
        if self.is_anchor:
            return self._start_anchor(cp, run)
        op: Operator = start_operator(
            cp.folder,
            cp.server,
            cp.pki.ca_cert,
            self.token,
            self.namespace,
            env=self.env,
            name=f"scale-operator{run}",
        )
        return Running(op.process.popen, op.process.log, op.metrics_port)

    def _start_anchor(self, cp: ControlPlane, run: int) -> Running:
        script = cp.folder / f"scale_{self.name}.py"
        script.write_text(ANCHORS[self.name])
        kubeconfig = write_kubeconfig(
            cp.folder / f"scale-anchor-{self.namespace}.kubeconfig",
            cp.server,
            cp.pki.ca_cert,
            self.token,
            "scale-anchor",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "AWS_"))}
        env.update({"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"})
        kopf = str(Path(sys.executable).with_name("kopf"))
        live = free_port()
        proc = start(
            f"scale-anchor{run}-{self.namespace}",
            [
                kopf,
                "run",
                str(script),
                "-n",
                self.namespace,
                "--standalone",
                f"--liveness=http://127.0.0.1:{live}/healthz",
            ],
            cp.folder,
            env=env,
        )
        return Running(proc.popen, proc.log)

    def done(self, obj: dict[str, Any], generation: int) -> bool:
        meta, st = obj["metadata"], obj.get("status") or {}
        if int(meta.get("generation", 0)) < generation:
            return False
        if st.get("observedGeneration") != meta.get("generation") or st.get("phase") != "Ready":
            return False
        return self.is_anchor or not st.get("canaryRevision")


# ---------------------------------------------------------------------- the run


@dataclass
class Options:
    count: int = 1000
    canaries: int = 100
    rest_seconds: float = 60.0  # one rest window; at least the operator's resync period
    resync_seconds: float = 60.0  # the operator's (ONNXSHIP_RESYNC_SECONDS); 60 is its default
    quiet_seconds: float = 10.0  # no writes for this long before a rest window starts
    ready_timeout: float = 3600.0
    step_timeout: float = 1800.0
    cases: tuple[str, ...] = ("anchor", "onnxship")
    parallel_creates: int = 4


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def apiserver_requests(admin: Api) -> Counter[str]:
    """The API server's apiserver_request_total by "verb resource[/subresource]", all
    clients (the metric has no user label)."""
    text = admin.must("GET", "/metrics", accept="text/plain")
    text = text if isinstance(text, str) else str(text)
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            res = labels.get("resource", "") + (
                "/" + labels["subresource"] if labels.get("subresource") else ""
            )
            out[f"{labels.get('verb', '').lower()} {res or '-'}"] += float(line.rsplit(" ", 1)[-1])
    return out


def per_object(counts: dict[str, int], objects: int) -> dict[str, float]:
    return {k: round(v / objects, 3) for k, v in counts.items()}


class ScaleRun:
    def __init__(
        self,
        cp: ControlPlane,
        audit: AuditTail,
        store: Store,
        node: str,
        options: Options,
        say: Callable[[str], None] = print,
    ) -> None:
        self.cp, self.audit, self.store, self.node = cp, audit, store, node
        self.o = options
        self.admin = cp.admin
        self.say = say
        # Filled as each case goes: what was measured before a failure stays readable.
        self.results: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ setup

    def setup(self, case_name: str) -> Case:
        ns = f"scale-{case_name}"
        admin = self.admin
        admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        wait_for(
            lambda: admin.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
            what="the namespace's default ServiceAccount",
        )
        admin.create(f"/api/v1/namespaces/{ns}/secrets", s3_secret())
        install_operator_rbac(admin, ns)  # the chart's Role (RULES) for both operators
        sa = "onnxship-operator"
        case = Case(
            name=case_name,
            namespace=ns,
            user=f"system:serviceaccount:{ns}:{sa}",
            token=service_account_token(admin, ns, sa),
            env={
                "ONNXSHIP_RESYNC_SECONDS": str(self.o.resync_seconds),
                "ONNXSHIP_LOG_LEVEL": os.environ.get("E2E_OPERATOR_LOG_LEVEL", "INFO"),
            },
        )
        return case

    # ------------------------------------------------------------ helpers

    def wait_all(
        self,
        watch: Watch,
        names: list[str],
        pred: Callable[[dict[str, Any]], bool],
        running: Running,
        timeout: float,
        what: str,
    ) -> float:
        t0 = time.time()
        last_report = t0
        while True:
            objs = watch.snapshot()
            ok = sum(1 for n in names if n in objs and pred(objs[n]))
            if ok == len(names):
                return time.time()
            running.check_alive()
            now = time.time()
            if now - t0 > timeout:
                stuck = [n for n in names if not (n in objs and pred(objs[n]))][:5]
                detail = {
                    n: {
                        k: (objs.get(n, {}).get("status") or {}).get(k)
                        for k in ("phase", "message", "canaryRevision", "canaryWeight")
                    }
                    for n in stuck
                }
                raise AssertionError(
                    f"{what}: {ok}/{len(names)} after {timeout:.0f}s; e.g. {detail}"
                )
            if now - last_report > 30:
                self.say(f"  {what}: {ok}/{len(names)} after {now - t0:.0f}s")
                last_report = now
            time.sleep(0.5)

    def writes(self, case: Case, t0: float, t1: float | None = None) -> list[Request]:
        return [r for r in self.audit.of(case.user, t0, t1) if r.verb in WRITE_VERBS]

    def wait_quiet(
        self, case: Case, since: float, quiet: float | None = None, limit: float = 600.0
    ) -> float:
        """Until the operator made no write for ``quiet`` seconds (quiet_seconds by default;
        at most ``limit``) and every Deployment it made is ready and current: the
        controller-manager may still be creating the routers' Pods after the ModelDeployments
        are Ready, and its requests would count as the API server's rate at rest."""
        quiet = self.o.quiet_seconds if quiet is None else quiet
        t_end = time.time() + limit
        while time.time() < t_end:
            time.sleep(1)
            self.audit.sync()
            last = max((r.at for r in self.writes(case, since)), default=since)
            if time.time() - last >= quiet and self.settled(case):
                return time.time()
        return time.time()

    def settled(self, case: Case) -> bool:
        for d in self.admin.items(CHILD_KINDS["deployments"].format(ns=case.namespace)):
            spec, st = d.get("spec") or {}, d.get("status") or {}
            want = int(spec.get("replicas", 1))
            if (
                int(st.get("readyReplicas", 0)) != want
                or int(st.get("replicas", 0)) != want
                or st.get("observedGeneration") != d["metadata"].get("generation")
            ):
                return False
        return True

    def rest_window(self, case: Case, running: Running) -> dict[str, Any]:
        """Requests over one rest window: the operator's (audit), the API server's (all)."""
        c0, a0, t0 = running.counters(), apiserver_requests(self.admin), time.time()
        time.sleep(self.o.rest_seconds)
        c1, a1, t1 = running.counters(), apiserver_requests(self.admin), time.time()
        self.audit.sync()
        reqs = self.audit.of(case.user, t0, t1)
        seconds = t1 - t0
        out: dict[str, Any] = {
            "seconds": round(seconds, 1),
            "operator_requests": len(reqs),
            "operator_requests_per_second": round(len(reqs) / seconds, 2),
            "operator_requests_per_object_per_minute": round(
                len(reqs) / self.o.count / seconds * 60, 3
            ),
            "operator_writes": len([r for r in reqs if r.verb in WRITE_VERBS]),
            "_reread": {
                r.name for r in reqs if r.verb == "get" and r.resource == "modeldeployments"
            },
            "operator_requests_by_verb": by_key(reqs),
            "apiserver_requests_per_second_all_clients": round(
                (sum(a1.values()) - sum(a0.values())) / seconds, 2
            ),
            "apiserver_requests_all_clients_by_verb": {
                k: int(v) for k, v in (a1 - a0).most_common(8)
            },
        }
        passes = c1.get("onnxship_operator_reconciles", 0) - c0.get(
            "onnxship_operator_reconciles", 0
        )
        if running.metrics_port:
            client = c1.get("onnxship_operator_api_requests", 0) - c0.get(
                "onnxship_operator_api_requests", 0
            )
            out["reconcile_passes"] = int(passes)
            out["requests_per_object_per_pass"] = round(len(reqs) / passes, 2) if passes else None
            out["client_counted_requests_per_pass"] = round(client / passes, 2) if passes else None
        return out

    def versions(self, case: Case) -> dict[str, str]:
        """resourceVersion of every ModelDeployment and child, by kind/name."""
        ns = case.namespace
        out = {}
        for kind, path in {"modeldeployments": MDS, **CHILD_KINDS}.items():
            for o in self.admin.items(path.format(ns=ns)):
                out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        return out

    def children_left(self, case: Case) -> dict[str, int]:
        left = {}
        for kind, path in CHILD_KINDS.items():
            n = len(self.admin.items(path.format(ns=case.namespace), OURS_LABEL))
            if n:
                left[kind] = n
        return left

    def rest_reached(
        self, case: Case, t0: float, rate: float, reread: set[str], window: float = 10.0
    ) -> float:
        """When the operator restarted at ``t0`` is back at rest: every ModelDeployment it read
        one by one at rest (``reread``; none for an operator that reads from a cache) read
        again, and from then on a ``window`` of seconds with no more than max(1.5 x the rest
        rate, 1/s) requests per second. Waits for it."""
        limit = max(1.5 * rate, 1.0) * window
        deadline = time.time() + self.o.ready_timeout
        while time.time() < deadline:
            time.sleep(2)
            self.audit.sync()
            reqs = self.audit.of(case.user, t0)
            if not reqs:
                continue
            first_read: dict[str, float] = {}
            for r in reqs:
                if r.verb == "get" and r.resource == "modeldeployments" and r.name in reread:
                    first_read.setdefault(r.name, r.at)
            if len(first_read) < len(reread):
                continue
            times = sorted(r.at for r in reqs)
            t = max([times[0], *first_read.values()])
            now = time.time()
            while t + window <= now:
                n = bisect.bisect_left(times, t + window) - bisect.bisect_left(times, t)
                if n <= limit:
                    return t
                t += 1.0
        raise AssertionError(f"{case.name}: not back to rest after {self.o.ready_timeout:.0f}s")

    # ------------------------------------------------------------ one case

    def run_case(self, case_name: str) -> dict[str, Any]:
        o, admin = self.o, self.admin
        case = self.setup(case_name)
        ns = case.namespace
        names = [f"m{i:04d}" for i in range(o.count)]
        result: dict[str, Any] = {"case": case_name, "namespace": ns, "count": o.count}
        self.results[case_name] = result
        result["loadavg_start"] = _loadavg()
        routes: dict[str, list[dict[str, int]]] = defaultdict(list)

        def on_configmap(kind: str, cm: dict[str, Any]) -> None:
            raw = (cm.get("data") or {}).get("routes.json")
            owner = (cm["metadata"].get("labels") or {}).get(OURS_LABEL, "")
            if kind == "DELETED" or not raw or not owner:
                return
            table = {b["revision"]: b["weight"] for b in json.loads(raw).get("backends", [])}
            if not routes[owner] or routes[owner][-1] != table:
                routes[owner].append(table)

        binder = Binder(admin, ns, self.node)
        mds = Watch(admin, MDS.format(ns=ns))
        cms = Watch(
            admin, CHILD_KINDS["configmaps"].format(ns=ns), {"labelSelector": OURS_LABEL},
            on_configmap,
        )
        samplers: list[ProcSampler] = []
        running: Running | None = None
        try:
            # 1. Applied at once, then the operator starts.
            t = time.time()
            with ThreadPoolExecutor(o.parallel_creates) as pool:
                list(
                    pool.map(
                        lambda i: admin.create(
                            MDS.format(ns=ns), model_deployment(i, self.store, self.store.v1)
                        ),
                        range(o.count),
                    )
                )
            result["seconds_creating_before_start"] = round(time.time() - t, 1)
            self.say(f"[{case_name}] {o.count} created in {time.time() - t:.0f}s; starting")
            t_start = time.time()
            running = case.start(self.cp, 1)
            sampler = ProcSampler(running.pid)
            samplers.append(sampler)
            t_ready = self.wait_all(
                mds, names, lambda m: case.done(m, 1), running, o.ready_timeout, "all Ready"
            )
            result["seconds_to_all_ready"] = round(t_ready - t_start, 1)
            self.say(f"[{case_name}] all Ready in {t_ready - t_start:.0f}s")
            self.audit.sync()
            ready_reqs = self.audit.of(case.user, t_start, t_ready)
            result["ready"] = {
                "requests": len(ready_reqs),
                "requests_per_object": round(len(ready_reqs) / o.count, 2),
                "requests_per_object_by_verb": per_object(by_key(ready_reqs), o.count),
                "errors_by_code": dict(Counter(r.code for r in ready_reqs if r.code >= 400)),
                "process": sampler.summary(t_start, t_ready),
            }

            # 2. At rest.
            t_quiet = self.wait_quiet(case, t_ready)
            result["seconds_ready_to_quiet"] = round(t_quiet - t_ready, 1)
            result["rest"] = self.rest_window(case, running)
            self.say(
                f"[{case_name}] at rest: {result['rest']['operator_requests_per_second']} req/s, "
                f"per pass {result['rest'].get('requests_per_object_per_pass')}"
            )

            # 3. Canaries: the model changes on K of them.
            canaries = names[: o.canaries]
            gens = {n: int(mds.snapshot()[n]["metadata"]["generation"]) for n in canaries}
            stable_before = {
                n: (mds.snapshot()[n].get("status") or {}).get("stableRevision", "")
                for n in canaries
            }
            for n in canaries:
                routes[n] = routes[n][-1:]  # history from the change on
            t_c0 = time.time()
            spec2 = spec_for(self.store, self.store.v2)
            with ThreadPoolExecutor(o.parallel_creates) as pool:
                list(
                    pool.map(
                        lambda n: admin.merge_patch(
                            f"{MDS.format(ns=ns)}/{n}", {"spec": {"model": spec2["model"]}}
                        ),
                        canaries,
                    )
                )

            def canary_done(m: dict[str, Any]) -> bool:
                n = m["metadata"]["name"]
                st = m.get("status") or {}
                moved = case.is_anchor or st.get("stableRevision") not in ("", stable_before[n])
                return moved and case.done(m, gens[n] + 1)

            t_c1 = self.wait_all(mds, canaries, canary_done, running, o.step_timeout, "canaries")
            self.audit.sync()
            c_reqs = self.audit.of(case.user, t_c0, t_c1)
            result["canary"] = {
                "canaries": len(canaries),
                "seconds_to_all_done": round(t_c1 - t_c0, 1),
                "requests_per_canary": round(len(c_reqs) / max(1, len(canaries)), 2),
                "requests_by_verb": by_key(c_reqs),
                "process": sampler.summary(t_c0, t_c1),
            }
            if not case.is_anchor:
                wait_for(
                    lambda: all(
                        routes[n] and list(routes[n][-1].values()) == [100] for n in canaries
                    ),
                    timeout=60,
                    what="every route table at 100% for its new revision",
                )
                result["canary"].update(step_weights(routes, canaries, stable_before))
            self.say(f"[{case_name}] {len(canaries)} canaries done in {t_c1 - t_c0:.0f}s")

            # 4. Restart at rest.
            # At rest: a whole resync with no write, so that every object had a pass since
            # the canaries ended (a write still due then is not the restart's).
            t_q = self.wait_quiet(case, t_c1, quiet=max(o.quiet_seconds, o.resync_seconds + 5))
            rest_rate = result["rest"]["operator_requests_per_second"]
            before = self.versions(case)
            first = sampler.summary(t_start)
            peak_first = sampler.peak_rss_mb
            sampler.stop()
            t_stop = time.time()  # what it writes while stopping counts too
            running.stop()
            t_r0 = time.time()
            running = case.start(self.cp, 2)
            sampler2 = ProcSampler(running.pid)
            samplers.append(sampler2)
            t_rest = self.rest_reached(case, t_r0, rest_rate, result["rest"].pop("_reread"))
            # Writes counted until one rest window past that (each object's next pass too).
            t_r1 = max(t_rest, t_r0) + max(o.rest_seconds, o.resync_seconds) + 5
            time.sleep(max(0.0, t_r1 - time.time()))
            self.audit.sync()
            after = self.versions(case)
            r_reqs = self.audit.of(case.user, t_stop, t_r1)
            changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
            writes = [r for r in r_reqs if r.verb in WRITE_VERBS]
            result["restart"] = {
                "seconds_quiet_before": round(t_stop - t_q, 1),
                "seconds_to_stop": round(t_r0 - t_stop, 1),
                "seconds_back_to_rest": round(t_rest - t_r0, 1),
                "window_seconds": round(t_r1 - t_r0, 1),
                "requests": len(r_reqs),
                "requests_per_object": round(len(r_reqs) / o.count, 2),
                "requests_by_verb": by_key(r_reqs),
                "writes": len(writes),
                "writes_by_verb": by_key(writes),
                "writes_examples": [
                    f"{r.key} {r.name} ({r.code}): {r.body}" for r in writes[:10]
                ],
                "objects_changed": len(changed),
                "objects_changed_examples": changed[:10],
                "objects_gone_or_new": len(before.keys() ^ after.keys()),
                "process": sampler2.summary(t_r0, t_r1),
            }
            self.say(
                f"[{case_name}] restart: back to rest in {t_rest - t_r0:.0f}s, "
                f"{len(writes)} writes, {len(changed)} objects changed"
            )

            # 5. Delete all at once.
            t_d0 = time.time()
            admin.must("DELETE", MDS.format(ns=ns), {"propagationPolicy": "Background"})
            wait_for(
                lambda: not mds.snapshot(),
                timeout=o.step_timeout,
                what=f"{case_name}: every ModelDeployment gone",
                every=0.5,
            )
            t_d1 = time.time()
            wait_for(
                lambda: not self.children_left(case),
                timeout=o.step_timeout,
                what=f"{case_name}: every child gone",
                every=2,
            )
            t_d2 = time.time()
            self.audit.sync()
            d_reqs = self.audit.of(case.user, t_d0, t_d1)
            result["delete"] = {
                "seconds_to_all_gone": round(t_d1 - t_d0, 1),
                "seconds_to_children_gone": round(t_d2 - t_d0, 1),
                "requests_per_object": round(len(d_reqs) / o.count, 2),
                "requests_by_verb": by_key(d_reqs),
            }
            self.say(f"[{case_name}] deleted in {t_d1 - t_d0:.0f}s, children {t_d2 - t_d0:.0f}s")

            # The process, over the run.
            second = sampler2.summary(t_r0)
            sampler2.stop()
            result["process"] = {
                "peak_rss_mb": round(max(peak_first, sampler2.peak_rss_mb), 1),
                "peak_rss_mb_first_process": round(peak_first, 1),
                "cpu_seconds": round(first.get("cpu_seconds", 0) + second.get("cpu_seconds", 0), 2),
                "cpu_seconds_first_process": first.get("cpu_seconds"),
                "threads_max": max(first.get("threads_max", 0), second.get("threads_max", 0)),
                "connections_max": max(
                    first.get("connections_max", 0), second.get("connections_max", 0)
                ),
            }
            all_reqs = self.audit.of(case.user, t_start, time.time())
            result["requests_total"] = len(all_reqs)
            result["requests_total_by_verb"] = by_key(all_reqs)
            result["watch_errors"] = mds.errors[-3:] + cms.errors[-3:]
            result["bind_errors"] = binder.errors[:5]
            result["loadavg_end"] = _loadavg()
            return result
        except BaseException as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for s in samplers:
                s.stop()
            if running is not None:
                running.stop()
            binder.stop()
            mds.stop()
            cms.stop()
            admin.request("DELETE", f"/api/v1/namespaces/{ns}")

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.o.cases:
            out[name] = self.run_case(name)
        return out


def step_weights(
    routes: dict[str, list[dict[str, int]]], canaries: list[str], stable_before: dict[str, str]
) -> dict[str, Any]:
    """What the route tables went through: the canary's weights written, per canary."""
    seqs: Counter[tuple[int, ...]] = Counter()
    every = 0
    for n in canaries:
        old = stable_before[n]
        weights = []
        for table in routes[n]:
            canary = 100 - table[old] if old in table else 100
            if not weights or weights[-1] != canary:
                weights.append(canary)
        seqs[tuple(weights)] += 1
        if all(w in weights for w in STEPS) and weights[-1] == 100:
            every += 1
    return {
        "steps": list(STEPS),
        "canaries_with_every_step_written": every,
        "canary_weight_sequences": {
            " > ".join(map(str, k)): v for k, v in seqs.most_common()
        },
    }


def ratios(anchor: dict[str, Any], ours: dict[str, Any]) -> dict[str, float | None]:
    def r(a: float | None, b: float | None) -> float | None:
        return round(b / a, 2) if a and b is not None else None

    return {
        "time_to_all_ready": r(anchor["seconds_to_all_ready"], ours["seconds_to_all_ready"]),
        "peak_rss": r(anchor["process"]["peak_rss_mb"], ours["process"]["peak_rss_mb"]),
        "cpu_seconds": r(anchor["process"]["cpu_seconds"], ours["process"]["cpu_seconds"]),
        "requests_per_object_to_ready": r(
            anchor["ready"]["requests_per_object"], ours["ready"]["requests_per_object"]
        ),
        "requests_per_second_at_rest": r(
            anchor["rest"]["operator_requests_per_second"],
            ours["rest"]["operator_requests_per_second"],
        ),
        "seconds_back_to_rest_after_restart": r(
            anchor["restart"]["seconds_back_to_rest"], ours["restart"]["seconds_back_to_rest"]
        ),
    }
