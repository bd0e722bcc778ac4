"""What the shell observed, handed to ``plan.rollout.step``: the world, never the clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from onnxship.api import RevisionStatus

from .analysis import Verdict
from .traffic import TrafficSplit


class ArtifactState(StrEnum):
    pending = "pending"  # compressing, or not looked up yet
    ready = "ready"  # the manifest is in the store
    failed = "failed"  # compression or the accuracy gate failed: a user must change the spec


@dataclass(frozen=True)
class DesiredRevision:
    """The revision the spec asks for, and how far its artifacts are."""

    name: str
    artifacts: Mapping[str, ArtifactState] = field(default_factory=dict)  # environment -> state
    record: RevisionStatus | None = None  # written to status.revisions once every artifact is ready
    failure_reason: str = ""  # a Reason, when an artifact failed
    failure_message: str = ""
    reused: bool = False  # every artifact came from the store's cache

    @property
    def ready(self) -> bool:
        states = list(self.artifacts.values())
        return bool(states) and all(s == ArtifactState.ready for s in states)

    @property
    def failed(self) -> bool:
        return any(s == ArtifactState.failed for s in self.artifacts.values())


@dataclass(frozen=True)
class RevisionPods:
    """A revision's workload (Deployments, or processes in local mode) as it exists now."""

    replicas: Mapping[str, int]  # environment -> replicas asked for
    ready: bool  # every environment with replicas > 0 has them all ready
    # Every environment with replicas > 0 has at least one ready pod; None: as ``ready``.
    serving: bool | None = None

    @property
    def can_serve(self) -> bool:
        """Requests sent to it would find a ready pod in every environment."""
        return self.ready or bool(self.serving)


# FrontSeen.selects when the user's Service selects the router's pods (plan/front.py).
ROUTER = "router"


@dataclass(frozen=True)
class FrontSeen:
    """The user's Service and the builtin router as they exist now."""

    selects: str = ""  # ROUTER, a revision's name, or "" (no Service yet)
    router: bool = False  # the router's Deployment exists
    router_ready: bool = False  # ... with all its replicas ready
    since: str = ""  # when the Service began to select ``selects`` (its annotation)
    # Seconds after which the pods' servers close a client's connection (their
    # --max-connection-age): how long clients take to follow a move of the Service.
    connection_max_age: float = 10.0

    @property
    def routing(self) -> bool:
        """Requests reach the router now, or will from this pass on."""
        return self.selects == ROUTER or self.router_ready


class CommandKind(StrEnum):
    promote = "promote"  # jump to 100% (also after an abort)
    resume = "resume"  # leave the current pause or inconclusive step, go on
    abort = "abort"  # canary weight to 0, Degraded, stable keeps serving
    retry = "retry"  # start the aborted canary again from step 0
    rollback = "rollback"  # serve ``revision`` (an earlier one whose artifact exists)


@dataclass(frozen=True)
class Command:
    """A user command. ``id`` is unique per command: a handled id is never handled twice."""

    id: str
    kind: CommandKind
    revision: str = ""


@dataclass(frozen=True)
class Observed:
    desired: DesiredRevision
    generation: int = 0
    revisions: Mapping[str, RevisionPods] = field(default_factory=dict)
    traffic: TrafficSplit | None = None  # what the router serves now; None = unknown
    # Revisions some router Pod still sends requests to, by the table it has loaded (the
    # written table reaches routers through a mounted ConfigMap, seconds to a minute later);
    # None = not known (no builtin router, or a router could not be asked).
    routed: frozenset[str] | None = None
    # The user's Service and the builtin router; None: no builtin router to place (Gateway
    # API, or a shell whose router always runs).
    front: FrontSeen | None = None
    verdict: Verdict | None = None  # the latest analysis verdict, for any revision
    command: Command | None = None
