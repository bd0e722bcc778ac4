"""Desired Kubernetes objects for a ModelDeployment, as plain dicts. Pure: no client, no I/O.

The controller applies what these return; tests read them without a cluster (crate-operator's
``get_*`` builders apart from ``async create_*``). Every object carries an ownerReference to
its ModelDeployment, so that deleting the ModelDeployment lets Kubernetes' garbage collector
remove them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnxship.api import (
    API_VERSION,
    KIND,
    Compression,
    CompressionSummary,
    Environment,
    EnvironmentStatus,
    ModelDeploymentSpec,
    Resources,
)
from onnxship.api.routes import RouteTable

from .observed import ROUTER
from .revision import canonical_json, short_hash
from .traffic import TrafficSplit

LABEL_PREFIX = "onnxship.io"
L_DEPLOYMENT = f"{LABEL_PREFIX}/deployment"
L_REVISION = f"{LABEL_PREFIX}/revision"
L_ENVIRONMENT = f"{LABEL_PREFIX}/environment"
L_COMPONENT = f"{LABEL_PREFIX}/component"
A_CONFIG_HASH = f"{LABEL_PREFIX}/config-hash"
A_SELECTED_AT = f"{LABEL_PREFIX}/selected-at"  # on the user's Service: plan/front.py

HTTP_PORT = 8000
GRPC_PORT = 8001
ROUTER_PORT = 8080
MODEL_CACHE = "/var/cache/onnxship"
# The compress command writes its JSON result here; on failure the kubelet puts the tail of
# the logs there instead (FallbackToLogsOnError), so one Pod read tells the operator why.
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the objects."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class StoreRef:
    """Where artifacts live, after the spec's choice fell back to the operator's defaults."""

    uri: str
    endpoint: str = ""
    region: str = ""
    credentials_secret: str = ""


@dataclass(frozen=True)
class Runtime:
    """Operator-wide settings the objects need."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    service_account: str = ""
    job_active_deadline_seconds: int = 3600
    job_backoff_limit: int = 2
    job_ttl_seconds: int = 3600
    model_cache_size: str = ""  # emptyDir sizeLimit; "" = no limit
    connection_max_age: float = 10.0  # servers' --max-connection-age: plan/front.py
    extra_labels: Mapping[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ names and metadata


def workload_name(revision: str, environment: str) -> str:
    """Deployment and Service name of a revision in an environment (a DNS-1035 label)."""
    return f"{revision}-{environment}"


def job_name(revision: str, environment: str) -> str:
    return f"{revision}-{environment}"


def router_name(owner: Owner) -> str:
    return f"{owner.name}-router"


def labels(
    owner: Owner, component: str, revision: str = "", environment: str = ""
) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "onnxship",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "onnxship",
        L_DEPLOYMENT: owner.name,
        L_COMPONENT: component,
    }
    if revision:
        out[L_REVISION] = revision
    if environment:
        out[L_ENVIRONMENT] = environment
    return out


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    owner: Owner,
    name: str,
    object_labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(object_labels),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# ------------------------------------------------------------------ pod building blocks


