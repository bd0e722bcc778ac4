"""One reconcile of one ModelDeployment: parse, observe, plan, execute, patch.

Level-based and idempotent: it reads the world, asks ``plan.rollout.step`` what should be
true, makes it so, and writes status once (skipped when nothing changed). It keeps no state
of its own between passes that a restart would lose, beyond a pending analysis verdict.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from onnxship.api import (
    ConditionType,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Reason,
    RevisionStatus,
    SpecError,
    parse_spec,
)
from onnxship.plan import workloads as w
from onnxship.plan.actions import (
    Decision,
    DeleteRevision,
    EmitEvent,
    EnsureRevision,
    ScaleRevision,
    SetTraffic,
)
from onnxship.plan.analysis import Verdict, evaluate
from onnxship.plan.compression_jobs import (
    ArtifactView,
    JobObservation,
    JobPhase,
    artifact_view,
    job_phase,
    revision_record,
)
from onnxship.plan.conditions import find_condition, set_condition
from onnxship.plan.front import FrontPlan, revision_services_wanted
from onnxship.plan.observed import (
    ArtifactState,
    DesiredRevision,
    FrontSeen,
    Observed,
    RevisionPods,
)
from onnxship.plan.revision import revision_name
from onnxship.plan.rollout import step
from onnxship.plan.times import parse_time
from onnxship.plan.traffic import TrafficSplit, split_of

from .commands import command_of
from .kube import KubeError
from .patching import merge_patch
from .ports import Wiring

log = logging.getLogger(__name__)

# (type, reason, message) -> posts a Kubernetes Event about the ModelDeployment
Emit = Callable[[str, str, str], None]


@dataclass(frozen=True)
class Outcome:
    requeue_after: float
    decision: Decision | None = None
    status_patched: bool = False


def reconcile(wiring: Wiring, namespace: str, name: str, emit: Emit) -> Outcome | None:
    """Bring one ModelDeployment one step closer to what its spec asks for.

    The object comes from the informers' cache, which holds the answer to the previous
    pass's status patch (written through) and whatever newer version the watches (ours and
    kopf's, fed in by the handlers) saw since: a pass never acts on a status older than the
    one the previous pass wrote, and at rest it sends no request. None when the object is gone.
    """
    body = wiring.kube.current("ModelDeployment", namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    owner = w.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))
    generation = int(meta.get("generation", 0))
    status = _status_of(body)
    now = wiring.clock()
    timing = wiring.settings.timing

    try:
        spec = parse_spec(body.get("spec", {}))
    except SpecError as exc:
        _patch_status(wiring, owner, body, _invalid(status, generation, exc, now), emit)
        return Outcome(requeue_after=timing.resync_seconds * 12)

    store = _store_ref(wiring, spec)
    runtime = _runtime(wiring)
    image = spec.serving.image or runtime.image
    desired_name = revision_name(owner.name, spec, spec.model.sha256, image)

    desired = _observe_artifacts(
        wiring, owner, spec, status, desired_name, store, runtime, now, generation, image
    )
    pods, counts = _observe_pods(wiring, owner)
    observed = Observed(
        desired=desired,
        generation=generation,
        revisions=pods,
        traffic=_observe_traffic(wiring, owner, spec) if status.stable_revision else None,
        routed=_observe_routed(wiring, owner, spec, pods),
        front=_observe_front(wiring, owner, spec),
        verdict=_pending_verdict(wiring, owner),
        command=command_of(meta.get("annotations") or {}),
    )
    decision = step(spec, status, observed, now)
    slot = ("refused", _key(owner))
    try:
        _execute(wiring, owner, spec, decision, store, runtime, emit)
    except Refused as refused:
        # The decision's status would claim what the refused write did not do: keep the last
        # status and say what was refused. Retried after 1, 2, 4... seconds up to the resync,
        # as a controller's work queue backs off: a raised quota or a fixed policy is picked
        # up soon, a thousand refused objects do not hammer the API server.
        tries = wiring.memory[slot] = wiring.memory.get(slot, 0) + 1
        _patch_status(wiring, owner, body, _refused(status, refused, generation, now, emit), emit)
        return Outcome(requeue_after=min(float(2 ** (tries - 1)), timing.resync_seconds))
    wiring.memory.pop(slot, None)
    if any(isinstance(a, _RESIZING) for a in decision.actions):
        # Status shows the replicas this pass asked for (a read of the cache), not those seen
        # before: else the next pass writes status again only to say so.
        _, counts = _observe_pods(wiring, owner)
    _measure_if_due(wiring, owner, spec, decision, now)
    new_status = with_readiness(decision.status, counts).model_copy(
        update={"endpoint": _endpoint(owner, spec)}
    )
    patched = _patch_status(wiring, owner, body, new_status, emit)
    requeue = (
        decision.requeue_after if decision.requeue_after is not None else timing.resync_seconds
    )
    return Outcome(
        requeue_after=max(timing.min_requeue_seconds, min(requeue, timing.resync_seconds)),
        decision=decision,
        status_patched=patched,
    )


# Actions after which a revision's replicas differ from those observed before the pass.
_RESIZING = (EnsureRevision, ScaleRevision, DeleteRevision)


# ---------------------------------------------------------------------- observe


def _status_of(body: Mapping[str, Any]) -> ModelDeploymentStatus:
    raw = {k: v for k, v in (body.get("status") or {}).items() if k in _STATUS_FIELDS}
    try:
        return ModelDeploymentStatus.model_validate(raw)
    except ValueError:
        log.warning(
            "status of %s is unreadable; starting from an empty one", body["metadata"]["name"]
        )
        return ModelDeploymentStatus()


_STATUS_FIELDS = {f.alias or n for n, f in ModelDeploymentStatus.model_fields.items()}


def _store_ref(wiring: Wiring, spec: ModelDeploymentSpec) -> w.StoreRef:
    a, d = spec.artifacts, wiring.settings.store
    if a.uri:
        return w.StoreRef(a.uri, a.endpoint, a.region, a.credentials_secret)
    return w.StoreRef(d.uri, d.endpoint, d.region, d.credentials_secret)


def _runtime(wiring: Wiring) -> w.Runtime:
    s = wiring.settings.workloads
    return w.Runtime(
        image=s.runtime_image,
        image_pull_policy=s.image_pull_policy,
        service_account=s.service_account,
        job_active_deadline_seconds=s.job_active_deadline_seconds,
        job_backoff_limit=s.job_backoff_limit,
        job_ttl_seconds=s.job_ttl_seconds,
        connection_max_age=s.connection_max_age_seconds,
    )


# A store's credentials Secret, read again after this long: a rotated key is picked up within
# it, and 1,000 ModelDeployments of one team applied at once read it once, not 1,000 times.
SECRET_TTL_S = 30.0


def _secret_data(wiring: Wiring, namespace: str, name: str) -> dict[str, str]:
    if not name:
        return {}
    slot = ("secret", f"{namespace}/{name}")
    kept = wiring.memory.get(slot)
    if kept is not None and time.monotonic() - kept[0] < SECRET_TTL_S:
        return dict(kept[1])
    secret = wiring.kube.get("Secret", namespace, name) or {}
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    if secret:  # a missing Secret is looked for again at once: it may be made any time
        wiring.memory[slot] = (time.monotonic(), data)
    return dict(data)


def _observe_artifacts(
    wiring: Wiring,
    owner: w.Owner,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    name: str,
    store: w.StoreRef,
    runtime: w.Runtime,
    now: datetime,
    generation: int,
    image: str,
) -> DesiredRevision:
    """Where each environment's artifact of the desired revision stands; start missing Jobs."""
    recorded = next((r for r in status.revisions if r.name == name), None)
    known = {e.name: e for e in recorded.environments} if recorded else {}
    views: dict[str, ArtifactView] = {}
    credentials: dict[str, str] | None = None
    for env in spec.serving.effective_environments():
        in_store = None
        job = JobObservation(JobPhase.absent)
        if env.name not in known:
            # Our own Job first: once it ran, its result (not the store's copy) is the record.
            job = _observe_job(wiring, owner, w.job_name(name, env.name))
        if (
            job.phase == JobPhase.absent
            and env.name not in known
            and spec.model.sha256
            and store.uri
        ):
            if credentials is None:
                credentials = _secret_data(wiring, owner.namespace, store.credentials_secret)
            try:
                in_store = wiring.artifacts.find(
                    store,
                    credentials,
                    spec.model.sha256,
                    spec.compression_for(env),
                    str(env.execution_provider),
                    kind=str(spec.model.kind or ""),
                    own_prompts=bool(spec.model.sample_inputs),
                )
            except Exception as exc:  # the Job reports store problems precisely; go on
                log.info("store lookup for %s/%s failed: %s", name, env.name, exc)
        view = artifact_view(
            env.name, str(env.execution_provider), known.get(env.name), in_store, job
        )
        if view.create_job and (settled := _settled_failure(status, generation)) is not None:
            view = settled  # the failed Job is gone (TTL); the same spec would fail again
        if view.create_job:  # we just saw there is none: create, no read-before-write
            _create(wiring, w.compress_job(owner, spec, name, env, store, runtime))
        views[env.name] = view

    failed = [v for v in views.values() if v.state == ArtifactState.failed]
    envs = [v.environment for v in views.values() if v.environment is not None]
    record = None
    if len(envs) == len(views):
        record = recorded or revision_record(
            name, spec, envs, now, model_sha256=spec.model.sha256, image=image
        )
    return DesiredRevision(
        name=name,
        artifacts={k: v.state for k, v in views.items()},
        record=record,
        failure_reason=failed[0].reason if failed else "",
        failure_message="; ".join(v.message for v in failed),
        reused=bool(envs) and all(e.compression and e.compression.cache_hit for e in envs),
    )


