"""The ArtifactManifest: written last, it names every blob of a compressed model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel
from .spec import Compression, ModelKind
from .types import Sha256Hex

MANIFEST_SCHEMA_VERSION = 1


class Blob(ApiModel):
    """One file of the artifact (the model, or an external-data file beside it)."""

    name: str = Field(description="File name relative to the model folder, e.g. model.onnx.")
    digest: Sha256Hex = Field(description="Hex SHA-256 of the uncompressed bytes.")
    size: int = Field(ge=0, description="Uncompressed size in bytes.")
    encoding: Literal["identity", "zstd"] = "identity"
    stored_size: int = Field(0, ge=0, description="Bytes in the store (after zstd, if any).")


class SourceInfo(ApiModel):
    uri: str
    sha256: Sha256Hex
    size_bytes: int = 0
    version: str = ""


class AccuracyReport(ApiModel):
    metric: str
    mean: float
    min: float
    threshold: float
    passed: bool
    samples: int
    cosine_mean: float | None = Field(None, description="Mean cosine similarity, worst output.")
    cosine_min: float | None = Field(None, description="Lowest per-sample cosine similarity.")
    top1_agreement: float | None = Field(None, description="Argmax agreement, classifier outputs.")
    max_abs_error: float | None = None
    synthetic_inputs: bool = Field(False, description="Inputs were made up from the signature.")
    outputs: dict[str, float] = Field(
        default_factory=dict, description="The gate's metric per output read."
    )
    deciding_output: str = Field("", description="The output whose figure decided the gate.")
    kl_mean: float | None = Field(None, description="Causal LM: mean KL per position.")
    token_agreement: float | None = Field(
        None, description="Causal LM: free-run greedy token agreement."
    )
    per_prompt: list[dict[str, float]] = Field(
        default_factory=list, description="Causal LM: the three figures per prompt."
    )


class CandidateReport(ApiModel):
    """One variant a search (quantize: auto) measured, and what became of it."""

    name: str = Field(description="e.g. int8-matmul, int8-conv, static-int8, int4-rtn-b32, fp16.")
    steps: list[str] = Field(default_factory=list)
    bytes: int = Field(0, ge=0)
    latency_ms: float | None = None
    accuracy: AccuracyReport | None = None
    passed: bool = False
    chosen: bool = False
    why: str = Field("", description="Why it was chosen, lost, or not tried.")


class CompressionReport(ApiModel):
    original_bytes: int
    compressed_bytes: int
    ratio: float = Field(description="compressed_bytes / original_bytes")
    accuracy: AccuracyReport | None = None
    original_latency_ms: float | None = None
    compressed_latency_ms: float | None = None
    steps: list[str] = Field(default_factory=list, description="What was applied, in order.")
    seconds: float = 0.0
    step_seconds: dict[str, float] = Field(default_factory=dict, description="Wall time per step.")
    notes: list[str] = Field(default_factory=list, description="What a reader should know.")
    candidates: list[CandidateReport] = Field(
        default_factory=list, description="quantize: auto: every candidate measured."
    )
    samples_digest: str = Field("", description="SHA-256 of the sample inputs the gate read.")


class ToolVersions(ApiModel):
    onnxship: str
    onnx: str
    onnxruntime: str


class ArtifactManifest(ApiModel):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    cache_key: str
    source: SourceInfo
    compression: Compression
    execution_provider: str = "CPU"
    kind: ModelKind = ModelKind.onnx
    model_file: str = Field("model.onnx", description="The blob to load; others are external data.")
    blobs: list[Blob]
    report: CompressionReport
    tools: ToolVersions
    created_at: str
