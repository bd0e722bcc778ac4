"""Operator settings: one documented model, loaded once from the environment at start-up.

The Helm chart sets these variables; every one has a default that works in a cluster with
an S3-compatible store configured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class StoreDefaults(BaseModel):
    """The artifact store used when a ModelDeployment leaves spec.artifacts.uri empty."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field("", description="s3://bucket/prefix/ (ONNXSHIP_STORE_URI)")
    endpoint: str = Field("", description="S3 endpoint URL (ONNXSHIP_STORE_ENDPOINT)")
    region: str = Field("", description="S3 region (ONNXSHIP_STORE_REGION)")
    credentials_secret: str = Field(
        "", description="Secret with AWS keys, in each model's namespace (ONNXSHIP_STORE_SECRET)"
    )


class Workloads(BaseModel):
    model_config = ConfigDict(frozen=True)

    runtime_image: str = Field(
        "ghcr.io/onnxship/runtime:0.1.0", description="Image of serve/compress/route pods"
    )
    image_pull_policy: str = "IfNotPresent"
    service_account: str = Field("", description="ServiceAccount of model and compress pods")
    job_active_deadline_seconds: int = 3600
    job_backoff_limit: int = 2
    job_ttl_seconds: int = 3600
    router_replicas: int = 1
    connection_max_age_seconds: float = Field(
        10.0,
        ge=0.1,
        description="Model servers and routers close a client's connection at its first answer "
        "after this long, so that clients follow a Service that moved between a revision's "
        "pods and the router; a canary's steps start this long after the move "
        "(ONNXSHIP_CONNECTION_MAX_AGE_SECONDS)",
    )


class Timing(BaseModel):
    model_config = ConfigDict(frozen=True)

    resync_seconds: float = Field(
        60.0,
        description="Longest wait between two reconciles; changes to the ModelDeployment, "
        "its Jobs and Deployments wake it sooner, and so do the rollout's own deadlines",
    )
    min_requeue_seconds: float = Field(0.2, description="Shortest wait between two reconciles")
    workers: int = Field(
        16,
        ge=1,
        description="Reconcile passes run at once, in one pool of threads (ONNXSHIP_WORKERS; "
        "a pass waits on the API server and the store, not on CPU; the pool bounds the threads "
        "at any object count)",
    )


class OperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    store: StoreDefaults = Field(default_factory=StoreDefaults)
    workloads: Workloads = Field(default_factory=Workloads)
    timing: Timing = Field(default_factory=Timing)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ

        def pick(**names: str) -> dict[str, str]:
            return {field: env[var] for field, var in names.items() if env.get(var)}

        return cls.model_validate(
            {
                "store": pick(
                    uri="ONNXSHIP_STORE_URI",
                    endpoint="ONNXSHIP_STORE_ENDPOINT",
                    region="ONNXSHIP_STORE_REGION",
                    credentials_secret="ONNXSHIP_STORE_SECRET",
                ),
                "workloads": pick(
                    runtime_image="ONNXSHIP_RUNTIME_IMAGE",
                    image_pull_policy="ONNXSHIP_IMAGE_PULL_POLICY",
                    service_account="ONNXSHIP_WORKLOAD_SERVICE_ACCOUNT",
                    job_active_deadline_seconds="ONNXSHIP_JOB_DEADLINE_SECONDS",
                    job_backoff_limit="ONNXSHIP_JOB_BACKOFF_LIMIT",
                    job_ttl_seconds="ONNXSHIP_JOB_TTL_SECONDS",
                    router_replicas="ONNXSHIP_ROUTER_REPLICAS",
                    connection_max_age_seconds="ONNXSHIP_CONNECTION_MAX_AGE_SECONDS",
                ),
                "timing": pick(
                    resync_seconds="ONNXSHIP_RESYNC_SECONDS", workers="ONNXSHIP_WORKERS"
                ),
            }
        )
