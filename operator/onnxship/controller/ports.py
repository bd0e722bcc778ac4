"""The seams of the operator, wired once at start-up (tests wire fakes or local servers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from onnxship.api import Compression, ModelDeploymentSpec
from onnxship.plan.analysis import AnalysisRequest, Measurements
from onnxship.plan.workloads import Owner, StoreRef

from .kube import Kube
from .settings import OperatorSettings


class MetricsSource(Protocol):
    """Measures a canary over the last interval (deltas of the router's counters)."""

    def measure(
        self, owner: Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None: ...


class RouterTables(Protocol):
    """What the builtin router's Pods route to, by the tables they have loaded."""

    def routed(self, owner: Owner) -> frozenset[str] | None: ...


class ArtifactFinder(Protocol):
    """Looks an artifact up by pinned source digest; a result-shaped dict when found.

    ``kind``: the spec's model kind (empty: either); ``own_prompts``: the spec names its
    own prompts (sample inputs), whose digest some LLM keys hold."""

    def find(
        self,
        store: StoreRef,
        credentials: dict[str, str],
        source_sha256: str,
        compression: Compression,
        execution_provider: str,
        kind: str = "",
        own_prompts: bool = False,
    ) -> dict[str, Any] | None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Wiring:
    settings: OperatorSettings
    kube: Kube
    metrics: MetricsSource
    artifacts: ArtifactFinder
    clock: Callable[[], datetime] = utcnow
    routers: RouterTables | None = None  # None: revisions are removed without asking
    # Per object, what a restart may lose: (slot, "namespace/name") -> a pending verdict, the
    # refused writes' retry count.
    memory: dict[tuple[str, str], Any] = field(default_factory=dict)