def restricted_container_security() -> dict[str, Any]:
    """The container half of the restricted Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def store_env(store: StoreRef) -> list[dict[str, Any]]:
    """Credentials come from the Secret by reference: they never appear in the object."""
    env: list[dict[str, Any]] = []
    if store.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {
                    "name": key,
                    "valueFrom": {"secretKeyRef": {"name": store.credentials_secret, "key": key}},
                }
            )
        env.append(
            {
                "name": "AWS_SESSION_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": store.credentials_secret,
                        "key": "AWS_SESSION_TOKEN",
                        "optional": True,
                    }
                },
            }
        )
    if store.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": store.region})
    return env


def store_args(store: StoreRef, endpoint_flag: str, region_flag: str) -> list[str]:
    args = ["--store", store.uri]
    if store.endpoint:
        args += [endpoint_flag, store.endpoint]
    if store.region:
        args += [region_flag, store.region]
    return args


def resources_of(*choices: Resources | None) -> dict[str, Any]:
    for r in choices:
        if r is not None and (r.requests or r.limits):
            out: dict[str, Any] = {}
            if r.requests:
                out["requests"] = dict(r.requests)
            if r.limits:
                out["limits"] = dict(r.limits)
            return out
    return {}


def scratch_volumes(runtime: Runtime) -> list[dict[str, Any]]:
    cache: dict[str, Any] = {}
    if runtime.model_cache_size:
        cache["sizeLimit"] = runtime.model_cache_size
    return [{"name": "model-cache", "emptyDir": cache}, {"name": "tmp", "emptyDir": {}}]


SCRATCH_MOUNTS = [
    {"name": "model-cache", "mountPath": MODEL_CACHE},
    {"name": "tmp", "mountPath": "/tmp"},
]


def placement(env: Environment) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.node_selector:
        out["nodeSelector"] = dict(env.node_selector)
    if env.tolerations:
        out["tolerations"] = [t.to_wire() for t in env.tolerations]
    if env.affinity:
        out["affinity"] = dict(env.affinity)
    return out


# ------------------------------------------------------------------ compression Job


def compress_args(
    spec: ModelDeploymentSpec, compression: Compression, env: Environment, store: StoreRef
) -> list[str]:
    """Arguments of `onnxship compress` for one environment's variant."""
    q = compression.quantize
    args = [
        "compress",
        spec.model.uri,
        *store_args(store, "--endpoint", "--region"),
        "--optimize",
        compression.optimize,
        "--sparsity",
        str(compression.prune.sparsity),
        "--prune-method",
        compression.prune.method,
        "--quantize",
        str(q.mode),
        "--weight-type",
        q.weight_type,
        "--per-channel" if q.per_channel else "--per-tensor",
        "--calibration",
        q.calibration,
        "--bits",
        str(q.bits),
        "--block-size",
        str(q.block_size),
        "--algorithm",
        q.algorithm,
        "--symmetric" if q.symmetric else "--asymmetric",
        "--accuracy-level",
        str(q.accuracy_level),
        "--embedding",
        q.embedding,
        "--gate-metric",
        compression.accuracy_gate.metric,
        "--gate-min",
        str(compression.accuracy_gate.min),
        "--execution-provider",
        str(env.execution_provider),
        "--output",
        "json",
        "--progress",
        "none",
        "--result-file",
        TERMINATION_LOG,
    ]
    source_endpoint = spec.model.endpoint or store.endpoint
    if spec.model.uri.startswith("s3://") and source_endpoint:
        # Without an endpoint of its own, an s3:// model is looked for beside the artifacts
        # (a MinIO user's models live there), not on AWS.
        args += ["--source-endpoint", source_endpoint]
    if spec.model.sha256:
        args += ["--sha256", spec.model.sha256]
    if spec.model.sample_inputs:
        args += ["--samples", spec.model.sample_inputs]
    if compression.accuracy_gate.max is not None:
        args += ["--gate-max", str(compression.accuracy_gate.max)]
    if spec.model.kind is not None:
        args += ["--kind", str(spec.model.kind)]
    return args


def model_source_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """Credentials for the source model (S3 keys, or a bearer token for https)."""
    secret = spec.model.credentials_secret
    if not secret:
        return []
    keys = (
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if spec.model.uri.startswith("s3://") else ()
    )
    env = [
        {
            "name": f"ONNXSHIP_SOURCE_{k}",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": k}},
        }
        for k in keys
    ]
    if spec.model.uri.startswith(("http://", "https://")):
        env.append(
            {
                "name": "ONNXSHIP_SOURCE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
            }
        )
    return env


