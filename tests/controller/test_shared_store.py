"""Two teams (two namespaces, as two clusters would be) point at one S3 store.

The first one's compression Job runs the real `compress` into a real S3 server (moto); the
second one, with the same model and settings, finds the artifact through the store and
compresses nothing.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from onnxship.api import Compression
from onnxship.compress import compress
from onnxship.compress.result import compact_result
from onnxship.controller.artifacts import StoreArtifactFinder
from onnxship.store import sha256_file
from tests.helpers import models
from tests.store.conftest import CREDENTIALS, REGION, S3Server

from .conftest import Cluster

JOBS, DEPLOYS = "batch/v1/jobs", "apps/v1/deployments"


def secret(namespace: str) -> dict[str, Any]:
    def b64(v: str) -> str:
        return base64.b64encode(v.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-creds", "namespace": namespace},
        "data": {
            "AWS_ACCESS_KEY_ID": b64(CREDENTIALS.access_key_id),
            "AWS_SECRET_ACCESS_KEY": b64(CREDENTIALS.secret_access_key),
        },
    }


def pinned(
    model: Path,
    sha: str,
    store_uri: str,
    endpoint: str,
    compression: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ModelDeployment "enc" of ``model`` pinned by digest, its artifacts in an S3 store
    reached with the "s3-creds" Secret."""
    spec: dict[str, Any] = {
        "model": {"uri": model.as_uri(), "sha256": sha, "version": "v1"},
        "artifacts": {
            "uri": store_uri,
            "endpoint": endpoint,
            "region": REGION,
            "credentialsSecret": "s3-creds",
        },
    }
    if compression is not None:
        spec["compression"] = compression
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "enc", "resourceVersion": "1"},
        "spec": spec,
    }


def status(cluster: Cluster, ns: str) -> dict[str, Any]:
    obj = cluster.get("onnxship.io/v1alpha1/modeldeployments", "enc", ns) or {}
    return obj.get("status") or {}


async def test_second_cluster_reuses_the_first_ones_artifact(
    cluster: Cluster,
    operator: Any,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    bucket = s3_server.new_bucket()
    store_uri = f"s3://{bucket}/shared/"
    model = models.save(models.mlp(), tmp_path / "model.onnx")
    sha, _ = sha256_file(model)
    doc = pinned(model, sha, store_uri, s3_server.endpoint, {"accuracyGate": {"min": 0.9}})
    cluster.finder = StoreArtifactFinder()
    async with operator():
        for ns in ("team-a", "team-b"):
            await cluster.create(f"/api/v1/namespaces/{ns}/secrets", secret(ns))

        # team-a: nothing in the store yet, so a Job compresses. Run what the Job runs.
        await cluster.apply(doc, namespace="team-a")
        job = await cluster.wait_for(
            lambda: next(iter(cluster.objects(JOBS, "team-a")), None), what="Job"
        )
        outcome = compress(
            model.as_uri(),
            Compression.model_validate(doc["spec"]["compression"]),
            s3_server.store(store_uri),
            expected_sha256=sha,
        )
        assert not outcome.cache_hit
        result = compact_result(outcome.manifest, outcome.artifact_uri, cache_hit=False)
        await cluster.finish_job(job, 0, json.dumps(result), namespace="team-a")
        deploy = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS, "team-a")), None), what="a"
        )
        await cluster.make_ready(deploy, "team-a")
        await cluster.wait_for(
            lambda: status(cluster, "team-a").get("phase") == "Ready", what="team-a Ready"
        )

        # team-b: the same model and settings: the operator finds the artifact, no Job.
        await cluster.apply(doc, namespace="team-b")
        deploy_b = await cluster.wait_for(
            lambda: next(iter(cluster.objects(DEPLOYS, "team-b")), None), what="b"
        )
        assert cluster.objects(JOBS, "team-b") == {}, "the second cluster compressed again"
        await cluster.make_ready(deploy_b, "team-b")
        await cluster.wait_for(
            lambda: status(cluster, "team-b").get("phase") == "Ready", what="team-b Ready"
        )

    a_env = status(cluster, "team-a")["revisions"][0]["environments"][0]
    b_env = status(cluster, "team-b")["revisions"][0]["environments"][0]
    assert a_env["cacheKey"] == b_env["cacheKey"] == outcome.manifest.cache_key
    assert a_env["compression"]["cacheHit"] is False and b_env["compression"]["cacheHit"] is True
    compressed = next(
        c for c in status(cluster, "team-b")["conditions"] if c["type"] == "Compressed"
    )
    assert compressed["reason"] == "ArtifactReused"
