"""S3 goes away in the middle of a multipart upload of a compressed model, then comes back.

A real moto server on 127.0.0.1 is stopped from the upload's own progress callback once two
parts have been read, and started again on the same port (moto keeps its objects in memory,
so the bucket survives). Either botocore's retries ride out a short outage and the compression
publishes, or it fails with a StoreError naming the store; in no case does the store hold a
manifest whose blobs are missing or do not match their digests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from onnxship.api import Compression
from onnxship.compress import compress
from onnxship.store import Progress, StoreError
from onnxship.store import s3 as s3_module
from tests.helpers import models
from tests.store.conftest import S3Server

PART = 5 * 1024 * 1024  # S3's smallest part: a 16 MB model goes up in four


class Moto:
    """A moto server that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.up = True

    def stop(self) -> None:
        if self.up:
            self.server.stop()
            self.up = False

    def start(self) -> None:
        if not self.up:
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.server = ThreadedMotoServer(
                        ip_address="127.0.0.1", port=self.port, verbose=False
                    )
                    self.server.start()
                    break
                except OSError:  # the port lingers for a moment after the stop
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            self.up = True


@pytest.fixture
def moto() -> Iterator[Moto]:
    server = Moto()
    yield server
    server.stop()


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Multipart from 5 MiB up (the store's own settings, not boto3's), to keep models small."""
    monkeypatch.setattr(s3_module, "MULTIPART", PART)
    monkeypatch.setattr(s3_module, "PART", PART)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    # 1024 x 2048 + 2048 x 1024 float32 weights: 16 MiB of random (incompressible) bytes.
    return models.save(models.mlp(hidden=2048, inputs=1024, outputs=1024), folder / "model.onnx")


# No optimization or quantization: the blob stays ~16 MiB and the test stays quick.
PLAIN = Compression.model_validate({"optimize": "none", "quantize": {"mode": "none"}})


def assert_consistent(moto: Moto, uri: str, tmp: Path) -> int:
    """Every manifest's blobs are present and verify on download; the number of manifests."""
    store = S3Server(moto.endpoint).store(uri)
    manifests = store.list_manifests()
    for m in manifests:
        store.fetch(m, tmp / f"fetch-{time.time_ns()}")  # raises on a missing or bad blob
    return len(manifests)


def stop_mid_upload(moto: Moto, restart_after: float | None) -> tuple[Progress, threading.Event]:
    """A progress listener that stops S3 once two parts of the model have been read."""
    stopped = threading.Event()

    def listener(task: str, done: int, total: int | None) -> None:
        if task.startswith("upload") and done >= 2 * PART and not stopped.is_set():
            stopped.set()
            moto.stop()
            if restart_after is not None:
                threading.Timer(restart_after, moto.start).start()

    return listener, stopped


def test_a_short_outage_is_retried_and_the_model_published(
    moto: Moto, small_parts: None, big_model: Path, tmp_path: Path
) -> None:
    server = S3Server(moto.endpoint)
    uri = f"s3://{server.new_bucket()}/team-a/"
    store = server.store(uri)
    listener, stopped = stop_mid_upload(moto, restart_after=1.0)
    start = time.monotonic()
    outcome = compress(big_model.as_uri(), PLAIN, store, progress=listener)
    took = time.monotonic() - start
    assert stopped.is_set(), "the outage never happened: the upload was not multipart?"
    assert outcome.manifest.blobs[0].size > 3 * PART
    assert assert_consistent(moto, uri, tmp_path) == 1
    print(f"published through a 1 s outage in {took:.1f} s")


def test_a_long_outage_fails_cleanly_and_a_retry_publishes(
    moto: Moto,
    small_parts: None,
    big_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Two attempts per request, so that "down for good" is reached in seconds, not minutes.
    monkeypatch.setattr(s3_module, "MAX_ATTEMPTS", 2)
    server = S3Server(moto.endpoint)
    uri = f"s3://{server.new_bucket()}/team-a/"
    listener, stopped = stop_mid_upload(moto, restart_after=None)
    with pytest.raises(StoreError) as err:
        compress(big_model.as_uri(), PLAIN, server.store(uri), progress=listener)
    assert stopped.is_set()
    assert moto.endpoint.removeprefix("http://") in str(err.value) or "S3" in str(err.value)
    moto.start()
    # Back: nothing half-published is visible, and the same compression now succeeds.
    assert assert_consistent(moto, uri, tmp_path) == 0
    blobs = server.client().list_objects_v2(Bucket=uri[5:].split("/")[0], Prefix="team-a/blobs/")
    assert blobs.get("KeyCount", 0) == 0, "a partial upload is visible as a blob"
    # The outage did hit a multipart upload: it is still open (its abort could not reach S3).
    # Incomplete uploads are invisible to readers; a bucket lifecycle rule
    # (AbortIncompleteMultipartUpload) reclaims their parts.
    bucket = uri[5:].split("/")[0]
    assert server.client().list_multipart_uploads(Bucket=bucket).get("Uploads"), "not multipart"
    outcome = compress(big_model.as_uri(), PLAIN, server.store(uri))
    assert not outcome.cache_hit
    assert assert_consistent(moto, uri, tmp_path) == 1