def compress_job(
    owner: Owner,
    spec: ModelDeploymentSpec,
    revision: str,
    env: Environment,
    store: StoreRef,
    runtime: Runtime,
) -> dict[str, Any]:
    """A Job that compresses the model for one environment and publishes it to the store."""
    compression = spec.compression_for(env)
    job_labels = {**labels(owner, "compress", revision, env.name), **runtime.extra_labels}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": restricted_pod_security(),
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": "compress",
                "image": runtime.image,
                "imagePullPolicy": runtime.image_pull_policy,
                "args": compress_args(spec, compression, env, store),
                # Work files of multi-GB models go to the sized scratch volume, not /tmp.
                "env": [
                    *store_env(store),
                    *model_source_env(spec),
                    {"name": "TMPDIR", "value": MODEL_CACHE},
                ],
                "securityContext": restricted_container_security(),
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": SCRATCH_MOUNTS,
                **({"resources": r} if (r := resources_of(env.resources)) else {}),
            }
        ],
        "volumes": scratch_volumes(runtime),
    }
    if runtime.service_account:
        pod_spec["serviceAccountName"] = runtime.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, job_name(revision, env.name), job_labels),
        "spec": {
            "backoffLimit": runtime.job_backoff_limit,
            "activeDeadlineSeconds": runtime.job_active_deadline_seconds,
            "ttlSecondsAfterFinished": runtime.job_ttl_seconds,
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }


# ------------------------------------------------------------------ revision workload

CAUSAL_LM = "causal-lm"
MIB, GIB = 1 << 20, 1 << 30
STARTUP_PERIOD_S = 5


def is_causal_lm(spec: ModelDeploymentSpec, artifact: CompressionSummary | None) -> bool:
    """The artifact's kind as compress found it (status), else the spec's override."""
    if artifact is not None and artifact.kind:
        return artifact.kind == CAUSAL_LM
    return spec.model.kind is not None and str(spec.model.kind) == CAUSAL_LM


def startup_failure_threshold(artifact_bytes: int) -> int:
    """Startup probe failures allowed, one every 5 s: 10 minutes, plus one minute per GiB of
    the artifact for its download (parallel ranged GETs, checked digests) and its load, so
    that a multi-GB LLM is not killed while it starts and a small model keeps today's 600 s."""
    return math.ceil((600 + 60 * artifact_bytes / GIB) / STARTUP_PERIOD_S)


def llm_memory(artifact_bytes: int) -> dict[str, dict[str, str]]:
    """A causal LM's memory when the user set none, from its artifact's bytes. Request: the
    weights once (ONNX Runtime maps the external data and keeps a copy in its own layout)
    plus a quarter for activations and 512 MiB for the interpreter and the server. Limit:
    twice the weights plus 2 GiB for the KV cache, which the server reserves at start and
    fills as tokens arrive (sequences x context x bytes per token: SmolLM2 at the default
    8 x 4096 needs 1.5 GB). Larger models or contexts: set serving.resources."""
    request = math.ceil((artifact_bytes * 1.25 + 512 * MIB) / MIB)
    limit = math.ceil((artifact_bytes * 2 + 2 * GIB) / MIB)
    return {"requests": {"memory": f"{request}Mi"}, "limits": {"memory": f"{limit}Mi"}}


def pod_resources(
    spec: ModelDeploymentSpec, env: Environment, artifact: CompressionSummary | None
) -> dict[str, Any]:
    """The user's resources (environment's, else serving's); a causal LM without a memory
    request or limit gets ``llm_memory`` beside whatever else the user set."""
    out = resources_of(env.resources, spec.serving.resources)
    size = artifact.compressed_bytes if artifact is not None else 0
    set_memory = "memory" in out.get("requests", {}) or "memory" in out.get("limits", {})
    if size > 0 and is_causal_lm(spec, artifact) and not set_memory:
        for part, quantities in llm_memory(size).items():
            out[part] = {**out.get(part, {}), **quantities}
    return out


def cpu_count(quantity: str) -> float | None:
    """A CPU quantity (``2``, ``1.5``, ``500m``) in CPUs; None if it is no plain CPU amount."""
    try:
        return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    except ValueError:
        return None


