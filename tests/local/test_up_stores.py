"""`onnxship up` with an S3 artifact store, and with a compression that fails its gate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from onnxship.local.loadgen import LoadGenerator, infer_url

from .conftest import Up, write_spec

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="artifacts"
    )
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.mark.slow
def test_up_with_an_s3_store(
    tmp_path: Path,
    demo_models: dict[str, Path],
    up_factory: Callable[[], Up],
    s3_endpoint: str,
) -> None:
    spec = write_spec(
        tmp_path,
        demo_models,
        "v1",
        artifacts={"uri": "s3://artifacts/team-a/", "endpoint": s3_endpoint, "region": "us-east-1"},
    )
    up = up_factory().start(str(spec), env=S3_ENV)
    status = up.wait_for("v1 stable", lambda s: s.phase == "Ready")
    record = status.revisions[0]
    assert record.environments[0].artifact_uri.startswith("s3://artifacts/team-a/")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]]
    assert any(k.startswith("team-a/manifests/") for k in keys)
    assert not (up.cwd / ".onnxship" / "manifests").exists()  # nothing in the local store
    with LoadGenerator(infer_url(up.endpoint, "encoder"), rate=20) as load:
        time.sleep(1.5)
    assert load.stats.ok > 0 and load.stats.errors == 0
    assert up.interrupt() == 0


def test_a_failed_accuracy_gate_is_reported_and_nothing_is_served(
    tmp_path: Path, demo_models: dict[str, Path], up_factory: Callable[[], Up]
) -> None:
    spec = write_spec(
        tmp_path,
        demo_models,
        "v1",
        compression={
            "quantize": {"mode": "dynamic"},
            "prune": {"sparsity": 0.9},
            "accuracyGate": {"metric": "cosine", "min": 0.999},
        },
    )
    up = up_factory().start(str(spec), ui="live")  # the live view's code path, without a TTY
    status = up.wait_for("the gate to fail", lambda s: s.phase == "Degraded")
    compressed = next(c for c in status.conditions if c.type == "Compressed")
    assert compressed.status == "False" and compressed.reason == "AccuracyGateFailed"
    assert "0.999" in compressed.message
    assert status.stable_revision == "" and status.revisions == []
    assert (up.state.read_runtime() or {}).get("processes") == {}
    assert up.interrupt() == 0
    assert "AccuracyGateFailed" in up.output() or "accuracy" in up.output().lower()