# Failures that a new Job with the same spec would only repeat.
_PERMANENT = {Reason.invalid_model, Reason.accuracy_gate_failed, Reason.invalid_spec}


def _settled_failure(status: ModelDeploymentStatus, generation: int) -> ArtifactView | None:
    degraded = find_condition(status.conditions, ConditionType.degraded)
    if (
        degraded is not None
        and degraded.status == "True"
        and degraded.reason in _PERMANENT
        and degraded.observed_generation == generation
    ):
        return ArtifactView(ArtifactState.failed, reason=degraded.reason, message=degraded.message)
    return None


def _create(wiring: Wiring, obj: dict[str, Any]) -> None:
    try:
        wiring.kube.create(obj)
    except KubeError as exc:
        if exc.status != 409:  # made by an earlier pass that died before writing status
            raise


def _observe_job(wiring: Wiring, owner: w.Owner, name: str) -> JobObservation:
    job = wiring.kube.get("Job", owner.namespace, name)
    phase = job_phase(job)
    if phase in (JobPhase.absent, JobPhase.running):
        return JobObservation(phase)
    # The last Pod that ran tells why: its exit code and termination message.
    pods = wiring.kube.list("Pod", owner.namespace, {"job-name": name})
    terminated = []
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []):
            t = (cs.get("state") or {}).get("terminated")
            if t:
                terminated.append((t.get("finishedAt") or "", t))
    if not terminated:
        return JobObservation(phase)
    _, last = max(terminated, key=lambda x: x[0])
    return JobObservation(phase, exit_code=last.get("exitCode"), message=last.get("message", ""))