def serve_workers(
    spec: ModelDeploymentSpec,
    env: Environment | EnvironmentStatus,
    artifact: CompressionSummary | None,
) -> int:
    """``serving.workers``, or for 0: 1 for a causal LM (its weights and KV cache once per
    pod), else one per CPU of the pod's CPU limit, else of its request, else 1. Given to the
    server explicitly: without a limit, the server's own default would count the node's
    cores, and a 64-core node would start 64 copies of the session."""
    if spec.serving.workers:
        return spec.serving.workers
    if is_causal_lm(spec, artifact):
        return 1
    own = env.resources if isinstance(env, Environment) else None
    resources = resources_of(own, spec.serving.resources)
    for part in ("limits", "requests"):
        cpus = cpu_count(str(resources.get(part, {}).get("cpu", "")))
        if cpus is not None and cpus > 0:
            return max(1, math.ceil(cpus - 1e-9))
    return 1


def serve_args(
    owner: Owner,
    spec: ModelDeploymentSpec,
    env: Environment | EnvironmentStatus,
    cache_key: str,
    store: StoreRef,
    model_version: str = "",
    *,
    host: str = "0.0.0.0",  # inside the pod; the Service is the way in
    http_port: int = HTTP_PORT,
    grpc_port: int = GRPC_PORT,
    cache_dir: str = MODEL_CACHE,
    threads: int | None = None,
    artifact: CompressionSummary | None = None,
    revision: str = "",
    max_connection_age: float = 0.0,
) -> list[str]:
    """`onnxship serve`'s arguments for one revision in one environment, in a pod or (with
    the keyword arguments: its address, ports, cache folder) as a process of `onnxship up`.

    ``env``: the spec's environment, or the revision's record of it (a rollback serves a
    revision the spec no longer names). ``model_version``: the revision's own label.
    ``threads``: None means the spec's ``serving.threads``. ``artifact``: what status
    recorded of the artifact (the record's own when ``env`` is one); a causal LM gets the
    generation limits of ``serving.generation``. ``revision``: named on every answer, and
    ``max_connection_age``: clients reconnect that often (a Service may send users straight
    to these pods and then move to the router, plan/front.py).
    """
    if artifact is None and isinstance(env, EnvironmentStatus):
        artifact = env.compression
    b = spec.serving.batching
    args = [
        "serve",
        *store_args(store, "--store-endpoint", "--store-region"),
        "--cache-key",
        cache_key,
        "--name",
        owner.name,
        "--model-version",
        model_version or spec.model.version or "1",
        "--host",
        host,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--execution-provider",
        str(env.execution_provider),
        "--max-batch-size",
        str(b.max_batch_size),
        "--max-batch-delay-ms",
        str(b.max_delay_ms),
        "--cache-dir",
        cache_dir,
    ]
    if max_connection_age:
        args += ["--max-connection-age", f"{max_connection_age:g}"]
    if revision:
        args += ["--revision", revision]
    args += ["--workers", str(serve_workers(spec, env, artifact))]
    threads = spec.serving.threads if threads is None else threads
    if threads:
        args += ["--threads", str(threads)]
    if spec.serving.instances > 1:
        args += ["--instances", str(spec.serving.instances)]
    if is_causal_lm(spec, artifact):
        g = spec.serving.generation
        args += ["--max-sequences", str(g.max_sequences), "--max-context", str(g.max_context)]
    return args


