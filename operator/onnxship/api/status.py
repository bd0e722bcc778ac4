"""ModelDeployment status. All rollout state lives here so the operator can die and resume."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel
from .conditions import Phase


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str = Field("", description="RFC 3339 time of the last status change.")
    observed_generation: int = 0


class CompressionSummary(ApiModel):
    original_bytes: int = 0
    compressed_bytes: int = 0
    ratio: float = Field(0.0, description="compressed size / original size")
    accuracy_metric: str = ""
    accuracy: float | None = None
    cache_hit: bool = False
    kind: str = Field("", description="onnx | causal-lm")
    variant: str = Field("", description="The published candidate, e.g. int4-hqq-b32-emb8.")
    top1: float | None = Field(None, description="Causal LM: teacher-forced top-1 agreement.")
    kl_mean: float | None = Field(None, description="Causal LM: mean KL per position.")
    token_agreement: float | None = Field(
        None, description="Causal LM: free-run greedy token agreement."
    )


class EnvironmentStatus(ApiModel):
    name: str
    execution_provider: str = "CPU"
    cache_key: str = ""
    artifact_uri: str = ""
    ready_replicas: int = 0
    replicas: int = 0
    compression: CompressionSummary | None = None


class RevisionStatus(ApiModel):
    name: str
    model_version: str = ""
    model_sha256: str = ""
    artifact_uri: str = ""
    size_bytes: int = 0
    compression_ratio: float = 0.0
    accuracy: float | None = None
    environments: list[EnvironmentStatus] = Field(default_factory=list)
    image: str = Field("", description="Runtime image the revision runs (part of its identity).")
    created_at: str = ""


class AnalysisStatus(ApiModel):
    """The latest verdict of the canary analysis."""

    verdict: Literal["", "pass", "fail", "inconclusive"] = ""
    message: str = ""
    failures: int = 0
    passes: int = Field(0, description="Passing checks since the current step started.")
    error_rate: float | None = None
    latency_p99_ms: float | None = None
    output_agreement: float | None = None
    time_to_first_token_p99_ms: float | None = Field(
        None, description="Causal LM: the canary's p99 time to first token in the interval."
    )
    inter_token_latency_p99_ms: float | None = Field(
        None, description="Causal LM: the canary's p99 inter-token latency in the interval."
    )
    requests: int = 0
    measured_at: str = ""


class ModelDeploymentStatus(ApiModel):
    observed_generation: int = 0
    phase: Phase = Phase.pending
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    stable_revision: str = ""
    canary_revision: str = ""
    canary_weight: int = Field(0, ge=0, le=100)
    mirror_percent: int = Field(0, ge=0, le=100)
    current_step: int = 0
    step_started_at: str = ""
    canary_started_at: str = ""
    unavailable_since: str = Field(
        "", description="When the canary, ready before, was last left with no ready pod."
    )
    paused: bool = Field(False, description="Waiting for `onnxship promote` (or resume).")
    aborted: bool = False
    last_command: str = Field("", description="Id of the last user command handled.")
    pinned_revision: str = Field(
        "", description="Revision a rollback pinned; it wins until the spec's revision changes."
    )
    pinned_over: str = Field("", description="The spec's revision when the pin was set.")
    analysis: AnalysisStatus | None = None
    revisions: list[RevisionStatus] = Field(default_factory=list)
    endpoint: str = ""
    variant: str = Field(
        "",
        description="The compressed variant of the newest revision (the canary's during a "
        "rollout, else the stable's), e.g. int4-hqq-b32-emb8 for a causal LM.",
    )
    agreement: float | None = Field(
        None,
        description="That variant's accuracy-gate figure against the original (cosine, "
        "top-1, or teacher-forced top-1 / token agreement for a causal LM, as the gate read).",
    )
