"""The compression pipeline end to end on a file:// store, with real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxship.api import Compression
from onnxship.compress import AccuracyGateError, SourceError, compress
from onnxship.store import ArtifactStore
from tests.compress.conftest import ModelOnDisk


def settings(**spec: object) -> Compression:
    return Compression.model_validate(spec)


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_of(model: ModelOnDisk) -> dict[str, np.ndarray]:
    with np.load(model.samples) as z:
        return {k: z[k] for k in z.files}


MODES = {
    "dynamic-per-channel": {"quantize": {"mode": "dynamic", "perChannel": True}},
    "dynamic-per-tensor-uint8": {
        "quantize": {"mode": "dynamic", "perChannel": False, "weightType": "uint8"}
    },
    "static": {"quantize": {"mode": "static"}},
    "fp16": {"quantize": {"mode": "fp16"}},
    "optimize-only": {"optimize": "all", "quantize": {"mode": "none"}},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model_name", ["mlp", "encoder", "cnn"])
def test_every_mode_publishes_a_model_that_answers_like_the_original(
    request: pytest.FixtureRequest,
    model_name: str,
    mode: str,
    file_store: ArtifactStore,
    tmp_path: Path,
) -> None:
    model: ModelOnDisk = request.getfixturevalue(model_name)
    compression = settings(**MODES[mode], accuracyGate={"metric": "cosine", "min": 0.98})

    outcome = compress(model.uri, compression, file_store, sample_inputs=str(model.samples))

    assert not outcome.cache_hit
    report = outcome.manifest.report
    assert report.accuracy is not None and report.accuracy.passed
    assert report.accuracy.samples == 16 and not report.accuracy.synthetic_inputs
    assert report.original_bytes == model.path.stat().st_size
    if mode != "optimize-only":
        assert report.compressed_bytes < report.original_bytes
    assert file_store.get_manifest(outcome.manifest.cache_key) == outcome.manifest
    # What a serving pod does: fetch the artifact and run it.
    fetched = file_store.fetch(outcome.manifest, tmp_path / "serve")
    feeds = feeds_of(model)
    before, after = run(model.path, feeds)[0], run(fetched, feeds)[0]
    cos = np.sum(before * after) / (np.linalg.norm(before) * np.linalg.norm(after))
    assert cos > 0.98


def test_same_model_and_settings_is_a_cache_hit_that_does_no_work(
    mlp: ModelOnDisk, file_store: ArtifactStore
) -> None:
    first = compress(mlp.uri, Compression(), file_store, sample_inputs=str(mlp.samples))
    steps: list[str] = []
    second = compress(
        mlp.uri,
        Compression(),
        file_store,
        sample_inputs=str(mlp.samples),
        progress=lambda task, done, total: steps.append(task),
    )
    assert second.cache_hit and second.manifest.cache_key == first.manifest.cache_key
    assert second.manifest.blobs == first.manifest.blobs
    assert "quantize" not in steps and "accuracy" not in steps
    assert len(file_store.list_manifests()) == 1


def test_other_settings_or_another_model_never_share_an_entry(
    mlp: ModelOnDisk, encoder: ModelOnDisk, file_store: ArtifactStore
) -> None:
    dynamic = {"mode": "dynamic"}
    a = compress(mlp.uri, settings(quantize=dynamic), file_store)
    b = compress(mlp.uri, settings(quantize={**dynamic, "perChannel": False}), file_store)
    c = compress(encoder.uri, settings(quantize=dynamic), file_store)
    assert len({a.manifest.cache_key, b.manifest.cache_key, c.manifest.cache_key}) == 3
    # With an explicit mode the accuracy gate decides whether to publish, not what is
    # published: same key.
    d = compress(mlp.uri, settings(quantize=dynamic, accuracyGate={"min": 0.5}), file_store)
    assert d.cache_hit and d.manifest.cache_key == a.manifest.cache_key
    # quantize auto: the gate picks the candidate published, so it is part of the key.
    e = compress(mlp.uri, Compression(), file_store)
    f = compress(mlp.uri, settings(accuracyGate={"min": 0.5}), file_store)
    assert not f.cache_hit and f.manifest.cache_key != e.manifest.cache_key


def test_a_cache_hit_is_still_judged_by_the_current_gate(
    mlp: ModelOnDisk, file_store: ArtifactStore
) -> None:
    dynamic = {"mode": "dynamic"}
    compress(
        mlp.uri,
        settings(quantize=dynamic, accuracyGate={"min": 0.5}),
        file_store,
        sample_inputs=str(mlp.samples),
    )
    with pytest.raises(AccuracyGateError) as err:
        compress(
            mlp.uri,
            settings(quantize=dynamic, accuracyGate={"min": 0.999999}),
            file_store,
            sample_inputs=str(mlp.samples),
        )
    assert err.value.report.threshold == 0.999999
    assert "0.999999" in str(err.value)


def test_a_failing_gate_publishes_nothing_and_names_the_figure_and_threshold(
    mlp: ModelOnDisk, file_store: ArtifactStore
) -> None:
    harsh = settings(prune={"sparsity": 0.9}, quantize={"mode": "none"}, accuracyGate={"min": 0.99})
    with pytest.raises(AccuracyGateError, match=r"cosine 0\.\d+ < 0\.99") as err:
        compress(mlp.uri, harsh, file_store, sample_inputs=str(mlp.samples))
    assert not err.value.report.passed and err.value.report.mean < 0.99
    assert file_store.list_manifests() == []


def test_pruning_zeroes_weights_and_the_store_keeps_them_compressed(
    encoder: ModelOnDisk, file_store: ArtifactStore, tmp_path: Path
) -> None:
    pruned = settings(
        optimize="none",
        prune={"sparsity": 0.7},
        quantize={"mode": "none"},
        accuracyGate={"min": 0.0},
    )
    outcome = compress(encoder.uri, pruned, file_store, sample_inputs=str(encoder.samples))
    model = onnx.load(str(file_store.fetch(outcome.manifest, tmp_path / "out")))
    w1 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    assert np.mean(w1 == 0) >= 0.7
    gamma = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "g1"))
    assert np.all(gamma == 1)  # norms are not weights to prune
    blob = outcome.manifest.blobs[0]
    assert blob.encoding == "zstd" and blob.stored_size < blob.size
    assert any("prune" in note for note in outcome.manifest.report.notes)


def test_without_samples_inputs_are_made_up_and_the_report_says_so(
    encoder: ModelOnDisk, file_store: ArtifactStore
) -> None:
    outcome = compress(encoder.uri, Compression(), file_store)
    accuracy = outcome.manifest.report.accuracy
    assert accuracy is not None and accuracy.synthetic_inputs
    assert any("no sample inputs" in note for note in outcome.manifest.report.notes)


def test_the_report_has_sizes_latency_step_times_and_tool_versions(
    mlp: ModelOnDisk, file_store: ArtifactStore
) -> None:
    outcome = compress(mlp.uri, Compression(), file_store, sample_inputs=str(mlp.samples))
    m = outcome.manifest
    assert m.report.ratio == pytest.approx(
        m.report.compressed_bytes / m.report.original_bytes, rel=1e-4
    )
    assert m.report.original_latency_ms and m.report.compressed_latency_ms
    assert {"fetch", "validate", "optimize", "search"} <= set(m.report.step_seconds)
    assert m.tools.onnxruntime == ort.__version__ and m.tools.onnx == onnx.__version__
    chosen = [c for c in m.report.candidates if c.chosen]
    assert len(chosen) == 1 and m.report.steps[-1:] == chosen[0].steps
    assert chosen[0].bytes == m.report.compressed_bytes
    assert all(c.bytes >= chosen[0].bytes for c in m.report.candidates if c.passed)
    assert m.report.samples_digest and m.report.accuracy is not None
    explicit = compress(
        mlp.uri, settings(quantize={"mode": "dynamic"}), file_store, sample_inputs=str(mlp.samples)
    ).manifest.report
    assert {"quantize", "accuracy"} <= set(explicit.step_seconds)
    assert explicit.steps == ["optimize:extended", "quantize:dynamic:int8:per-channel"]


def test_a_sha256_pin_that_does_not_match_stops_everything(
    mlp: ModelOnDisk, file_store: ArtifactStore
) -> None:
    with pytest.raises(SourceError, match="sha256 mismatch"):
        compress(mlp.uri, Compression(), file_store, expected_sha256="0" * 64)
    assert file_store.list_manifests() == []


def test_top1_gate_on_a_classifier(cnn: ModelOnDisk, file_store: ArtifactStore) -> None:
    outcome = compress(
        cnn.uri,
        settings(accuracyGate={"metric": "top1", "min": 0.8}),
        file_store,
        sample_inputs=str(cnn.samples),
    )
    accuracy = outcome.manifest.report.accuracy
    assert (
        accuracy is not None and accuracy.metric == "top1" and accuracy.top1_agreement is not None
    )
    assert accuracy.mean == accuracy.top1_agreement >= 0.8


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_static_calibration_methods(
    mlp: ModelOnDisk, file_store: ArtifactStore, calibration: str
) -> None:
    outcome = compress(
        mlp.uri,
        settings(
            quantize={"mode": "static", "calibration": calibration}, accuracyGate={"min": 0.9}
        ),
        file_store,
        sample_inputs=str(mlp.samples),
    )
    notes = " ".join(outcome.manifest.report.notes)
    assert f"{calibration.capitalize()} calibration on 16 samples" in notes


def test_shrink_pruning(encoder: ModelOnDisk, file_store: ArtifactStore) -> None:
    outcome = compress(
        encoder.uri,
        settings(
            prune={"sparsity": 0.5, "method": "shrink"},
            quantize={"mode": "none"},
            accuracyGate={"min": 0.0},
        ),
        file_store,
        sample_inputs=str(encoder.samples),
    )
    assert "prune:shrink:0.5" in outcome.manifest.report.steps


def test_per_channel_parameters_are_compacted_and_still_run(
    encoder: ModelOnDisk, file_store: ArtifactStore, tmp_path: Path
) -> None:
    outcome = compress(encoder.uri, Compression(), file_store, sample_inputs=str(encoder.samples))
    assert any("stored as float16" in note for note in outcome.manifest.report.notes)
    model = onnx.load(str(file_store.fetch(outcome.manifest, tmp_path / "m")))
    matmuls = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert matmuls and all(len(n.input) == 3 for n in matmuls)  # zero weight zero points dropped
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) == len(matmuls)
    assert outcome.manifest.report.accuracy is not None and outcome.manifest.report.accuracy.passed