# (revision, environment) -> (ready replicas, replicas asked for)
PodCounts = dict[tuple[str, str], tuple[int, int]]


def _observe_pods(wiring: Wiring, owner: w.Owner) -> tuple[dict[str, RevisionPods], PodCounts]:
    selector = {w.L_DEPLOYMENT: owner.name, w.L_COMPONENT: "model"}
    replicas: dict[str, dict[str, int]] = {}
    ready: dict[str, bool] = {}
    serving: dict[str, bool] = {}  # at least one ready pod in each environment
    counts: PodCounts = {}
    for d in wiring.kube.list("Deployment", owner.namespace, selector):
        labels = d["metadata"].get("labels", {})
        rev, env = labels.get(w.L_REVISION, ""), labels.get(w.L_ENVIRONMENT, "")
        want = int(d.get("spec", {}).get("replicas", 0))
        st = d.get("status", {})
        have = int(st.get("readyReplicas", 0))
        replicas.setdefault(rev, {})[env] = want
        counts[(rev, env)] = (have, want)
        ok = want == 0 or (have >= want and int(st.get("updatedReplicas", want)) >= want)
        ready[rev] = ready.get(rev, True) and ok
        serving[rev] = serving.get(rev, True) and (want == 0 or have > 0)
    pods = {
        rev: RevisionPods(replicas=envs, ready=ready[rev], serving=serving[rev])
        for rev, envs in replicas.items()
    }
    return pods, counts


