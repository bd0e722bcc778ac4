"""The operator's look-ups of published artifacts (controller/artifacts.py), on moto's S3.

1,000 ModelDeployments of one pinned model applied at once looked the same manifest up 1,000
times; a manifest's key is a digest of what it was made from, so what it says never changes:
one look-up serves them all for a while, and a miss is never kept (a Job may publish it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxship.api import Compression
from onnxship.compress import compress
from onnxship.controller import artifacts
from onnxship.controller.artifacts import StoreArtifactFinder
from onnxship.plan.workloads import StoreRef
from onnxship.store import sha256_file
from tests.helpers import models
from tests.store.conftest import CREDENTIALS, REGION, S3Server

KEYS = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS.access_key_id,
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS.secret_access_key,
}


def test_a_found_manifest_is_read_once_a_miss_every_time(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/shared/"
    ref = StoreRef(uri, s3_server.endpoint, REGION, "s3-creds")
    model = models.save(models.mlp(), tmp_path / "model.onnx")
    sha, _ = sha256_file(model)
    settings = Compression()
    finder = StoreArtifactFinder()

    def find() -> dict | None:
        return finder.find(ref, KEYS, sha, settings, "CPU", kind="onnx")

    assert find() is None, "nothing published yet"
    outcome = compress(model.as_uri(), settings, s3_server.store(uri), expected_sha256=sha)
    assert find() is not None, "a miss was kept: the published manifest is not seen"

    found = find()
    assert found is not None and found["cacheKey"] == outcome.manifest.cache_key
    # Gone from the store behind the operator's back: still known for a while...
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix="shared/")["Contents"]
    manifests = [o["Key"] for o in listed if "manifest" in o["Key"]]
    assert manifests
    for key in manifests:
        client.delete_object(Bucket=bucket, Key=key)
    assert find() == found
    found["cacheKey"] = "changed by a caller"
    assert find()["cacheKey"] == outcome.manifest.cache_key, "callers get their own copy"
    # ... and looked up again once that while is over.
    monkeypatch.setattr(artifacts, "MANIFEST_TTL_S", 0.0)
    assert find() is None