def revision_deployment(
    owner: Owner,
    spec: ModelDeploymentSpec,
    revision: str,
    env: Environment,
    cache_key: str,
    replicas: int,
    store: StoreRef,
    runtime: Runtime,
    model_version: str = "",
    image: str = "",
    artifact: CompressionSummary | None = None,
) -> dict[str, Any]:
    """The Deployment that serves ``revision`` in ``env`` from the artifact ``cache_key``.

    ``artifact``: what status recorded of that artifact (kind, bytes): a causal LM gets the
    generation arguments and its memory sized from its bytes; every model a startup probe
    long enough for its size.

    ``model_version`` and ``image`` are the revision's own, as recorded in status: building
    an older revision (the stable one during a canary, a rollback) from the current spec's
    would restart its pods with another version label or even another image.
    """
    pod_labels = {**labels(owner, "model", revision, env.name), **runtime.extra_labels}
    probe = {"httpGet": {"port": "http"}, "periodSeconds": STARTUP_PERIOD_S}
    container: dict[str, Any] = {
        "name": "model",
        "image": image or spec.serving.image or runtime.image,
        "imagePullPolicy": runtime.image_pull_policy,
        "args": serve_args(
            owner,
            spec,
            env,
            cache_key,
            store,
            model_version,
            artifact=artifact,
            revision=revision,
            max_connection_age=runtime.connection_max_age,
        ),
        "env": store_env(store),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        # Large models take minutes to download and load: the startup probe allows it
        # without making liveness slow to notice a hung server later.
        "startupProbe": {
            **probe,
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "failureThreshold": startup_failure_threshold(
                artifact.compressed_bytes if artifact is not None else 0
            ),
        },
        "livenessProbe": {
            **probe,
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "failureThreshold": 3,
        },
        "readinessProbe": {
            **probe,
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "failureThreshold": 2,
        },
        "securityContext": restricted_container_security(),
        "volumeMounts": SCRATCH_MOUNTS,
    }
    if r := pod_resources(spec, env, artifact):
        container["resources"] = r
    pod_spec: dict[str, Any] = {
        "securityContext": restricted_pod_security(),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": scratch_volumes(runtime),
        **placement(env),
    }
    if runtime.service_account:
        pod_spec["serviceAccountName"] = runtime.service_account
    selector = {L_DEPLOYMENT: owner.name, L_REVISION: revision, L_ENVIRONMENT: env.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, workload_name(revision, env.name), pod_labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def revision_service(owner: Owner, revision: str, env: Environment) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            owner, workload_name(revision, env.name), labels(owner, "model", revision, env.name)
        ),
        "spec": {
            "selector": {L_DEPLOYMENT: owner.name, L_REVISION: revision, L_ENVIRONMENT: env.name},
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
            ],
        },
    }


def revision_url(owner: Owner, revision: str, environment: str) -> str:
    return f"http://{workload_name(revision, environment)}.{owner.namespace}.svc:{HTTP_PORT}"


# ------------------------------------------------------------------ traffic


def environment_weights(spec: ModelDeploymentSpec) -> dict[str, int]:
    return {e.name: e.weight for e in spec.serving.environments if e.weight is not None}


def route_table_for(owner: Owner, spec: ModelDeploymentSpec, split: TrafficSplit) -> RouteTable:
    from .traffic import route_table  # local: traffic imports api.routes only

    urls = {
        (rev, env.name): revision_url(owner, rev, env.name)
        for rev in split.revisions()
        for env in spec.serving.effective_environments()
    }
    return route_table(split, urls, environment_weights(spec))


def router_configmap(owner: Owner, table: RouteTable) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, router_name(owner), labels(owner, "router")),
        "data": {"routes.json": json.dumps(table.to_wire(), indent=2, sort_keys=True)},
    }


