"""Settings of one `onnxship serve` process, loaded once and passed explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServeConfig(BaseModel):
    """Everything a server needs, grouped by section; the CLI fills it from flags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- the model: a local file, or an artifact in the store (digests verified on fetch)
    model_path: Path | None = None
    store_uri: str | None = None
    cache_key: str | None = None
    store_endpoint: str | None = None
    store_region: str | None = None
    cache_dir: Path | None = Field(None, description="Where store artifacts are fetched to.")
    # Both are URL path segments (/v2/models/{name}/versions/{version}); otherwise free text,
    # since spec.model.version is a human label.
    name: str = Field("model", min_length=1, max_length=253, pattern=r"^[^/\s]+$")
    version: str = Field("1", min_length=1, max_length=128, pattern=r"^[^/]+$")

    # Named on every answer (pod.REVISION_HEADER); "" names none. Visible ASCII only: it goes
    # into HTTP headers and gRPC metadata as it is (a Kubernetes name, in a pod).
    revision: str = Field("", max_length=253, pattern=r"^[\x21-\x7e]*$")

    # --- listening
    host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_port: int | None = Field(8081, ge=0, le=65535, description="None: no gRPC server.")
    max_body_bytes: int = Field(64 << 20, ge=1024)
    # Seconds a client connection is kept before an answer closes it (so clients reconnect
    # and follow a Service that moved); 0: as long as it is used.
    max_connection_age: float = Field(0.0, ge=0.0)

    # --- ONNX Runtime
    execution_provider: str = "CPU"
    threads: int = Field(0, ge=0, le=256, description="Intra-op threads; 0 = from the CPU limit.")
    inter_op_threads: int = Field(1, ge=1, le=64)
    graph_optimization_level: Literal["none", "basic", "extended", "all"] = "all"
    spin: bool = Field(False, description="Let idle ORT workers spin (dedicated cores only).")

    # --- processes: N workers share the ports (SO_REUSEPORT), each with its own loop and session
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Worker processes; 0 = the CPU limit, or 1 for a causal LM (serve/workers.py).",
    )
    # Set by the supervisor, never by a user: the optimized copy of the model (external data,
    # prepacked weights) that every worker memory-maps instead of holding its own.
    shared_model: Path | None = None

    # --- scheduling
    max_batch_size: int = Field(1, ge=1, le=4096, description="1 turns dynamic batching off.")
    max_batch_delay_ms: float = Field(2.0, ge=0, le=10_000)
    max_queue_size: int = Field(128, ge=1, description="Requests admitted before 503s.")
    instances: int = Field(1, ge=1, le=64, description="Session runs in flight at once.")
    pad_sequences: bool = Field(
        True,
        description="Batch different sequence lengths by padding (needs attention_mask).",
    )

    # --- causal LMs (generation): sequences decoded together, each with its own KV cache slot
    max_sequences: int = Field(8, ge=1, le=256, description="Sequences generated at once.")
    max_context: int = Field(
        0, ge=0, le=1 << 20, description="Tokens per sequence (prompt + answer); 0: model, <= 4096."
    )

    # --- lifecycle
    warmup: bool = True
    grace_period_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> ServeConfig:
        from_store = self.store_uri is not None or self.cache_key is not None
        if self.model_path is not None and from_store:
            raise ValueError("give either a model path or a store URI with a cache key, not both")
        if self.model_path is None and not (self.store_uri and self.cache_key):
            raise ValueError("give a model path, or both a store URI and a cache key")
        return self
