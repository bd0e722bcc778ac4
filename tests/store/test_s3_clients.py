"""What an open S3 store costs a long-lived process (the operator keeps one per store and
credentials: teams with their own buckets or keys each add one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from onnxship.store import ArtifactStore, S3Credentials, open_store

from .conftest import REGION, S3Server


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process's RSS from /proc")
def test_each_further_s3_store_costs_little_memory(s3_server: S3Server) -> None:
    buckets = [s3_server.new_bucket() for _ in range(9)]

    def open_for(team: int) -> ArtifactStore:
        creds = S3Credentials(f"AKIATEAM{team:04d}", "secret")
        store = open_store(
            f"s3://{buckets[team]}/models/",
            endpoint=s3_server.endpoint,
            region=REGION,
            credentials=creds,
        )
        assert store.get_manifest("a" * 64) is None  # a lookup, as the operator makes
        return store

    first = open_for(0)  # the first one parses botocore's S3 service model: ~15 MB, once
    before = rss_mb()
    kept = [open_for(team) for team in range(1, 9)]
    grown = rss_mb() - before
    # A boto3 Session per client parsed the model again: ~12 MB each, ~100 MB for these 8.
    assert grown < 30, f"8 more S3 stores took {grown:.0f} MB (one botocore loader is shared)"
    assert len({id(store) for store in [first, *kept]}) == 9  # all kept open, as the operator does