def router_deployment(
    owner: Owner, runtime: Runtime, replicas: int = 1, resources: Resources | None = None
) -> dict[str, Any]:
    """The builtin router: splits requests by the weights in its ConfigMap, exports metrics.

    The ConfigMap is mounted as a folder (not a subPath) so the kubelet's updates reach the
    running router, which reloads the file when it changes.
    """
    router_labels = {**labels(owner, "router"), **runtime.extra_labels}
    container: dict[str, Any] = {
        "name": "router",
        "image": runtime.image,
        "imagePullPolicy": runtime.image_pull_policy,
        "args": [
            "route",
            "--host",
            "0.0.0.0",
            "--port",
            str(ROUTER_PORT),
            "--routes",
            "/etc/onnxship/routes/routes.json",
            "--workers",
            "0",  # one router process per CPU of the pod's limit (1 without one)
            "--max-connection-age",
            f"{runtime.connection_max_age:g}",  # plan/front.py: clients follow the Service
        ],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "routes", "mountPath": "/etc/onnxship/routes", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if r := resources_of(resources):
        container["resources"] = r
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, router_name(owner), router_labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {L_DEPLOYMENT: owner.name, L_COMPONENT: "router"}},
            "template": {
                "metadata": {
                    "labels": router_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ROUTER_PORT),
                    },
                },
                "spec": {
                    "securityContext": restricted_pod_security(),
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "volumes": [
                        {"name": "routes", "configMap": {"name": router_name(owner)}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def router_service(owner: Owner, selects: str = ROUTER, since: str = "") -> dict[str, Any]:
    """The Service users call, named after the ModelDeployment: it selects the router's pods,
    or (``selects``: a revision's name) that revision's model pods directly while one
    revision serves one environment (plan/front.py). Both name their HTTP port "http".
    ``since``: when it began to select them."""
    if selects == ROUTER:
        selector = {L_DEPLOYMENT: owner.name, L_COMPONENT: "router"}
    else:
        selector = {L_DEPLOYMENT: owner.name, L_COMPONENT: "model", L_REVISION: selects}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            owner, owner.name, labels(owner, "router"), {A_SELECTED_AT: since} if since else None
        ),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def service_selected_at(service: Mapping[str, Any] | None) -> str:
    annotations = ((service or {}).get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(A_SELECTED_AT, ""))


def service_selects(service: Mapping[str, Any] | None) -> str:
    """What a user Service made by ``router_service`` selects: ROUTER, a revision, or ""."""
    selector = ((service or {}).get("spec") or {}).get("selector") or {}
    if selector.get(L_COMPONENT) == ROUTER:
        return ROUTER
    return str(selector.get(L_REVISION, ""))


def endpoint_of(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc"


def http_route(owner: Owner, spec: ModelDeploymentSpec, split: TrafficSplit) -> dict[str, Any]:
    """A Gateway API HTTPRoute whose backendRefs weights carry the split.

    Requests with an ``onnxship-environment`` header go to that environment's revisions; the
    rest are spread over environments by their weights (equal when unset), each environment's
    share split between revisions by the canary weight.
    """
    gateway = spec.rollout.traffic.gateway
    assert gateway is not None, "validated: router gatewayAPI needs gateway"
    envs = spec.serving.effective_environments()
    env_weights = environment_weights(spec) or {e.name: 1 for e in envs}

    def refs(env_names: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for env in env_names:
            for rev, weight in split.weights:
                w = weight * env_weights.get(env, 1) if len(env_names) > 1 else weight
                out.append(
                    {
                        "name": workload_name(rev, env),
                        "port": HTTP_PORT,
                        "weight": w,
                    }
                )
        return out

    rules: list[dict[str, Any]] = []
    if len(envs) > 1:
        for env in envs:
            rules.append(
                {
                    "matches": [
                        {
                            "path": {"type": "PathPrefix", "value": "/"},
                            "headers": [{"name": "onnxship-environment", "value": env.name}],
                        }
                    ],
                    "backendRefs": refs([env.name]),
                }
            )
    rules.append(
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": refs([e.name for e in envs]),
        }
    )
    route_spec: dict[str, Any] = {
        "parentRefs": [
            {
                k: v
                for k, v in {
                    "name": p.name,
                    "namespace": p.namespace,
                    "sectionName": p.section_name,
                }.items()
                if v
            }
            for p in gateway.parent_refs
        ],
        "rules": rules,
    }
    if gateway.hostnames:
        route_spec["hostnames"] = list(gateway.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(owner, owner.name, labels(owner, "route")),
        "spec": route_spec,
    }


def config_hash(obj: Mapping[str, Any]) -> str:
    """A short hash of an object's content, to skip writes that change nothing."""
    return short_hash(json.loads(canonical_json(obj)), 12)
