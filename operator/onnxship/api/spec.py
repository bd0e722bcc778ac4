"""The ModelDeployment spec: what a user writes in ``kubectl apply`` or ``onnxship up``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from .base import ApiModel, cel
from .types import (
    DNS1123_LABEL,
    ENDPOINT_URL,
    MODEL_URI,
    STORE_URI,
    DNSLabel,
    Duration,
    OptionalSecretName,
    Percent,
    Quantity,
    Sha256Hex,
    parse_duration,
)


class QuantizeMode(StrEnum):
    none = "none"
    dynamic = "dynamic"
    static = "static"
    fp16 = "fp16"
    # Weight-only integer MatMuls (MatMulNBits): the mode of decoder LLMs.
    weight_only = "weightOnly"
    # Measure candidates against the gate and publish the smallest that passes.
    auto = "auto"


class ModelKind(StrEnum):
    """What a model is, found from its files unless the spec says so."""

    onnx = "onnx"  # one graph, one request in, one answer out (encoders, classifiers, CNNs)
    causal_lm = "causal-lm"  # a decoder LLM: past_key_values in, logits and present.* out


class ExecutionProvider(StrEnum):
    """ONNX Runtime execution providers, by the short name users know them by."""

    CPU = "CPU"
    CUDA = "CUDA"
    TensorRT = "TensorRT"
    ROCm = "ROCm"
    MIGraphX = "MIGraphX"
    OpenVINO = "OpenVINO"
    DNNL = "DNNL"

    @property
    def ort_name(self) -> str:
        return f"{self.value}ExecutionProvider"


OptimizeLevel = Literal["none", "basic", "extended", "all"]


# ---------------------------------------------------------------- model


class ModelSource(ApiModel):
    """Where the source model comes from."""

    uri: Annotated[str, StringConstraints(pattern=MODEL_URI, max_length=2048)] = Field(
        description="Source model: s3://bucket/key, http(s)://..., or file:// (local mode)."
    )
    sha256: Sha256Hex = Field("", description="Optional pin: hex SHA-256 verified after download.")
    version: Annotated[str, StringConstraints(max_length=63)] = Field(
        "", description="Human label of the model version, shown in status and metrics."
    )
    credentials_secret: OptionalSecretName = Field(
        "", description="Secret with AWS-style keys (s3) or a bearer `token` (https)."
    )
    endpoint: Annotated[str, StringConstraints(pattern=r"^$|^https?://", max_length=2048)] = Field(
        "",
        description=(
            "S3 endpoint of an s3:// model and its sample inputs; empty = the artifact "
            "store's endpoint (spec.artifacts.endpoint, or AWS when that is empty too)."
        ),
    )
    sample_inputs: Annotated[
        str, StringConstraints(pattern=r"^$|" + MODEL_URI[1:], max_length=2048)
    ] = Field(
        "",
        description=".npz of sample inputs (a JSONL of prompts for a causal LM) for calibration "
        "and the accuracy gate.",
    )
    kind: ModelKind | None = Field(
        None, description="onnx | causal-lm; empty = found from the model's files."
    )


# ---------------------------------------------------------------- compression


class Prune(ApiModel):
    sparsity: float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of weight values set to zero by magnitude."
    )
    method: Literal["magnitude", "shrink"] = Field(
        "magnitude",
        description="magnitude: zero the smallest |w|; shrink: soft-threshold w - a*sign(w), "
        "clamped at zero, with a the sparsity quantile of |w| (same zeros, smaller survivors).",
    )


class Quantize(ApiModel):
    mode: QuantizeMode = Field(
        QuantizeMode.auto,
        description="auto (measure candidates, publish the smallest that passes the gate) | "
        "none | dynamic | static | fp16 | weightOnly",
    )
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Integer weight type.")
    per_channel: bool = Field(True, description="Per-channel weight scales (int8 modes).")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="Activation range calibration of static int8 on the sample inputs."
    )
    bits: Literal[4, 8] = Field(4, description="weightOnly: bits per weight.")
    block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="weightOnly: weights sharing one scale (and zero point)."
    )
    symmetric: bool = Field(True, description="weightOnly: no zero points.")
    accuracy_level: int = Field(
        4, ge=0, le=4, description="weightOnly: MatMulNBits accuracy_level (4: int8 compute)."
    )
    algorithm: Literal["rtn", "kquant", "kquantMixed", "hqq", "gptq"] = Field(
        "rtn", description="weightOnly: how weights are rounded (gptq calibrates on the prompts)."
    )
    embedding: Literal["keep", "int8", "int4"] = Field(
        "int8", description="weightOnly: the token embedding (and a tied lm_head)."
    )


class AccuracyGate(ApiModel):
    metric: Literal["cosine", "top1", "kl", "tokens"] = Field(
        "cosine",
        description="cosine: mean cosine similarity of outputs; top1: argmax agreement "
        "(teacher-forced next-token agreement for a causal LM); kl: mean KL divergence per "
        "position (causal LM, judged against max); tokens: free-run greedy token agreement.",
    )
    min: float = Field(0.99, ge=0.0, le=1.0, description="The gate fails below this value.")
    max: float | None = Field(
        None, ge=0.0, description="metric kl: the gate fails above this value."
    )
    outputs: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Outputs the gate reads (names); empty = all.",
    )


class Compression(ApiModel):
    """How the model is compressed before it is served."""

    optimize: OptimizeLevel = Field("extended", description="ORT graph optimization level.")
    prune: Prune = Field(default_factory=Prune)
    quantize: Quantize = Field(default_factory=Quantize)
    accuracy_gate: AccuracyGate = Field(default_factory=AccuracyGate)


class CompressionOverride(ApiModel):
    """Per-environment changes to the top-level compression; unset parts are inherited."""

    optimize: OptimizeLevel | None = None
    prune: Prune | None = None
    quantize: Quantize | None = None
    accuracy_gate: AccuracyGate | None = None

    def apply_to(self, base: Compression) -> Compression:
        changes = {k: v for k, v in self if v is not None}
        return base.model_copy(update=changes)


# ---------------------------------------------------------------- artifacts


class Artifacts(ApiModel):
    """The content-addressed artifact store (S3-compatible or file://)."""

    uri: Annotated[str, StringConstraints(pattern=r"^$|" + STORE_URI[1:], max_length=2048)] = Field(
        "", description="s3://bucket/prefix/ or file:///path; empty = operator default."
    )
    endpoint: Annotated[
        str, StringConstraints(pattern=r"^$|" + ENDPOINT_URL[1:], max_length=2048)
    ] = Field("", description="S3-compatible endpoint (MinIO, Ceph...); empty = AWS.")
    region: Annotated[str, StringConstraints(max_length=64)] = ""
    credentials_secret: OptionalSecretName = Field(
        "", description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


# ---------------------------------------------------------------- serving


class Batching(ApiModel):
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(2.0, ge=0.0, le=10_000.0)


class Generation(ApiModel):
    """How a causal LM's pods generate (`onnxship serve --max-sequences --max-context`)."""

    max_sequences: int = Field(
        8,
        ge=1,
        le=256,
        description="Sequences generated at once per pod (KV cache slots); more wait in the "
        "queue.",
    )
    max_context: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description="Tokens per sequence, prompt and answer; 0 = the model's context length, at "
        "most 4096.",
    )


class Resources(ApiModel):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class Toleration(ApiModel):
    key: str = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: int | None = None


class Environment(ApiModel):
    """A hardware pool that serves the model with its own compressed variant."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.executionProvider) || self.executionProvider == 'CPU' || "
                "!has(self.compression) || !has(self.compression.quantize) || "
                "!has(self.compression.quantize.mode) || "
                "self.compression.quantize.mode != 'static'",
                "static int8 quantization targets CPU pools; use fp16 or dynamic on accelerators",
                ".compression.quantize.mode",
            )
        )
    }

    name: Annotated[str, StringConstraints(pattern=DNS1123_LABEL, min_length=1, max_length=20)] = (
        Field(
            description="Environment name (DNS-1123 label, at most 20 characters); names objects."
        )
    )
    execution_provider: ExecutionProvider = Field(ExecutionProvider.CPU)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="A core/v1 Affinity, passed to the pods unchanged.",
    )
    resources: Resources | None = None
    replicas: int | None = Field(None, ge=0, le=1000, description="Overrides serving.replicas.")
    weight: Percent | None = Field(
        None, description="Share of requests without an environment header (all or none set)."
    )
    compression: CompressionOverride | None = None

    @model_validator(mode="after")
    def _static_on_cpu(self) -> Environment:
        q = self.compression.quantize if self.compression else None
        if q and q.mode == QuantizeMode.static and self.execution_provider != ExecutionProvider.CPU:
            raise ValueError(
                "compression.quantize.mode: static int8 quantization targets CPU pools; "
                "use fp16 or dynamic on accelerators"
            )
        return self


DEFAULT_ENVIRONMENT = Environment(name="default")


class Serving(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.environments) || self.environments.all(e, !has(e.weight)) || "
                "(self.environments.all(e, has(e.weight)) && "
                "self.environments.map(e, has(e.weight) ? e.weight : 0).sum() == 100)",
                "environment weights must be set on every environment and sum to 100, or on none",
                ".environments",
            ),
            (
                "!has(self.environments) || "
                "self.environments.all(e, self.environments.exists_one(f, f.name == e.name))",
                "environment names must be unique",
                ".environments",
            ),
        )
    }

    replicas: int = Field(1, ge=0, le=1000)
    image: Annotated[str, StringConstraints(max_length=512)] = Field(
        "", description="Runtime image; empty = the operator's configured default."
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Server processes per pod, sharing its ports, each with its own session (the "
            "weights memory-mapped once for all). 0: one per CPU of the pod's CPU limit (else "
            "its request; 1 without either) for encoders and classifiers, whose throughput "
            "grows with processes; always 1 for causal LMs, whose concurrency is the decode "
            "batch (serving.generation) and whose every worker would hold its own weights and "
            "KV cache. Set 1 for the lowest single-request latency of a large model."
        ),
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Intra-op threads per worker; 0 = the CPU limit split between the workers.",
    )
    instances: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Session runs in flight at once per pod. 1 with threads from the CPU limit is the "
            "lowest latency; for throughput on CPU, instances = CPUs with threads 1 (each run "
            "on its own core, no intra-op barriers)."
        ),
    )
    batching: Batching = Field(default_factory=Batching)
    generation: Generation = Field(
        default_factory=Generation, description="Causal LMs only: generation limits per pod."
    )
    resources: Resources | None = Field(
        None,
        description="Pod resources. Unset memory of a causal LM is sized from its artifact "
        "(request 1.25x its bytes + 512Mi, limit 2x + 2Gi).",
    )
    environments: list[Environment] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        description="Hardware pools; none = one default CPU environment.",
    )

    @field_validator("environments")
    @classmethod
    def _unique_and_weighted(cls, envs: list[Environment]) -> list[Environment]:
        seen: set[str] = set()
        for e in envs:
            if e.name in seen:
                raise ValueError(f"environment name {e.name!r} appears twice; names must be unique")
            seen.add(e.name)
        weights = [e.weight for e in envs]
        if any(w is not None for w in weights) and (
            None in weights or sum(w or 0 for w in weights) != 100
        ):
            raise ValueError(
                "environment weights must be set on every environment and sum to 100, or on none"
            )
        return envs

    def effective_environments(self) -> list[Environment]:
        return list(self.environments) or [DEFAULT_ENVIRONMENT]


# ---------------------------------------------------------------- rollout


class Pause(ApiModel):
    duration: Duration | None = Field(
        None, description="How long to wait; unset = until `onnxship promote`."
    )


class Mirror(ApiModel):
    percent: int = Field(ge=1, le=100, description="Share of requests copied to the canary.")
    duration: Duration = Field(description="How long to mirror before the next step.")


class AnalysisStep(ApiModel):
    duration: Duration = Field(description="How long analysis must pass before the next step.")


class Step(ApiModel):
    """One rollout step; exactly one of its fields is set."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "[has(self.setWeight), has(self.pause), has(self.mirror), has(self.analysis)]"
                ".filter(x, x).size() == 1",
                "a step sets exactly one of setWeight, pause, mirror, analysis",
                "",
            )
        )
    }

    set_weight: Percent | None = Field(None, description="Canary traffic weight in percent.")
    pause: Pause | None = None
    mirror: Mirror | None = None
    analysis: AnalysisStep | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        set_fields = [
            n for n in ("set_weight", "pause", "mirror", "analysis") if getattr(self, n) is not None
        ]
        if len(set_fields) != 1:
            got = ", ".join(set_fields) or "none"
            raise ValueError(
                f"a step sets exactly one of setWeight, pause, mirror, analysis (got {got})"
            )
        return self

    @property
    def kind(self) -> str:
        for name in ("set_weight", "pause", "mirror", "analysis"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated step has a kind")


class OutputAgreement(ApiModel):
    metric: Literal["cosine", "top1", "tokens"] = Field(
        "cosine",
        description="cosine: mean cosine of mirrored outputs; top1: share with the same argmax; "
        "tokens (causal LM): mean share of stable's greedy tokens the canary's greedy answer "
        "matches, position by position, on mirrored generations.",
    )
    min: float = Field(0.98, ge=0.0, le=1.0)


class PrometheusSource(ApiModel):
    address: Annotated[str, StringConstraints(pattern=ENDPOINT_URL, max_length=2048)]


class Analysis(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.provider) || self.provider != 'prometheus' || has(self.prometheus)",
                "provider prometheus needs prometheus.address",
                ".prometheus",
            )
        )
    }

    interval: Duration = "30s"
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    max_latency_p99_ms: float | None = Field(None, gt=0)
    max_time_to_first_token_p99_ms: float | None = Field(
        None,
        gt=0,
        description="Causal LM: p99 time to first token of the canary's streamed answers, per "
        "environment; judged while the canary takes traffic (setWeight above 0).",
    )
    max_inter_token_latency_p99_ms: float | None = Field(
        None,
        gt=0,
        description="Causal LM: p99 time between tokens of the canary's streamed answers, per "
        "environment; judged like maxTimeToFirstTokenP99Ms.",
    )
    min_output_agreement: OutputAgreement | None = None
    failure_limit: int = Field(
        2, ge=0, le=100, description="Failed checks tolerated before rollback."
    )
    min_requests: int = Field(
        20, ge=1, description="Fewer canary requests in an interval make it inconclusive."
    )
    provider: Literal["builtin", "prometheus"] = "builtin"
    prometheus: PrometheusSource | None = None

    @model_validator(mode="after")
    def _prometheus_address(self) -> Analysis:
        if self.provider == "prometheus" and self.prometheus is None:
            raise ValueError("prometheus: provider prometheus needs prometheus.address")
        return self


