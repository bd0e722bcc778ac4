"""Compression against real S3 (moto over HTTP) and an HTTP source; crash before the manifest."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxship.api import Compression
from onnxship.compress import SourceAccess, SourceError, compress
from tests.compress.conftest import ModelOnDisk
from tests.store.conftest import CREDENTIALS, REGION, S3Server


def upload_folder(server: S3Server, bucket: str, prefix: str, folder: Path) -> None:
    client = server.client()
    for path in folder.iterdir():
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


def test_s3_source_with_external_data_to_an_s3_store_and_back(
    s3_server: S3Server, external: ModelOnDisk, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    upload_folder(s3_server, bucket, "models/enc/v1", external.path.parent)
    store = s3_server.store(f"s3://{bucket}/artifacts/")
    access = SourceAccess(endpoint=s3_server.endpoint, region=REGION, credentials=CREDENTIALS)

    outcome = compress(
        f"s3://{bucket}/models/enc/v1/model.onnx",
        Compression(),
        store,
        sample_inputs=f"s3://{bucket}/models/enc/v1/samples.npz",
        source_access=access,
    )
    assert (
        outcome.artifact_uri
        == f"s3://{bucket}/artifacts/manifests/{outcome.manifest.cache_key}.json"
    )
    assert outcome.manifest.report.accuracy is not None
    assert not outcome.manifest.report.accuracy.synthetic_inputs

    # Another cluster pointing at the same bucket finds the work done.
    other = s3_server.store(f"s3://{bucket}/artifacts/")
    again = compress(
        f"s3://{bucket}/models/enc/v1/model.onnx",
        Compression(),
        other,
        sample_inputs=f"s3://{bucket}/models/enc/v1/samples.npz",
        source_access=access,
    )
    assert again.cache_hit

    model = other.fetch(again.manifest, tmp_path / "pod")
    with np.load(external.samples) as z:
        y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
            None, {"x": z["x"]}
        )[0]
    assert y.shape == (16, 8, 64)


def test_a_crash_between_blob_upload_and_manifest_leaves_no_manifest_and_a_retry_completes(
    s3_server: S3Server, mlp: ModelOnDisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_server.store(f"s3://{s3_server.new_bucket()}/a/")

    def killed(key: str, text: str) -> None:
        raise SystemExit("operator pod killed before the manifest was written")

    with monkeypatch.context() as m:
        m.setattr(store, "_put_text", killed)
        with pytest.raises(SystemExit):
            compress(mlp.uri, Compression(), store, sample_inputs=str(mlp.samples))
    assert store.list_manifests() == []

    retry = compress(mlp.uri, Compression(), store, sample_inputs=str(mlp.samples))
    assert not retry.cache_hit
    assert store.get_manifest(retry.manifest.cache_key) == retry.manifest
    assert store.fetch(retry.manifest, tmp_path / "pod").is_file()


def test_missing_source_object_is_a_source_error(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    access = SourceAccess(endpoint=s3_server.endpoint, region=REGION, credentials=CREDENTIALS)
    with pytest.raises(SourceError, match="no such object"):
        compress(
            f"s3://{bucket}/models/missing.onnx",
            Compression(),
            s3_server.store(f"s3://{bucket}/a/"),
            source_access=access,
        )


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_http_source(http_folder: tuple[str, Path], mlp: ModelOnDisk, file_store) -> None:  # type: ignore[no-untyped-def]
    base, folder = http_folder
    (folder / "model.onnx").write_bytes(mlp.path.read_bytes())
    outcome = compress(f"{base}/model.onnx", Compression(), file_store)
    assert outcome.manifest.source.uri == f"{base}/model.onnx"
    with pytest.raises(SourceError, match="HTTP 404"):
        compress(f"{base}/missing.onnx", Compression(), file_store)
