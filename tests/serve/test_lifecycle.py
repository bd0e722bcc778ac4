"""Start-up and shutdown as a pod sees them: exit codes, readiness, SIGTERM mid-request."""

from __future__ import annotations

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from onnxship.api import ArtifactManifest, Compression, CompressionReport, SourceInfo, ToolVersions
from onnxship.store import describe, open_store

from .conftest import StartServer
from .server import CLI

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.1] * 32}]}


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    start_server: StartServer, model_dir: Path
) -> None:
    # Requests wait up to 1.5 s for a batch to fill: SIGTERM lands while they are in flight.
    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp",
        "--max-batch-size", "64", "--max-batch-delay-ms", "1500",
    )  # fmt: skip
    url = f"{server.url}/v2/models/mlp/infer"
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(httpx.post, url, json=BODY, timeout=20) for _ in range(3)]
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{server.url}/v2/health/ready")
        late = httpx.post(url, json=BODY)
        assert [f.result().status_code for f in in_flight] == [200, 200, 200]
    assert ready.status_code == 503
    assert late.status_code == 503
    assert "shutting down" in late.json()["error"]
    assert server.proc.wait(20) == 0
    assert "draining" in server.output()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "serve", *args], capture_output=True, text=True, timeout=60)


def test_missing_model_file_exits_not_found(tmp_path: Path) -> None:
    result = run_cli(
        "--model", str(tmp_path / "absent.onnx"), "--http-port", "0", "--grpc-port", "-1"
    )
    assert result.returncode == 8, result.stderr
    assert "absent.onnx: no such model file" in result.stderr


def test_not_an_onnx_file_exits_invalid_model(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    result = run_cli("--model", str(tmp_path), "--http-port", "0", "--grpc-port", "-1")
    assert result.returncode == 4, result.stderr
    assert "cannot load the model" in result.stderr


def test_missing_execution_provider_is_a_startup_error_not_a_cpu_fallback(model_dir: Path) -> None:
    result = run_cli(
        "--model", str(model_dir / "mlp.onnx"), "--execution-provider", "TensorRT",
        "--http-port", "0", "--grpc-port", "-1",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "'TensorRT' is not available" in result.stderr
    assert "CPUExecutionProvider" in result.stderr


def test_model_source_is_required_and_unique(model_dir: Path) -> None:
    neither = run_cli("--http-port", "0")
    both = run_cli(
        "--model", str(model_dir / "mlp.onnx"), "--store", "file:///x", "--cache-key", "k"
    )
    assert (neither.returncode, both.returncode) == (2, 2)
    assert "model path" in neither.stderr and "not both" in both.stderr


@pytest.fixture
def file_store(tmp_path: Path, model_dir: Path) -> tuple[str, str]:
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((model_dir / "mlp.onnx").read_bytes())
    blobs = describe(folder, ["model.onnx"])
    manifest = ArtifactManifest(
        cache_key="cd" * 16,
        source=SourceInfo(uri="file:///src/mlp.onnx", sha256=blobs[0].digest),
        compression=Compression(),
        blobs=blobs,
        report=CompressionReport(
            original_bytes=blobs[0].size, compressed_bytes=blobs[0].size, ratio=1.0
        ),
        tools=ToolVersions(onnxship="0", onnx="0", onnxruntime="0"),
        created_at=datetime.now(UTC).isoformat(),
    )
    uri = (tmp_path / "store").as_uri()
    open_store(uri).publish(manifest, folder)
    return uri, manifest.cache_key


def test_serves_an_artifact_from_the_store(
    start_server: StartServer, file_store: tuple[str, str], tmp_path: Path
) -> None:
    uri, key = file_store
    server = start_server(
        "--store", uri, "--cache-key", key, "--cache-dir", str(tmp_path / "cache"), "--name", "mlp"
    )
    r = httpx.post(f"{server.url}/v2/models/mlp/infer", json=BODY)
    assert r.status_code == 200
    assert (tmp_path / "cache" / key / "model.onnx").is_file()


def test_unknown_cache_key_and_corrupt_blob_are_startup_errors(
    file_store: tuple[str, str], tmp_path: Path
) -> None:
    uri, key = file_store
    result = run_cli(
        "--store", uri, "--cache-key", "ef" * 16, "--http-port", "0", "--grpc-port", "-1"
    )
    assert result.returncode == 8, result.stderr
    assert "no artifact with cache key" in result.stderr
    for blob in (tmp_path / "store" / "blobs").rglob("*"):
        if blob.is_file():
            blob.write_bytes(b"corrupt" + blob.read_bytes()[7:])
    result = run_cli(
        "--store",
        uri,
        "--cache-key",
        key,
        "--cache-dir",
        str(tmp_path / "c2"),
        "--http-port",
        "0",
        "--grpc-port",
        "-1",
    )
    assert result.returncode == 6, result.stderr
    assert "cannot fetch artifact" in result.stderr
