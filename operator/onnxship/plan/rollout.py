"""The canary rollout state machine: ``step(spec, status, observed, now) -> Decision``.

Pure: the time, the metrics verdict and the user's commands are arguments; the result is the
next status and the effects that make the world match it. All state lives in the status, so
a shell can die after any action and resume from the last status it wrote. Unchanged inputs
give no actions and an equal status.

The story of one revision:

- the spec asks for a revision (``observed.desired``); until its artifacts are in the store
  the phase is Compressing and a canary of another revision in flight is abandoned;
- the first revision ever skips the steps (there is nothing to compare it with) and becomes
  stable once its pods are ready;
- any later one is a canary: once its pods are ready it walks ``spec.rollout.steps``
  (setWeight, pause, mirror, analysis) while background analysis counts verdicts; more than
  ``failureLimit`` failed checks abort it (weight 0, Degraded, stable keeps serving);
- after the last step the canary becomes stable and the old stable's workload is removed;
  its record stays in ``status.revisions`` (trimmed to ``revisionHistoryLimit``) so that
  ``rollback`` can bring it back from its stored artifact, without recompressing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from onnxship.api import (
    AnalysisStatus,
    ConditionType,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Reason,
    RevisionStatus,
    Step,
    parse_duration,
)

from .actions import (
    Action,
    Decision,
    DeleteRevision,
    EmitEvent,
    EnsureRevision,
    ScaleRevision,
    SetTraffic,
)
from .analysis import AnalysisRequest, Result, Verdict, agreement_value, default_metric
from .conditions import find_condition, set_condition
from .front import FrontPlan, plan_front, selected_revision, settle_seconds
from .observed import ROUTER, Command, CommandKind, Observed
from .times import format_time, parse_time, seconds_between
from .traffic import TrafficSplit

__all__ = ["Decision", "Observed", "describe_step", "replicas_for", "split_for", "step"]

TargetState = Literal["ready", "pending", "failed"]


def replicas_for(spec: ModelDeploymentSpec) -> dict[str, int]:
    """Replicas per environment, as the spec asks for them."""
    base = spec.serving.replicas
    return {
        e.name: e.replicas if e.replicas is not None else base
        for e in spec.serving.effective_environments()
    }


def describe_step(s: Step) -> str:
    if s.set_weight is not None:
        return f"setWeight {s.set_weight}"
    if s.pause is not None:
        return f"pause {s.pause.duration}" if s.pause.duration else "pause until promoted"
    if s.mirror is not None:
        return f"mirror {s.mirror.percent}% for {s.mirror.duration}"
    assert s.analysis is not None
    return f"analysis for {s.analysis.duration}"


def split_for(status: ModelDeploymentStatus) -> TrafficSplit:
    """The traffic split a status stands for.

    No traffic before the first revision is stable; a canary appears in the split only
    when it takes a share or copies of requests, so a router never needs the URL of a
    canary that is not up yet.
    """
    stable, canary = status.stable_revision, status.canary_revision
    if not stable:
        return TrafficSplit()
    active = canary and not status.aborted
    weight = status.canary_weight if active else 0
    mirror = status.mirror_percent if active else 0
    if not active or (weight == 0 and mirror == 0):
        return TrafficSplit(weights=((stable, 100),))
    return TrafficSplit(
        weights=((stable, 100 - weight), (canary, weight)),
        mirror_revision=canary if mirror else "",
        mirror_percent=mirror,
    )


def step(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    now: datetime,
) -> Decision:
    """The next status and the actions that make the world match it."""
    run = _Run(spec, status, observed, now)
    run.handle_command(observed.command)
    target, state = run.resolve_target()
    if state == "ready":
        if target == run.stable:
            if run.canary:
                run.drop_canary(f"the spec asks for the stable revision {target} again")
        else:
            if run.canary and run.canary != target:
                run.drop_canary(f"revision {target} replaces it")
            if run.canary != target:
                run.start_canary(target)
            run.run_canary()
    elif run.canary and run.canary != target:
        run.drop_canary(f"revision {target} replaces it")
    run.trim_history(target if state == "ready" else "")
    new_status = run.finish(target, state)
    seen = observed.front
    front = None
    if seen is not None:
        front = plan_front(spec, new_status, seen, observed.revisions, now)
        if front is not None and front.recheck_in is not None:
            run.due_in(front.recheck_in)
    actions = run.effects(new_status, front)
    analysis = run.analysis_request(new_status)  # before requeue_after: it adds the interval
    return Decision(
        status=new_status,
        actions=actions,
        analysis=analysis,
        requeue_after=min(run.wake) if run.wake else None,
        front=front,
    )


class _Run:
    """One pass of the machine: a mutable working copy of the status, and what it decided."""

    def __init__(
        self,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        observed: Observed,
        now: datetime,
    ) -> None:
        self.spec, self.original, self.observed, self.now = spec, status, observed, now
        self.steps = spec.rollout.steps
        self.stable = status.stable_revision
        self.canary = status.canary_revision
        self.weight = status.canary_weight
        self.mirror = status.mirror_percent
        self.step_idx = status.current_step
        self.step_started = status.step_started_at
        self.canary_started = status.canary_started_at
        self.unavailable_since = status.unavailable_since
        self.paused = status.paused
        self.aborted = status.aborted
        self.analysis = status.analysis
        self.revisions = list(status.revisions)
        self.last_command = status.last_command
        self.pinned = status.pinned_revision
        self.pinned_over = status.pinned_over
        self.events: list[EmitEvent] = []
        self.degraded: tuple[str, str] | None = None  # (reason, message) of an abort in this pass
        self.canary_down = False  # the canary was ready once and has no ready pod now
        self.router_pending = False  # the canary is ready, the router it needs is not yet
        self.wake: list[float] = []  # seconds from now at which something falls due

    # ------------------------------------------------------------ helpers

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(EmitEvent(str(reason), message, "Warning" if warning else "Normal"))

    def due_in(self, seconds: float) -> None:
        self.wake.append(max(0.0, seconds))

    def recorded(self) -> set[str]:
        return {r.name for r in self.revisions}

    def reset_canary_progress(self) -> None:
        self.weight = self.mirror = 0
        self.step_idx = 0
        self.step_started = self.canary_started = self.unavailable_since = ""
        self.paused = self.aborted = False
        self.analysis = None

    # ------------------------------------------------------------ commands

    def handle_command(self, cmd: Command | None) -> None:
        if cmd is None or not cmd.id or cmd.id == self.last_command:
            return
        self.last_command = cmd.id
        kind = CommandKind(cmd.kind)
        if kind == CommandKind.rollback:
            self.rollback(cmd.revision)
            return
        if not self.canary:
            self.reject(kind, "there is no canary")
        elif kind == CommandKind.promote:
            self.aborted = self.paused = False
            self.step_idx = len(self.steps)
            self.event(Reason.promoted, f"{self.canary} promoted: going to 100%")
        elif kind == CommandKind.resume:
            if not self.paused or self.aborted:
                self.reject(kind, f"{self.canary} is not paused")
            else:
                self.next_step()
        elif kind == CommandKind.abort:
            if self.aborted:
                self.reject(kind, f"{self.canary} is already aborted")
            else:
                self.abort(Reason.aborted, f"{self.canary} aborted by the user")
        elif kind == CommandKind.retry:
            if not self.aborted:
                self.reject(kind, f"{self.canary} is not aborted")
            else:
                canary = self.canary
                self.canary = ""
                self.reset_canary_progress()
                self.start_canary(canary, retry=True)

    def reject(self, kind: CommandKind, why: str) -> None:
        self.event(Reason.command_rejected, f"{kind.value} ignored: {why}", warning=True)

    def rollback(self, revision: str) -> None:
        if not revision:
            older = [r.name for r in self.revisions if r.name not in (self.stable, self.canary)]
            revision = older[-1] if older else self.stable
        if revision not in self.recorded():
            self.reject(
                CommandKind.rollback,
                f"{revision!r} is not in status.revisions (known: "
                f"{', '.join(sorted(self.recorded())) or 'none'})",
            )
            return
        self.pinned, self.pinned_over = revision, self.observed.desired.name
        self.event(Reason.rolled_back, f"rolling back to {revision} (from its stored artifact)")

    # ------------------------------------------------------------ target

    def resolve_target(self) -> tuple[str, TargetState]:
        desired = self.observed.desired
        if self.pinned and self.pinned_over != desired.name:
            # The spec moved on since the rollback: the new spec wins.
            self.pinned = self.pinned_over = ""
        target = self.pinned or desired.name
        if target == desired.name and desired.ready:
            self.record(desired.record or RevisionStatus(name=desired.name))
            return target, "ready"
        if target in self.recorded():
            # Its artifact was published before: roll out (or back) without recompressing.
            return target, "ready"
        if desired.failed:
            return target, "failed"
        return target, "pending"

    def record(self, rec: RevisionStatus) -> None:
        name = self.observed.desired.name
        existing = next((r for r in self.revisions if r.name == name), None)
        created = (existing.created_at if existing else "") or rec.created_at
        created = created or format_time(self.now)
        rec = rec.model_copy(update={"name": name, "created_at": created})
        if existing is None:
            self.revisions.append(rec)
        elif existing != rec:
            self.revisions = [rec if r.name == name else r for r in self.revisions]

    def trim_history(self, target: str) -> None:
        keep = {self.stable, self.canary, self.pinned, target} - {""}
        others = [r.name for r in self.revisions if r.name not in keep]
        excess = len(others) - self.spec.revision_history_limit
        if excess > 0:
            drop = set(others[:excess])  # oldest first: records are appended
            self.revisions = [r for r in self.revisions if r.name not in drop]

    # ------------------------------------------------------------ canary lifecycle

    def start_canary(self, target: str, retry: bool = False) -> None:
        self.reset_canary_progress()
        self.canary = target
        self.canary_started = format_time(self.now)
        first = not self.stable
        rolling_back = target == self.pinned
        if first or rolling_back:
            self.step_idx = len(self.steps)  # nothing to compare with, or an emergency
        if first:
            message = f"deploying {target}, the first revision"
        elif rolling_back:
            message = f"rolling back to {target}: going to 100% once its pods are ready"
        else:
            verb = "restarting" if retry else "starting"
            message = f"{verb} canary {target} beside {self.stable} ({len(self.steps)} steps)"
        self.event(Reason.new_revision, message)

    def drop_canary(self, why: str) -> None:
        self.event(Reason.canary_superseded, f"canary {self.canary} abandoned: {why}")
        self.canary = ""
        self.reset_canary_progress()

    def abort(self, reason: str, message: str) -> None:
        self.aborted = True
        self.weight = self.mirror = 0
        self.paused = False
        self.degraded = (str(reason), message)
        serving = f"; {self.stable} keeps serving" if self.stable else ""
        self.event(reason, message + serving, warning=True)

    def run_canary(self) -> None:
        if self.aborted:
            return
        self.count_verdict(self.observed.verdict)
        if self.aborted:
            return
        pods = self.observed.revisions.get(self.canary)
        if pods is None or not pods.ready:
            deadline = self.spec.rollout.progress_deadline
            if not self.step_started:  # never ready yet: the progress deadline runs
                self.within_deadline(
                    self.canary_started, f"{self.canary} had no ready pods within {deadline}"
                )
            elif pods is None or not pods.can_serve:
                # Its pods were ready once and none is now (killed, evicted, crashing): the
                # requests of its share would fail, so the stable takes them until it is back,
                # for the progress deadline at most.
                self.canary_down = True
                self.weight = self.mirror = 0
                self.unavailable_since = self.unavailable_since or format_time(self.now)
                if not self.within_deadline(
                    self.unavailable_since,
                    f"{self.canary} lost its ready pods and had none for {deadline}",
                ):
                    self.canary_down = False
            return  # once ready, a pod that restarts holds the steps, it does not abort
        self.unavailable_since = ""
        if not self.step_started:
            if self.step_idx < len(self.steps) and not self.routing():
                self.wait_for_router()
                return
            self.step_started = format_time(self.now)
        else:
            self.weight = self.weight_before(self.step_idx)  # back after pods were lost
        self.walk_steps()

    def routing(self) -> bool:
        """Every client's requests reach the router (or no builtin router is placed by this
        plan): the Service has selected it for settle_seconds (plan/front.py)."""
        front = self.observed.front
        if front is None:
            return True
        if front.selects != ROUTER:
            if front.router_ready:  # the Service moves to it in this pass
                self.due_in(settle_seconds(front))
            return False
        settle = settle_seconds(front)
        left = settle - seconds_between(front.since, self.now) if front.since else 0.0
        if left > 0:
            self.due_in(left)
        return left <= 0

    def wait_for_router(self) -> None:
        """The canary's steps, and their clocks, start once the Service sends requests to the
        router (plan/front.py), within the progress deadline like the canary's own pods."""
        self.router_pending = True
        self.within_deadline(
            self.canary_started,
            f"the router for canary {self.canary} had no ready pods within "
            f"{self.spec.rollout.progress_deadline}",
        )

    def within_deadline(self, since: str, failure: str) -> bool:
        """Waiting since ``since`` for what the canary needs: due again at the progress
        deadline, and past it the canary is aborted (``failure`` says why). True: in time."""
        deadline = parse_duration(self.spec.rollout.progress_deadline)
        waited = seconds_between(since, self.now)
        if waited < deadline:
            self.due_in(deadline - waited)
            return True
        self.abort(Reason.progress_deadline_exceeded, failure)
        return False

    def weight_before(self, index: int) -> int:
        """The canary's weight once the steps before ``index`` are done."""
        weights = [s.set_weight for s in self.steps[:index] if s.set_weight is not None]
        return weights[-1] if weights else 0

    def count_verdict(self, v: Verdict | None) -> None:
        """Count a new verdict about this canary, once."""
        if v is None or v.revision != self.canary:
            return
        measured = format_time(v.measured_at)
        at = parse_time(measured)
        started = parse_time(self.canary_started)
        last = parse_time(self.analysis.measured_at) if self.analysis else None
        if at is None or (started and at < started) or (last and at <= last):
            return
        previous = self.analysis or AnalysisStatus()
        step_began = parse_time(self.step_started)
        in_step = step_began is not None and at >= step_began
        failed = v.result == Result.failed
        gate = self.spec.rollout.analysis.min_output_agreement
        m = v.measurements
        self.analysis = AnalysisStatus(
            verdict=v.result.value,
            message=v.message,
            failures=previous.failures + int(failed),
            passes=previous.passes + int(v.result == Result.passed and in_step),
            error_rate=m.error_rate,
            latency_p99_ms=m.latency_p99_ms,
            output_agreement=agreement_value(m, gate.metric if gate else default_metric(m)),
            time_to_first_token_p99_ms=m.ttft_p99_ms,
            inter_token_latency_p99_ms=m.itl_p99_ms,
            requests=m.requests,
            measured_at=measured,
        )
        if failed:
            limit = self.spec.rollout.analysis.failure_limit
            failures = self.analysis.failures
            if failures > limit:
                self.abort(
                    Reason.analysis_failed,
                    f"analysis of {self.canary} failed {failures} times "
                    f"(failureLimit {limit}): {v.message}",
                )
            else:
                self.event(
                    Reason.analysis_failed,
                    f"analysis of {self.canary} failed ({failures} of {limit} tolerated): "
                    f"{v.message}",
                    warning=True,
                )

    def next_step(self) -> None:
        if self.step_idx < len(self.steps):
            done = self.steps[self.step_idx]
            self.event(
                Reason.step_advanced,
                f"{self.canary}: step {self.step_idx + 1}/{len(self.steps)} done "
                f"({describe_step(done)})",
            )
        self.step_idx += 1
        self.step_started = format_time(self.now)
        self.mirror = 0
        self.paused = False
        if self.analysis is not None:
            self.analysis = self.analysis.model_copy(update={"passes": 0})

    def walk_steps(self) -> None:
        interval = self.spec.rollout.interval_seconds
        for _ in range(len(self.steps) + 1):
            done = self.step_idx >= len(self.steps)
            next_weight = 100 if done else self.steps[self.step_idx].set_weight
            if self._weight_unwritten(next_weight):
                self.due_in(0)
                return
            if done:
                self.complete()
                return
            s = self.steps[self.step_idx]
            elapsed = seconds_between(self.step_started, self.now)
            if s.set_weight is not None:
                self.weight = s.set_weight
                self.next_step()
                continue
            if s.pause is not None:
                if s.pause.duration is None:
                    if not self.paused:
                        self.paused = True
                        self.event(Reason.paused, f"{self.canary} paused: waiting for promote")
                    return
                length = parse_duration(s.pause.duration)
                if elapsed >= length:
                    self.next_step()
                    continue
                self.due_in(length - elapsed)
                return
            # mirror and analysis steps: a duration, and at least one passing check in it
            if s.mirror is not None:
                self.mirror = s.mirror.percent
                length = parse_duration(s.mirror.duration)
            else:
                assert s.analysis is not None
                length = parse_duration(s.analysis.duration)
            if self.paused:
                return  # inconclusive: waits for a person
            if elapsed < length:
                self.due_in(length - elapsed)
                return
            a = self.analysis
            if a is not None and a.passes > 0 and a.verdict == Result.passed.value:
                self.next_step()
                continue
            if elapsed < length + interval:  # one interval of grace for a late verdict
                self.due_in(length + interval - elapsed)
                return
            self.paused = True
            self.event(
                Reason.analysis_inconclusive,
                f"{self.canary}: step {self.step_idx + 1} ({describe_step(s)}) ended without "
                "a passing analysis (too few requests?); promote, resume or abort",
                warning=True,
            )
            return

    def _weight_unwritten(self, next_weight: int | None) -> bool:
        """One weight per pass, as Argo Rollouts does: a weight set in this pass is written to
        the router before the next one (or completion) replaces it, so every step's traffic is
        served and analysed rather than walked past in memory."""
        changed = self.weight != self.original.canary_weight
        return changed and next_weight is not None and next_weight != self.weight

    def complete(self) -> None:
        old, new = self.stable, self.canary
        self.stable, self.canary = new, ""
        self.reset_canary_progress()
        replaced = f", replacing {old}" if old else ""
        self.event(Reason.rollout_completed, f"{new} is stable and takes 100%{replaced}")

    # ------------------------------------------------------------ result

    def finish(self, target: str, state: TargetState) -> ModelDeploymentStatus:
        gen = self.observed.generation
        desired = self.observed.desired
        conds = list(self.original.conditions)

        def put(
            type_: ConditionType, status: Literal["True", "False"], reason: str, msg: str
        ) -> bool:
            nonlocal conds
            before = find_condition(conds, type_)
            conds, _ = set_condition(conds, type_, status, reason, msg, self.now, gen)
            return before is None or before.status != status or before.reason != reason

        # Compressed
        if state == "failed":
            reason = desired.failure_reason or Reason.compression_failed
            message = desired.failure_message or f"{target}: compression failed"
            if put(ConditionType.compressed, "False", reason, message):
                self.event(reason, message, warning=True)
        elif state == "pending":
            waiting = sorted(e for e, s in desired.artifacts.items() if s != "ready")
            put(
                ConditionType.compressed,
                "False",
                Reason.compression_started,
                f"{target}: compressing for {', '.join(waiting) or 'its environments'}",
            )
        else:
            reused = desired.reused or target != desired.name
            put(
                ConditionType.compressed,
                "True",
                Reason.artifact_reused if reused else Reason.compression_succeeded,
                f"{target}: artifacts are in the store",
            )

        # Available
        stable_pods = self.observed.revisions.get(self.stable) if self.stable else None
        if stable_pods is not None and stable_pods.ready:
            put(ConditionType.available, "True", Reason.stable_serving, f"{self.stable} is serving")
        elif self.stable:
            put(
                ConditionType.available,
                "False",
                Reason.no_stable_revision,
                f"stable revision {self.stable} has no ready pods",
            )
        else:
            put(
                ConditionType.available,
                "False",
                Reason.no_stable_revision,
                "no revision has been rolled out yet",
            )

        # Degraded and Progressing
        degraded: tuple[str, str] | None = None
        if state == "failed":
            degraded = (
                desired.failure_reason or Reason.compression_failed,
                desired.failure_message or f"{target}: compression failed",
            )
        elif self.aborted:
            old = find_condition(self.original.conditions, ConditionType.degraded)
            kept = (old.reason, old.message) if old and old.status == "True" else None
            degraded = self.degraded or kept or (Reason.aborted, f"{self.canary} aborted")
        if degraded:
            put(ConditionType.degraded, "True", *degraded)
            put(ConditionType.progressing, "False", *degraded)
        else:
            put(ConditionType.degraded, "False", Reason.healthy, "")
            if self.canary_down:
                message = (
                    f"canary {self.canary} has no ready pods: {self.stable} takes its share "
                    f"until they are back ({self.summary()})"
                )
                if put(ConditionType.progressing, "True", Reason.canary_unavailable, message):
                    self.event(Reason.canary_unavailable, message, warning=True)
            elif self.canary:
                reason = (
                    Reason.paused
                    if self.paused
                    else Reason.step_advanced
                    if self.step_idx
                    else Reason.new_revision
                )
                put(ConditionType.progressing, "True", reason, self.summary())
            elif state == "pending":
                put(ConditionType.progressing, "True", Reason.new_revision, f"compressing {target}")
            elif self.stable:
                put(
                    ConditionType.progressing,
                    "True",
                    Reason.rollout_completed,
                    f"{self.stable} is stable",
                )

        if degraded:
            phase = Phase.degraded
        elif state == "pending":
            phase = Phase.compressing
        elif self.canary:
            phase = Phase.paused if self.paused else Phase.progressing
        elif self.stable:
            phase = Phase.ready
        else:
            phase = Phase.pending
        message = (
            degraded[1]
            if degraded
            else f"compressing {target}"
            if state == "pending"
            else self.summary()
        )

        return self.original.model_copy(
            update={
                "observed_generation": gen,
                "phase": phase.value,
                "message": message,
                "conditions": conds,
                "stable_revision": self.stable,
                "canary_revision": self.canary,
                "canary_weight": self.weight,
                "mirror_percent": self.mirror,
                "current_step": self.step_idx,
                "step_started_at": self.step_started,
                "canary_started_at": self.canary_started,
                "unavailable_since": self.unavailable_since,
                "paused": self.paused,
                "aborted": self.aborted,
                "last_command": self.last_command,
                "pinned_revision": self.pinned,
                "pinned_over": self.pinned_over,
                "analysis": self.analysis,
                "revisions": self.revisions,
                **self.newest_variant(),
            }
        )

    def newest_variant(self) -> dict[str, Any]:
        """What `kubectl get mdep` shows of the compression: the newest revision's (the
        canary's during a rollout, the stable's otherwise and once the canary is aborted)
        variant and its gate figure, from its first environment."""
        name = self.canary if self.canary and not self.aborted else self.stable
        rec = next((r for r in self.revisions if r.name == name), None)
        summary = rec.environments[0].compression if rec and rec.environments else None
        if summary is None:
            return {"variant": "", "agreement": None}
        return {"variant": summary.variant, "agreement": summary.accuracy}

    def summary(self) -> str:
        if not self.canary:
            return f"{self.stable} is stable" if self.stable else "no revision yet"
        if not self.stable:
            return f"deploying {self.canary}"
        n = len(self.steps)
        where = f"step {min(self.step_idx + 1, n)}/{n}" if n else "no steps"
        mirror = f", mirroring {self.mirror}%" if self.mirror else ""
        paused = ", paused" if self.paused else ""
        down = ", no ready pods" if self.canary_down else ""
        router = ", waiting for its router" if self.router_pending else ""
        return f"canary {self.canary} at {self.weight}%{mirror} ({where}{paused}{down}{router})"

    def effects(
        self, status: ModelDeploymentStatus, front: FrontPlan | None = None
    ) -> tuple[Action, ...]:
        """Actions that make the observed world match ``status``, safest order first:
        bring up, then shift traffic, then scale down and delete. ``front``: where the
        Service points and whether the router runs (no traffic to write without one)."""
        replicas = replicas_for(self.spec)
        want: dict[str, Mapping[str, int]] = {}
        if status.stable_revision:
            want[status.stable_revision] = replicas
        if status.canary_revision:
            want[status.canary_revision] = (
                {e: 0 for e in replicas} if status.aborted else replicas
            )
        have = self.observed.revisions
        records = {r.name: r for r in status.revisions}
        # A revision whose requests a router still sends (its new table not loaded yet) keeps
        # its pods: removed now, those requests would fail. A later pass removes it. So does
        # the revision the Service selects directly, until it selects another.
        routed = (self.observed.routed or frozenset()) | (
            {selected_revision(self.observed.front)} - {""}
        )
        up: list[Action] = []
        down: list[Action] = []
        for name, reps in want.items():
            pods = have.get(name)
            if pods is None:
                if sum(reps.values()) > 0:
                    up.append(EnsureRevision(name, dict(reps), records.get(name)))
            elif dict(pods.replicas) != dict(reps):
                bigger = sum(reps.values()) >= sum(pods.replicas.values())
                if not bigger and not sum(reps.values()) and name in routed:
                    continue
                (up if bigger else down).append(ScaleRevision(name, dict(reps)))
        traffic: list[Action] = []
        split = split_for(status)
        known = self.observed.traffic
        unwritten = known != split and not (known is None and not split.weights)
        if unwritten and (front is None or front.router):
            traffic.append(SetTraffic(split))
        deletes: list[Action] = [
            DeleteRevision(n) for n in have if n not in want and n not in routed
        ]
        return (*up, *traffic, *down, *deletes, *self.events)

    def analysis_request(self, status: ModelDeploymentStatus) -> AnalysisRequest | None:
        canary = status.canary_revision
        pods = self.observed.revisions.get(canary) if canary else None
        if (
            not canary
            or not status.stable_revision
            or status.aborted
            or pods is None
            or not pods.ready
            or (status.canary_weight == 0 and status.mirror_percent == 0)
        ):
            return None
        interval = self.spec.rollout.interval_seconds
        self.due_in(interval)
        return AnalysisRequest(
            canary, status.mirror_percent > 0, interval, serving=status.canary_weight > 0
        )
