"""What ``plan.rollout.step`` decides: the next status and the effects to apply, in order.

Intents accumulate and one writer applies them (argo-rollouts ``rollout/sync.go``): the shell
runs the actions in list order, then patches status once, skipping the patch when the status
is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from onnxship.api import ModelDeploymentStatus, RevisionStatus

from .analysis import AnalysisRequest
from .front import FrontPlan
from .traffic import TrafficSplit


@dataclass(frozen=True)
class EnsureRevision:
    """Create the revision's workload (one per environment) with these replicas."""

    revision: str
    replicas: Mapping[str, int]
    record: RevisionStatus | None = None  # artifact URIs per environment


@dataclass(frozen=True)
class ScaleRevision:
    revision: str
    replicas: Mapping[str, int]


@dataclass(frozen=True)
class DeleteRevision:
    """Remove the workload; the artifact stays in the store for rollbacks."""

    revision: str


@dataclass(frozen=True)
class SetTraffic:
    split: TrafficSplit


@dataclass(frozen=True)
class EmitEvent:
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


T = TypeVar("T")

Action = EnsureRevision | ScaleRevision | DeleteRevision | SetTraffic | EmitEvent


@dataclass(frozen=True)
class Decision:
    status: ModelDeploymentStatus
    actions: tuple[Action, ...] = ()
    analysis: AnalysisRequest | None = None  # measure this canary every interval
    requeue_after: float | None = None  # seconds until something is due; None = on change only
    # The user's Service and the builtin router, applied after the actions on every pass (an
    # apply that changes nothing sends nothing); None: nothing to place.
    front: FrontPlan | None = None

    def of_type(self, kind: type[T]) -> list[T]:
        return [a for a in self.actions if isinstance(a, kind)]
