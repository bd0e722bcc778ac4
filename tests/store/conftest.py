"""A real S3 server (moto's ThreadedMotoServer) on 127.0.0.1, and stores on it and on disk.

The server runs once per session; every test gets its own bucket, so tests do not see each
other's objects. boto3 is never patched: requests go over HTTP to the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from onnxship.store import ArtifactStore, S3Credentials, open_store

CREDENTIALS = S3Credentials(access_key_id="testing", secret_access_key="testing-secret")
REGION = "us-east-1"
_buckets = itertools.count()


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS.access_key_id,
            aws_secret_access_key=CREDENTIALS.secret_access_key,
        )

    def new_bucket(self) -> str:
        name = f"artifacts-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def store(self, uri: str) -> ArtifactStore:
        return open_store(uri, endpoint=self.endpoint, region=REGION, credentials=CREDENTIALS)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 over real HTTP on a free port of 127.0.0.1, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """The same contract on both backends: a file:// folder and a fresh bucket on moto."""
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    server: S3Server = request.getfixturevalue("s3_server")
    return server.store(f"s3://{server.new_bucket()}/team-a/")