def with_readiness(status: ModelDeploymentStatus, counts: PodCounts) -> ModelDeploymentStatus:
    """Each revision's environments with the replicas ready in them now (status shows it)."""
    revisions = []
    for rev in status.revisions:
        envs = []
        for env in rev.environments:
            have, want = counts.get((rev.name, env.name), (0, 0))
            envs.append(env.model_copy(update={"ready_replicas": have, "replicas": want}))
        revisions.append(rev.model_copy(update={"environments": envs}))
    return status.model_copy(update={"revisions": revisions})


def _observe_traffic(
    wiring: Wiring, owner: w.Owner, spec: ModelDeploymentSpec
) -> TrafficSplit | None:
    if spec.rollout.traffic.router != "builtin":
        return None
    from onnxship.api.routes import RouteTable

    cm = wiring.kube.get("ConfigMap", owner.namespace, w.router_name(owner))
    raw = (cm or {}).get("data", {}).get("routes.json")
    if not raw:
        return None
    try:
        return split_of(RouteTable.model_validate_json(raw))
    except ValueError:
        return None


def _observe_front(wiring: Wiring, owner: w.Owner, spec: ModelDeploymentSpec) -> FrontSeen | None:
    if spec.rollout.traffic.router != "builtin":
        return None
    service = wiring.kube.get("Service", owner.namespace, owner.name)
    router = wiring.kube.get("Deployment", owner.namespace, w.router_name(owner))
    ready = False
    if router is not None:
        want = int(router.get("spec", {}).get("replicas", 0))
        st = router.get("status", {})
        ready = (
            want > 0
            and int(st.get("readyReplicas", 0)) >= want
            and int(st.get("updatedReplicas", 0)) >= want
        )
    return FrontSeen(
        w.service_selects(service),
        router=router is not None,
        router_ready=ready,
        since=w.service_selected_at(service),
        connection_max_age=wiring.settings.workloads.connection_max_age_seconds,
    )


def _observe_routed(
    wiring: Wiring, owner: w.Owner, spec: ModelDeploymentSpec, pods: Mapping[str, Any]
) -> frozenset[str] | None:
    """Only while two revisions run (a canary, one being removed): a revision is removed
    once no router still sends it requests."""
    if wiring.routers is None or spec.rollout.traffic.router != "builtin" or len(pods) < 2:
        return None
    return wiring.routers.routed(owner)


def _key(owner: w.Owner) -> str:
    return f"{owner.namespace}/{owner.name}"


def _pending_verdict(wiring: Wiring, owner: w.Owner) -> Verdict | None:
    verdict: Verdict | None = wiring.memory.get(("verdict", _key(owner)))
    return verdict


def _measure_if_due(
    wiring: Wiring, owner: w.Owner, spec: ModelDeploymentSpec, decision: Decision, now: datetime
) -> None:
    """Measure the canary once per analysis interval; the verdict feeds the next pass."""
    request = decision.analysis
    slot = ("verdict", _key(owner))
    if request is None:
        wiring.memory.pop(slot, None)
        return
    last = wiring.memory.get(slot)
    last_at = last.measured_at if last is not None and last.revision == request.revision else None
    if last_at is None:
        analysis = decision.status.analysis
        last_at = parse_time(analysis.measured_at) if analysis and analysis.measured_at else None
    if last_at is not None and (now - last_at).total_seconds() < request.interval_seconds:
        return
    measurements = wiring.metrics.measure(owner, spec, request, now)
    if measurements is None:
        return
    wiring.memory[slot] = evaluate(
        spec.rollout.analysis, measurements, now, request.mirroring, request.serving
    )


# ---------------------------------------------------------------------- execute


def _record_of(
    status: ModelDeploymentStatus, record: RevisionStatus | None, revision: str
) -> RevisionStatus | None:
    if record is not None and record.name == revision:
        return record
    return next((r for r in status.revisions if r.name == revision), None)


class Refused(Exception):
    """The API server refused a write of this pass: a quota, an admission policy, a field it
    rejects, no ClusterIP left. Not a conflict (409), which the next pass resolves alone."""

    def __init__(self, what: str, error: KubeError) -> None:
        super().__init__(f"{what}: {error}")
        self.what, self.error = what, error


