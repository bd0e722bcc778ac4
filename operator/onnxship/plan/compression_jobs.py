"""Where each environment's artifact stands, from what the store and the Job say. Pure.

The operator asks the store first (a pinned model digest gives the cache key without any
download, so a second cluster finds the first one's work); otherwise a compression Job
computes the digest and publishes, and its Pod's termination message says how it went.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from onnxship.api import (
    CompressionSummary,
    EnvironmentStatus,
    ModelDeploymentSpec,
    Reason,
    RevisionStatus,
)

from .observed import ArtifactState
from .times import format_time

# Exit codes of `onnxship compress` (cli.app.ExitCode) that no retry will fix.
_EXIT_REASONS = {
    3: (Reason.invalid_spec, "the compression settings are invalid"),
    4: (Reason.invalid_model, "the model file is invalid or unsafe"),
    5: (Reason.accuracy_gate_failed, "the compressed model failed the accuracy gate"),
    6: (Reason.store_unavailable, "the artifact store failed"),
    7: (Reason.compression_failed, "the source model could not be fetched"),
}


class JobPhase(StrEnum):
    absent = "absent"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


@dataclass(frozen=True)
class JobObservation:
    phase: JobPhase
    exit_code: int | None = None
    message: str = ""  # the Pod's termination message: JSON result, or the logs' tail


@dataclass(frozen=True)
class ArtifactView:
    """What the operator knows about one environment's artifact."""

    state: ArtifactState
    create_job: bool = False
    environment: EnvironmentStatus | None = None
    reason: str = ""
    message: str = ""


def job_phase(job: dict[str, Any] | None) -> JobPhase:
    if job is None:
        return JobPhase.absent
    status = job.get("status", {})
    for cond in status.get("conditions", []):
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return JobPhase.succeeded
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return JobPhase.failed
    if status.get("succeeded"):
        return JobPhase.succeeded
    return JobPhase.running


def parse_result(message: str) -> dict[str, Any] | None:
    """The JSON that `onnxship compress --result-file` left in the termination message:
    ``{"cacheKey", "artifactUri", "cacheHit", "report": CompressionReport (camelCase)}``."""
    try:
        data = json.loads(message)
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("cacheKey") else None


def environment_record(
    name: str, execution_provider: str, result: dict[str, Any], reused: bool
) -> EnvironmentStatus:
    report = result.get("report") or {}
    accuracy = report.get("accuracy") or {}
    return EnvironmentStatus(
        name=name,
        execution_provider=execution_provider,
        cache_key=str(result["cacheKey"]),
        artifact_uri=str(result.get("artifactUri", "")),
        compression=CompressionSummary(
            original_bytes=int(report.get("originalBytes", 0)),
            compressed_bytes=int(report.get("compressedBytes", 0)),
            ratio=float(report.get("ratio", 0.0)),
            accuracy_metric=str(accuracy.get("metric", "")),
            accuracy=accuracy.get("mean"),
            cache_hit=reused or bool(result.get("cacheHit", False)),
            kind=str(result.get("kind", "")),
            variant=str(result.get("variant", "")),
            top1=_figure(accuracy, "top1Agreement"),
            kl_mean=_figure(accuracy, "klMean"),
            token_agreement=_figure(accuracy, "tokenAgreement"),
        ),
    )


def revision_record(
    name: str,
    spec: ModelDeploymentSpec,
    environments: Sequence[EnvironmentStatus],
    created_at: datetime,
    *,
    model_sha256: str,
    image: str = "",
) -> RevisionStatus:
    """What status records of a revision once every environment's artifact is stored (both
    shells); its size, ratio and accuracy are those of the first environment."""
    first = environments[0] if environments else None
    summary = first.compression if first else None
    return RevisionStatus(
        name=name,
        model_version=spec.model.version,
        model_sha256=model_sha256,
        artifact_uri=first.artifact_uri if first else "",
        size_bytes=summary.compressed_bytes if summary else 0,
        compression_ratio=summary.ratio if summary else 0.0,
        accuracy=summary.accuracy if summary else None,
        environments=list(environments),
        image=image,
        created_at=format_time(created_at),
    )


def _figure(accuracy: dict[str, Any], key: str) -> float | None:
    value = accuracy.get(key)
    return float(value) if isinstance(value, int | float) else None


def artifact_view(
    name: str,
    execution_provider: str,
    known: EnvironmentStatus | None,
    in_store: dict[str, Any] | None,
    job: JobObservation,
) -> ArtifactView:
    """Decide one environment's artifact state and whether a Job must be created.

    ``known``: what status already records; ``in_store``: a result-shaped dict when the
    store holds the artifact for a pinned digest; ``job``: the compression Job, if any.
    """
    if known is not None and known.cache_key:
        return ArtifactView(ArtifactState.ready, environment=known)
    if in_store is not None:
        return ArtifactView(
            ArtifactState.ready,
            environment=environment_record(name, execution_provider, in_store, reused=True),
        )
    if job.phase == JobPhase.absent:
        return ArtifactView(ArtifactState.pending, create_job=True)
    if job.phase == JobPhase.running:
        return ArtifactView(ArtifactState.pending)
    if job.phase == JobPhase.succeeded:
        result = parse_result(job.message)
        if result is None:
            return ArtifactView(
                ArtifactState.failed,
                reason=Reason.compression_failed,
                message=f"environment {name}: the compression Job succeeded but left no result",
            )
        return ArtifactView(
            ArtifactState.ready,
            environment=environment_record(name, execution_provider, result, reused=False),
        )
    reason, what = _EXIT_REASONS.get(
        job.exit_code or -1, (Reason.compression_failed, "compression failed")
    )
    tail = job.message.strip()[-1500:]
    code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
    return ArtifactView(
        ArtifactState.failed,
        reason=reason,
        message=f"environment {name}: {what}{code}" + (f": {tail}" if tail else ""),
    )
