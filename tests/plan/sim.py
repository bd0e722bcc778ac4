"""A simulated world for the rollout engine: it applies actions the way a shell would.

Workloads become ready on the next observation unless told otherwise; traffic is whatever
the last SetTraffic said; events are collected. No clock: tests move ``now`` themselves.
With ``front`` set (a FrontSeen), the world also plays the user's Service and the builtin
router as a cluster shell places them (Decision.front): a router made in one pass is ready
at the next observation unless ``router_never_ready``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from onnxship.api import ModelDeploymentSpec, ModelDeploymentStatus, RevisionStatus, parse_spec
from onnxship.plan.actions import (
    Decision,
    DeleteRevision,
    EmitEvent,
    EnsureRevision,
    ScaleRevision,
    SetTraffic,
)
from onnxship.plan.analysis import Measurements, Result, Verdict
from onnxship.plan.observed import (
    ROUTER,
    ArtifactState,
    Command,
    CommandKind,
    DesiredRevision,
    FrontSeen,
    Observed,
    RevisionPods,
)
from onnxship.plan.rollout import step
from onnxship.plan.traffic import TrafficSplit

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_spec(steps: list[dict[str, Any]] | None = None, **analysis: Any) -> ModelDeploymentSpec:
    doc: dict[str, Any] = {
        "model": {"uri": "s3://models/m/model.onnx"},
        "serving": {"replicas": 2},
        "rollout": {"steps": steps or [], "analysis": {"interval": "30s", **analysis}},
    }
    return parse_spec(doc)


def desired(name: str, state: ArtifactState = ArtifactState.ready, **kw: Any) -> DesiredRevision:
    record = RevisionStatus(name=name, artifact_uri=f"file:///store/{name}")
    return DesiredRevision(name=name, artifacts={"default": state}, record=record, **kw)


@dataclass
class World:
    spec: ModelDeploymentSpec
    desired: DesiredRevision
    status: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    now: datetime = T0
    revisions: dict[str, RevisionPods] = field(default_factory=dict)
    traffic: TrafficSplit | None = None
    events: list[EmitEvent] = field(default_factory=list)
    never_ready: set[str] = field(default_factory=set)  # no pod of these is ever ready
    no_ready_pods: set[str] = field(default_factory=set)  # their pods were lost (killed)
    partly_ready: set[str] = field(default_factory=set)  # some of their pods are ready
    verdict: Verdict | None = None
    command: Command | None = None
    routed: frozenset[str] | None = None  # what the routers still send requests to
    decisions: list[Decision] = field(default_factory=list)
    front: FrontSeen | None = None  # None: the router always runs (a shell without a front)
    router_never_ready: bool = False
    _commands: int = 0

    def observed(self) -> Observed:
        pods = {}
        for n, p in self.revisions.items():
            up = sum(p.replicas.values()) > 0 and n not in self.never_ready | self.no_ready_pods
            pods[n] = RevisionPods(p.replicas, up and n not in self.partly_ready, serving=up)
        return Observed(
            desired=self.desired,
            generation=1,
            revisions=pods,
            traffic=self.traffic,
            verdict=self.verdict,
            command=self.command,
            routed=self.routed,
            front=self.front,
        )

    def reconcile(self) -> Decision:
        d = step(self.spec, self.status, self.observed(), self.now)
        self.decisions.append(d)
        for a in d.actions:
            if isinstance(a, EnsureRevision | ScaleRevision):
                self.revisions[a.revision] = RevisionPods(dict(a.replicas), False)
            elif isinstance(a, DeleteRevision):
                self.revisions.pop(a.revision)
            elif isinstance(a, SetTraffic):
                self.traffic = a.split
            elif isinstance(a, EmitEvent):
                self.events.append(a)
        self.status = d.status
        if self.front is not None and d.front is not None:
            had = self.front.router
            if not d.front.router:
                self.traffic = None  # its ConfigMap goes with it
            self.front = FrontSeen(
                d.front.selects,
                router=d.front.router,
                router_ready=d.front.router and had and not self.router_never_ready,
                since=d.front.since,
            )
        return d

    def settle(self) -> Decision:
        """Reconcile until nothing changes; then check that once more changes nothing."""
        for _ in range(12):
            before, front = self.status, self.front
            d = self.reconcile()
            if not d.actions and d.status == before and self.front == front:
                again = step(self.spec, self.status, self.observed(), self.now)
                assert again.actions == () and again.status == self.status
                return d
        raise AssertionError(f"no fixed point: {self.decisions[-1].actions}")

    def advance(self, seconds: float) -> Decision:
        self.now += timedelta(seconds=seconds)
        return self.settle()

    def send(self, kind: CommandKind, revision: str = "") -> Decision:
        self._commands += 1
        self.command = Command(id=f"c{self._commands}", kind=kind, revision=revision)
        return self.settle()

    def measure(self, result: Result, **m: Any) -> Decision:
        revision = self.status.canary_revision
        self.verdict = Verdict(
            revision, result, f"{result.value} check", self.now, Measurements(revision, **m)
        )
        return self.settle()

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def weights(self) -> dict[str, int]:
        return dict(self.traffic.weights) if self.traffic else {}

    def reached(self) -> dict[str, int]:
        """The share of a user's requests each revision gets, through the Service."""
        if self.front is None or self.front.selects == ROUTER:
            return self.weights()
        return {self.front.selects: 100} if self.front.selects else {}