class ParentRef(ApiModel):
    name: DNSLabel
    namespace: Annotated[
        str, StringConstraints(pattern=r"^$|" + DNS1123_LABEL[1:], max_length=63)
    ] = ""
    section_name: str = ""


class GatewayRoute(ApiModel):
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=16)
    hostnames: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list, max_length=16
    )


class Traffic(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.router) || self.router != 'gatewayAPI' || has(self.gateway)",
                "router gatewayAPI needs gateway.parentRefs",
                ".gateway",
            )
        )
    }

    router: Literal["builtin", "gatewayAPI"] = "builtin"
    gateway: GatewayRoute | None = None

    @model_validator(mode="after")
    def _gateway(self) -> Traffic:
        if self.router == "gatewayAPI" and self.gateway is None:
            raise ValueError("gateway: router gatewayAPI needs gateway.parentRefs")
        return self


class Rollout(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.steps) || "
                "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
                "setWeight must never decrease from one step to the next",
                ".steps",
            )
        )
    }

    steps: list[Step] = Field(
        default_factory=list, max_length=64, description="Canary steps; none = switch at once."
    )
    analysis: Analysis = Field(default_factory=Analysis)
    traffic: Traffic = Field(default_factory=Traffic)
    progress_deadline: Duration = Field(
        "10m",
        description="A canary not ready within this time, or left with no ready pod for this "
        "long, is rolled back.",
    )

    @field_validator("steps")
    @classmethod
    def _weights_grow(cls, steps: list[Step]) -> list[Step]:
        last = 0
        for i, s in enumerate(steps):
            if s.set_weight is not None:
                if s.set_weight < last:
                    raise ValueError(
                        f"steps[{i}].setWeight {s.set_weight} is below an earlier weight {last}; "
                        "setWeight must never decrease from one step to the next"
                    )
                last = s.set_weight
        return steps

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.analysis.interval)


