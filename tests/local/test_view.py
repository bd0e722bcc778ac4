"""What `onnxship status` and the live view show, from a status alone."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from onnxship.api import (
    AnalysisStatus,
    CompressionSummary,
    EnvironmentStatus,
    ModelDeploymentStatus,
    RevisionStatus,
)
from onnxship.local.spec import resolve_file_uri
from onnxship.local.view import RevisionStats, Snapshot, render, weights


def revision(name: str, version: str) -> RevisionStatus:
    return RevisionStatus(
        name=name,
        model_version=version,
        size_bytes=2_000_000,
        compression_ratio=0.27,
        accuracy=0.9998,
        environments=[
            EnvironmentStatus(
                name="default",
                compression=CompressionSummary(
                    original_bytes=7_400_000, compressed_bytes=2_000_000
                ),
            )
        ],
    )


def test_a_canary_in_the_view() -> None:
    status = ModelDeploymentStatus(
        phase="Progressing",
        stable_revision="encoder-1111111111",
        canary_revision="encoder-2222222222",
        canary_weight=25,
        current_step=2,
        message="canary encoder-2222222222 at 25% (step 3/5)",
        analysis=AnalysisStatus(verdict="pass", error_rate=0.0, requests=40),
        revisions=[revision("encoder-1111111111", "v1"), revision("encoder-2222222222", "v2")],
    )
    assert weights(status) == {"encoder-1111111111": 75, "encoder-2222222222": 25}
    snap = Snapshot(
        name="encoder",
        status=status,
        endpoint="http://127.0.0.1:8080",
        running=True,
        stats={"encoder-2222222222": RevisionStats(requests=10, errors=1, p50_ms=4.2, mirrored=5)},
    )
    console = Console(width=160, record=True)
    console.print(render(snap))
    text = console.export_text()
    for part in (
        "Progressing",
        "75%",
        "25%",
        "7.4→2.0 MB",
        "v2",
        "canary",
        "4.2 ms",
        "+5 mirrored",
    ):
        assert part in text, text


def test_an_aborted_canary_takes_no_traffic() -> None:
    status = ModelDeploymentStatus(
        phase="Degraded",
        stable_revision="encoder-1111111111",
        canary_revision="encoder-3333333333",
        aborted=True,
        revisions=[revision("encoder-1111111111", "v2"), revision("encoder-3333333333", "v3")],
    )
    console = Console(width=160, record=True)
    console.print(render(Snapshot(name="encoder", status=status)))
    text = console.export_text()
    assert "aborted" in text and "not running" in text
    assert weights(status) == {"encoder-1111111111": 100, "encoder-3333333333": 0}


def test_relative_file_uris_follow_the_spec_file(tmp_path: Path) -> None:
    assert resolve_file_uri("file://models/v1/model.onnx", tmp_path) == (
        (tmp_path / "models/v1/model.onnx").as_uri()
    )
    assert resolve_file_uri("file:///abs/model.onnx", tmp_path) == "file:///abs/model.onnx"
    assert resolve_file_uri("s3://b/k.onnx", tmp_path) == "s3://b/k.onnx"
