"""Condition types, reasons and phases: the one vocabulary of status, events and the CLI."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    pending = "Pending"
    compressing = "Compressing"
    progressing = "Progressing"
    paused = "Paused"
    ready = "Ready"
    degraded = "Degraded"


class ConditionType(StrEnum):
    compressed = "Compressed"
    available = "Available"
    progressing = "Progressing"
    degraded = "Degraded"


class Reason(StrEnum):
    # Compressed
    compression_started = "CompressionStarted"
    compression_succeeded = "CompressionSucceeded"
    artifact_reused = "ArtifactReused"
    compression_failed = "CompressionFailed"
    accuracy_gate_failed = "AccuracyGateFailed"
    invalid_model = "InvalidModel"
    # Progressing
    new_revision = "NewRevision"
    step_advanced = "StepAdvanced"
    paused = "Paused"
    promoted = "Promoted"
    rollout_completed = "RolloutCompleted"
    canary_superseded = "CanarySuperseded"
    rolled_back = "RolledBack"
    analysis_inconclusive = "AnalysisInconclusive"
    canary_unavailable = "CanaryUnavailable"  # its pods were ready once, none is now
    command_rejected = "CommandRejected"
    # Degraded
    analysis_failed = "AnalysisFailed"
    aborted = "Aborted"
    progress_deadline_exceeded = "ProgressDeadlineExceeded"
    invalid_spec = "InvalidSpec"
    store_unavailable = "StoreUnavailable"
    kubernetes_refused = "KubernetesRefused"  # the API server refused a write (quota, policy)
    # Available
    stable_serving = "StableServing"
    no_stable_revision = "NoStableRevision"
    healthy = "Healthy"
