"""A ModelDeployment of a causal LM, as the operator reconciles it against KMock.

The compression Job's work runs for real (the tiny decoder, weight-only int8, into moto's
S3); the operator learns the artifact's kind and size from the Job's result, and the pods it
makes generate with the spec's limits, start with a probe sized for the model and get memory
sized from it. Canary analysis on LLM figures rolls a slow or disagreeing canary back with a
reason that names the figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import typer

from onnxship.api import Compression, ModelDeploymentSpec
from onnxship.cli.main import app
from onnxship.compress import compress
from onnxship.compress.result import compact_result
from onnxship.controller.artifacts import StoreArtifactFinder
from onnxship.plan import workloads as w
from onnxship.plan.analysis import AnalysisRequest, Measurements
from tests.store.conftest import S3Server

from .conftest import NS, Cluster
from .test_lifecycle import condition, start_canary, status, traffic
from .test_shared_store import pinned, secret

JOBS, DEPLOYS = "batch/v1/jobs", "apps/v1/deployments"


def serve_params(args: list[str]) -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    return dict(group.commands["serve"].make_context("serve", args[1:]).params)


async def test_a_causal_lm_gets_generation_pods_sized_from_its_artifact(
    cluster: Cluster, operator: Any, s3_server: S3Server, tiny_llm: Path, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    store_uri = f"s3://{bucket}/llm/"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "Once upon a time"}) + "\n")
    compression = {
        "quantize": {"mode": "weightOnly", "bits": 8},
        "accuracyGate": {"metric": "kl", "max": 0.3},
    }
    doc = {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llm", "resourceVersion": "1"},
        "spec": {
            "model": {"uri": tiny_llm.as_uri(), "version": "v1", "sampleInputs": prompts.as_uri()},
            "compression": compression,
            "artifacts": {"uri": store_uri, "endpoint": s3_server.endpoint},
            "serving": {"generation": {"maxSequences": 4, "maxContext": 512}},
        },
    }
    async with operator():
        await cluster.apply(doc)
        job = await cluster.wait_for(lambda: next(iter(cluster.objects(JOBS)), None), what="Job")
        # What the Job runs, into the S3 store; its result is what the operator reads.
        outcome = compress(
            tiny_llm.as_uri(),
            Compression.model_validate(compression),
            s3_server.store(store_uri),
            sample_inputs=str(prompts),
        )
        assert outcome.manifest.kind == "causal-lm"
        result = compact_result(outcome.manifest, outcome.artifact_uri, cache_hit=False)
        await cluster.finish_job(job, 0, json.dumps(result))
        name = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS)), None), what="Deployment"
        )
        await cluster.make_ready(name)
        await cluster.wait_for(
            lambda: status(cluster, "llm").get("phase") == "Ready", what="phase Ready"
        )

    [container] = cluster.objects(DEPLOYS)[name]["spec"]["template"]["spec"]["containers"]
    params = serve_params(container["args"])
    assert (params["max_sequences"], params["max_context"]) == (4, 512)
    assert params["cache_key"] == outcome.manifest.cache_key

    size = outcome.manifest.report.compressed_bytes
    assert 4 << 20 < size < 16 << 20  # the tiny decoder's int8 folder
    assert container["startupProbe"]["failureThreshold"] == w.startup_failure_threshold(size)
    mib = 1 << 20
    assert container["resources"] == {
        "requests": {"memory": f"{-(-(size * 5 // 4 + 512 * mib) // mib)}Mi"},
        "limits": {"memory": f"{-(-(2 * size + 2048 * mib) // mib)}Mi"},
    }

    st = status(cluster, "llm")
    summary = st["revisions"][0]["environments"][0]["compression"]
    assert summary["kind"] == "causal-lm" and summary["variant"] == "int8-rtn-b32-emb8"
    assert st["variant"] == "int8-rtn-b32-emb8"  # what `kubectl get mdep` shows
    assert st["agreement"] == summary["accuracy"] == outcome.manifest.report.accuracy.mean


@pytest.mark.parametrize("kind", [None, "causal-lm"])
async def test_a_pinned_causal_lm_already_in_the_store_gets_no_job(
    cluster: Cluster,
    operator: Any,
    s3_server: S3Server,
    tiny_llm: Path,
    tmp_path: Path,
    kind: str | None,
) -> None:
    """Another cluster (or CI) compressed this folder with these settings: the operator finds
    the artifact by the LLM pipeline's own cache key, as it does for an encoder, and starts no
    compression Job (it used to look under the encoder's key, miss, and run a Job)."""
    bucket = s3_server.new_bucket()
    store_uri = f"s3://{bucket}/llm/"
    compression = {
        "quantize": {"mode": "weightOnly", "bits": 8},
        "accuracyGate": {"metric": "kl", "max": 0.3},  # a random tiny decoder: top-1 is low
    }
    outcome = compress(
        tiny_llm.as_uri(), Compression.model_validate(compression), s3_server.store(store_uri)
    )
    assert outcome.manifest.kind == "causal-lm" and not outcome.cache_hit
    doc = pinned(
        tiny_llm, outcome.manifest.source.sha256, store_uri, s3_server.endpoint, compression
    )
    if kind:
        doc["spec"]["model"]["kind"] = kind
    cluster.finder = StoreArtifactFinder()
    async with operator():
        await cluster.create(f"/api/v1/namespaces/{NS}/secrets", secret(NS))
        await cluster.apply(doc)
        name = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS)), None), what="Deployment"
        )
        assert cluster.objects(JOBS) == {}, "a Job compressed what the store already holds"
        await cluster.make_ready(name)
        await cluster.wait_for(
            lambda: status(cluster, "enc").get("phase") == "Ready", what="phase Ready"
        )
    env = status(cluster, "enc")["revisions"][0]["environments"][0]
    assert env["cacheKey"] == outcome.manifest.cache_key
    assert env["compression"]["cacheHit"] is True and env["compression"]["kind"] == "causal-lm"


