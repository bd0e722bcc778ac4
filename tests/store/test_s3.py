"""S3-only behaviour: multipart and ranged transfers, errors users meet, corrupt objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxship.store import (
    IntegrityError,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
    open_store,
    s3,
)
from tests.store.conftest import CREDENTIALS, S3Server
from tests.store.test_store_contract import draft, make_files


def test_large_blobs_use_multipart_upload_and_parallel_ranged_download(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shrink the thresholds so a 1.2 MB file takes the multi-GB code paths (5 MiB is S3's
    # minimum part size, so the part size stays there and the file spans several ranges).
    monkeypatch.setattr(s3, "MULTIPART", 1024 * 1024)
    monkeypatch.setattr(s3, "PART", 256 * 1024)
    monkeypatch.setattr(s3, "RANGE_WINDOW", 2)
    store = s3_server.store(f"s3://{s3_server.new_bucket()}/")
    store._transfer = s3.TransferConfig(  # type: ignore[attr-defined]
        multipart_threshold=1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=2
    )
    src = make_files(tmp_path / "out", {"model.onnx": 1000, "big.bin": 12 * 1024 * 1024 // 10})
    stored = store.publish(draft(src, ["model.onnx", "big.bin"]), src)
    seen: list[int] = []
    store.fetch(stored, tmp_path / "dest", lambda task, done, total: seen.append(done))
    assert (tmp_path / "dest" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert seen == sorted(seen) or len(seen) > 4  # progress moved forward through the ranges


def test_corrupt_object_in_the_bucket_is_detected(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store = s3_server.store(f"s3://{bucket}/p/")
    src = make_files(tmp_path / "out", {"model.onnx": 5000})
    stored = store.publish(draft(src, ["model.onnx"]), src)
    key = f"p/blobs/sha256/{stored.blobs[0].digest}"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"x" * 5000)
    with pytest.raises(IntegrityError, match="corrupt blob"):
        store.fetch(stored, tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.onnx").exists()


def test_missing_bucket_is_named(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_server.store("s3://no-such-bucket/x/")
    src = make_files(tmp_path / "out", {"model.onnx": 10})
    with pytest.raises(StoreNotFound, match=r"no-such-bucket.*does not exist"):
        store.publish(draft(src, ["model.onnx"]), src)
    with pytest.raises(StoreNotFound, match="does not exist"):
        store.get_manifest("ab" * 16)


def test_unreachable_endpoint_is_unavailable_and_hides_the_secret(
    free_port, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(s3, "MAX_ATTEMPTS", 2)  # the default backs off for seconds
    store = open_store(
        "s3://bucket/",
        endpoint=f"http://127.0.0.1:{free_port()}",
        credentials=CREDENTIALS,
    )
    with pytest.raises(StoreUnavailable, match="cannot reach") as err:
        store.get_manifest("ab" * 16)
    assert CREDENTIALS.secret_access_key not in str(err.value)
    assert CREDENTIALS.secret_access_key not in repr(CREDENTIALS)


def test_a_uri_that_is_not_a_store_is_refused() -> None:
    with pytest.raises(StoreError, match="s3:// or file://"):
        open_store("http://example.com/store")