def _execute(
    wiring: Wiring,
    owner: w.Owner,
    spec: ModelDeploymentSpec,
    decision: Decision,
    store: w.StoreRef,
    runtime: w.Runtime,
    emit: Emit,
) -> None:
    """Carry out the decision's actions in order; raises Refused naming the step whose write
    the API server refused."""
    kube = wiring.kube
    envs = {e.name: e for e in spec.serving.effective_environments()}
    for action in decision.actions:
        if isinstance(action, EmitEvent):
            emit(action.type, action.reason, action.message)
        else:
            with _refused_as(_describe(action)):
                _act(wiring, owner, spec, decision, action, envs, store, runtime)
    # The Services of the revisions traffic can reach, re-applied every pass (nothing is sent
    # when unchanged): one lost (an operator killed before the Service-first order, or deleted
    # by hand) would make the router send to a name that does not resolve.
    if revision_services_wanted(spec, decision.front):
        for revision in {decision.status.stable_revision, decision.status.canary_revision} - {""}:
            for env in envs.values():
                service = w.revision_service(owner, revision, env)
                with _refused_as(f"applying Service {service['metadata']['name']}"):
                    kube.apply(service)
    if decision.front is not None:
        _place_front(wiring, owner, decision.front, runtime)


@contextmanager
def _refused_as(what: str) -> Iterator[None]:
    """A write the API server refuses, as Refused naming ``what``; a conflict stays a
    KubeError (the next pass resolves it)."""
    try:
        yield
    except KubeError as exc:
        if exc.status == 409:
            raise
        raise Refused(what, exc) from None


def _describe(action: object) -> str:
    if isinstance(action, EnsureRevision):
        return f"creating revision {action.revision} (its Service and Deployment)"
    if isinstance(action, ScaleRevision):
        return f"scaling revision {action.revision}"
    if isinstance(action, DeleteRevision):
        return f"deleting revision {action.revision}"
    if isinstance(action, SetTraffic):
        return "writing the traffic split"
    return type(action).__name__


def _act(
    wiring: Wiring,
    owner: w.Owner,
    spec: ModelDeploymentSpec,
    decision: Decision,
    action: object,
    envs: Mapping[str, Any],
    store: w.StoreRef,
    runtime: w.Runtime,
) -> None:
    kube = wiring.kube
    if isinstance(action, EnsureRevision):
        rec = _record_of(decision.status, action.record, action.revision)
        keys = {e.name: e.cache_key for e in rec.environments} if rec else {}
        artifacts = {e.name: e.compression for e in rec.environments} if rec else {}
        for env_name, replicas in action.replicas.items():
            env = envs.get(env_name)
            key = keys.get(env_name)
            if env is None or not key:
                log.warning(
                    "revision %s has no artifact for environment %s", action.revision, env_name
                )
                continue
            # The Service first: the Deployment's existence is what tells later passes
            # that the revision is there, so a crash between the two must not leave a
            # Deployment without its Service.
            if revision_services_wanted(spec, decision.front):
                kube.apply(w.revision_service(owner, action.revision, env))
            kube.apply(
                w.revision_deployment(
                    owner,
                    spec,
                    action.revision,
                    env,
                    key,
                    replicas,
                    store,
                    runtime,
                    model_version=rec.model_version if rec else "",
                    image=rec.image if rec else "",
                    artifact=artifacts.get(env_name),
                )
            )
    elif isinstance(action, ScaleRevision):
        for env_name, replicas in action.replicas.items():
            name = w.workload_name(action.revision, env_name)
            if kube.get("Deployment", owner.namespace, name) is not None:
                kube.patch("Deployment", owner.namespace, name, {"spec": {"replicas": replicas}})
    elif isinstance(action, DeleteRevision):
        _delete_revision(wiring, owner, action.revision)
    elif isinstance(action, SetTraffic):
        _set_traffic(wiring, owner, spec, action.split)


def _delete_revision(wiring: Wiring, owner: w.Owner, revision: str) -> None:
    selector = {w.L_DEPLOYMENT: owner.name, w.L_REVISION: revision}
    # The Deployment last: its existence is what makes the plan ask for this deletion, so a
    # crash half-way leaves it there and the next pass deletes what is left.
    for kind in ("Service", "Deployment"):
        for obj in wiring.kube.list(kind, owner.namespace, selector):
            wiring.kube.delete(kind, owner.namespace, obj["metadata"]["name"])