@dataclass
class LlmMetrics:
    """A canary whose streams are slow or whose greedy answers disagree with stable's."""

    ttft_p99_ms: float = 300.0
    token_agreement: float = 0.98
    calls: list[AnalysisRequest] = field(default_factory=list)

    def measure(
        self, owner: w.Owner, spec: ModelDeploymentSpec, request: AnalysisRequest, now: datetime
    ) -> Measurements | None:
        self.calls.append(request)
        streams = 40 if request.serving else 0  # the router times only users' streams
        return Measurements(
            revision=request.revision,
            requests=40,
            interval_seconds=request.interval_seconds,
            generations=streams,
            ttft_p99_ms=self.ttft_p99_ms if streams else None,
            itl_p99_ms=25.0 if streams else None,
            token_comparisons=40 if request.mirroring else 0,
            token_agreement=self.token_agreement if request.mirroring else None,
        )


ANALYSIS = {
    "interval": "200ms",
    "failureLimit": 1,
    "minRequests": 10,
    "maxTimeToFirstTokenP99Ms": 1000,
    "minOutputAgreement": {"metric": "tokens", "min": 0.9},
}


async def test_a_slow_first_token_rolls_the_canary_back(cluster: Cluster, operator: Any) -> None:
    steps = {"steps": [{"setWeight": 20}, {"pause": {"duration": "1h"}}], "analysis": ANALYSIS}
    cluster.metrics = LlmMetrics(ttft_p99_ms=2500.0)  # type: ignore[assignment]
    async with operator():
        v1, _ = await start_canary(cluster, {"rollout": steps})
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Degraded", what="rollback")
        degraded = condition(cluster, "Degraded")
        assert degraded["reason"] == "AnalysisFailed"
        assert "p99 time to first token 2500.0 ms above 1000 ms" in degraded["message"]
        assert status(cluster)["analysis"]["timeToFirstTokenP99Ms"] == 2500.0
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 100}, what="stable takes all")


async def test_disagreeing_tokens_in_a_mirror_roll_the_canary_back(
    cluster: Cluster, operator: Any
) -> None:
    steps = {"steps": [{"mirror": {"percent": 100, "duration": "1h"}}], "analysis": ANALYSIS}
    metrics = LlmMetrics(token_agreement=0.31)
    cluster.metrics = metrics  # type: ignore[assignment]
    async with operator():
        v1, _ = await start_canary(cluster, {"rollout": steps})
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Degraded", what="rollback")
        degraded = condition(cluster, "Degraded")
        assert "output agreement (tokens) 0.3100 below 0.9" in degraded["message"]
        assert status(cluster)["analysis"]["outputAgreement"] == 0.31
        await cluster.wait_for(lambda: traffic(cluster) == {v1: 100}, what="stable takes all")
    # mirror only: the canary answered no user, so no stream was asked to be timed
    assert metrics.calls and not any(c.serving for c in metrics.calls)
