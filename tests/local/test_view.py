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


def test_an_llm_canary_shows_its_variant_and_generation_figures() -> None:
    def llm(name: str, version: str, variant: str) -> RevisionStatus:
        summary = CompressionSummary(
            original_bytes=66_000_000, compressed_bytes=17_000_000, kind="causal-lm",
            variant=variant,
        )  # fmt: skip
        env = EnvironmentStatus(name="default", compression=summary)
        return RevisionStatus(name=name, model_version=version, environments=[env])

    revs = [
        llm("llm-1111111111", "v1", "int8-rtn-b32-emb8"),
        llm("llm-2222222222", "v2", "int4-hqq-b32-emb8"),
    ]
    status = ModelDeploymentStatus(
        phase="Degraded",
        stable_revision="llm-1111111111",
        canary_revision="llm-2222222222",
        aborted=True,
        analysis=AnalysisStatus(
            verdict="fail",
            requests=40,
            output_agreement=0.31,
            time_to_first_token_p99_ms=2480.0,
            inter_token_latency_p99_ms=31.5,
            message="output agreement (tokens) 0.3100 below 0.9",
        ),
        revisions=revs,
    )
    stats = {
        "llm-1111111111": RevisionStats(requests=60, ttft_p99_ms=240.0),
        "llm-2222222222": RevisionStats(requests=0, mirrored=40, token_agreement=0.31),
    }
    console = Console(width=200, record=True)
    console.print(render(Snapshot(name="llm", status=status, stats=stats)))
    text = console.export_text()
    for part in (
        "int8-rtn-b32-emb8",
        "int4-hqq-b32-emb8",
        "240 ms",
        "0.310",
        "time to first token p99 2480 ms",
        "inter-token p99 31.5 ms",
        "output agreement (tokens) 0.3100 below 0.9",
    ):
        assert part in text, text


def test_an_encoder_view_has_no_generation_columns() -> None:
    status = ModelDeploymentStatus(
        phase="Ready", stable_revision="encoder-1", revisions=[revision("encoder-1", "v1")]
    )
    console = Console(width=200, record=True)
    console.print(render(Snapshot(name="encoder", status=status)))
    assert "ttft" not in console.export_text()