def _place_front(wiring: Wiring, owner: w.Owner, front: FrontPlan, runtime: w.Runtime) -> None:
    """The router (when it runs) before the Service that may select it, and its removal after
    the Service selects something else. Re-applied every pass (nothing is sent when nothing
    changed), so a router or Service deleted by hand comes back."""
    kube, name = wiring.kube, w.router_name(owner)
    if front.router:
        with _refused_as(f"applying the router {name}"):
            kube.apply(
                w.router_deployment(
                    owner, runtime, replicas=wiring.settings.workloads.router_replicas
                )
            )
    with _refused_as(f"applying the Service {owner.name}"):
        kube.apply(w.router_service(owner, front.selects, front.since))
    if not front.router:
        with _refused_as(f"removing the router {name}"):
            for kind in ("Deployment", "ConfigMap"):
                if kube.get(kind, owner.namespace, name) is not None:
                    kube.delete(kind, owner.namespace, name)
            # ... and the revisions' Services only it called.
            selector = {w.L_DEPLOYMENT: owner.name, w.L_COMPONENT: "model"}
            for service in kube.list("Service", owner.namespace, selector):
                kube.delete("Service", owner.namespace, service["metadata"]["name"])


def _set_traffic(
    wiring: Wiring,
    owner: w.Owner,
    spec: ModelDeploymentSpec,
    split: TrafficSplit,
) -> None:
    if not split.weights:
        return
    if spec.rollout.traffic.router == "builtin":
        # The router's Deployment comes after, with the front (_place_front): it mounts this.
        wiring.kube.apply(w.router_configmap(owner, w.route_table_for(owner, spec, split)))
    else:
        wiring.kube.apply(w.http_route(owner, spec, split))


def _endpoint(owner: w.Owner, spec: ModelDeploymentSpec) -> str:
    return w.endpoint_of(owner) if spec.rollout.traffic.router == "builtin" else ""


# ---------------------------------------------------------------------- status


def _invalid(
    status: ModelDeploymentStatus, generation: int, exc: SpecError, now: datetime
) -> ModelDeploymentStatus:
    message = "; ".join(exc.problems)
    conditions, _ = set_condition(
        status.conditions,
        ConditionType.degraded,
        "True",
        Reason.invalid_spec,
        message,
        now,
        generation,
    )
    return status.model_copy(
        update={
            "phase": Phase.degraded,
            "message": f"invalid spec: {message}",
            "conditions": conditions,
            "observed_generation": generation,
        }
    )


def _refused(
    status: ModelDeploymentStatus, refused: Refused, generation: int, now: datetime, emit: Emit
) -> ModelDeploymentStatus:
    message = f"{refused.what}: the API server refused it ({refused.error}); retrying"
    conditions, _ = set_condition(
        status.conditions,
        ConditionType.degraded,
        "True",
        Reason.kubernetes_refused,
        message,
        now,
        generation,
    )
    if conditions != status.conditions:  # once per refusal, not once per retry
        emit("Warning", Reason.kubernetes_refused, message)
    return status.model_copy(
        update={"phase": Phase.degraded, "message": message, "conditions": conditions}
    )


def _patch_status(
    wiring: Wiring, owner: w.Owner, body: Mapping[str, Any], new: ModelDeploymentStatus, emit: Emit
) -> bool:
    old = dict(body.get("status") or {})
    ours = {k: v for k, v in old.items() if k in _STATUS_FIELDS}
    patch = merge_patch(ours, new.to_wire())
    if not patch:
        return False
    try:
        wiring.kube.patch(
            "ModelDeployment", owner.namespace, owner.name, {"status": patch}, subresource="status"
        )
    except KubeError as exc:
        if exc.status == 404:  # deleted meanwhile
            return False
        raise
    if new.phase != ours.get("phase") and new.phase in (Phase.degraded,) and new.message:
        log.warning("%s is %s: %s", owner.name, new.phase, new.message)
    return True


def delete_children(wiring: Wiring, owner: w.Owner) -> int:
    """Best-effort clean-up on deletion (ownerReferences let the GC do it in a real cluster)."""
    removed = 0
    selector = {w.L_DEPLOYMENT: owner.name}
    for kind in ("Deployment", "Service", "ConfigMap", "Job"):
        # From the API server: a child made moments ago whose event has not reached the
        # cache yet would otherwise outlive its owner (no garbage collector in a test cluster).
        for obj in wiring.kube.list(kind, owner.namespace, selector, fresh=True):
            removed += wiring.kube.delete(kind, owner.namespace, obj["metadata"]["name"])
    return removed


__all__ = ["Emit", "Outcome", "delete_children", "reconcile"]