class ModelDeploymentSpec(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "(has(self.model.sampleInputs) && self.model.sampleInputs != '') || "
                "((!has(self.compression) || !has(self.compression.quantize) || "
                "!has(self.compression.quantize.mode) || "
                "self.compression.quantize.mode != 'static') && "
                "(!has(self.serving) || !has(self.serving.environments) || "
                "self.serving.environments.all(e, !has(e.compression) || "
                "!has(e.compression.quantize) || !has(e.compression.quantize.mode) || "
                "e.compression.quantize.mode != 'static')))",
                "static quantization needs model.sampleInputs (.npz) for calibration",
                ".model.sampleInputs",
            )
        )
    }

    model: ModelSource
    compression: Compression = Field(default_factory=Compression)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    serving: Serving = Field(default_factory=Serving)
    rollout: Rollout = Field(default_factory=Rollout)
    revision_history_limit: int = Field(3, ge=0, le=50)

    @model_validator(mode="after")
    def _calibration(self) -> ModelDeploymentSpec:
        modes = [self.compression.quantize.mode] + [
            e.compression.quantize.mode
            for e in self.serving.environments
            if e.compression and e.compression.quantize
        ]
        if QuantizeMode.static in modes and not self.model.sample_inputs:
            raise ValueError(
                "model.sampleInputs: static quantization needs sample inputs (.npz) for calibration"
            )
        return self

    def compression_for(self, env: Environment) -> Compression:
        return env.compression.apply_to(self.compression) if env.compression else self.compression
