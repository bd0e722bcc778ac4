"""The classes of model issue 17 met on real models, rebuilt small by the tests.

- a scalar (0-d) input, a state whose batch axis is axis 1, an If on the scalar;
- a batch fixed at 1 (samples stacked, or rows on axis 0; run one at a time);
- an int32 byte input (made-up values must stay in 0..255);
- two outputs, one pooled from the other (the sentence-embedding shape of MiniLM);
- quantize auto's candidates, the exit-5 refusal with sizes and candidates, static per-channel
  on an opset-12 model, the samples in the cache key, warmup.npz in the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from onnxship.api import Compression
from onnxship.cli.app import ExitCode
from onnxship.cli.main import app
from onnxship.compress import AccuracyGateError, compress
from onnxship.store import ArtifactStore
from tests.helpers import models as base_models

from . import models


def save(tmp: Path, name: str, model: onnx.ModelProto, **samples: np.ndarray) -> tuple[str, str]:
    path = base_models.save(model, tmp / name / "model.onnx")
    npz = ""
    if samples:
        npz = str(tmp / name / "samples.npz")
        np.savez(npz, **samples)
    return path.as_uri(), npz


def settings(**spec: object) -> Compression:
    return Compression.model_validate(spec)


# Where the search is not the point, one explicit mode keeps the test fast.
DYNAMIC = Compression.model_validate({"quantize": {"mode": "dynamic"}})


def stateful_samples(n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "x": rng.standard_normal((n, 8)).astype(np.float32),
        "state": rng.standard_normal((2, n, 4)).astype(np.float32),
        "sr": np.array(16000, np.int64),  # passed as given with every call
    }


def test_scalar_input_and_a_state_batched_on_axis_1(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    uri, npz = save(tmp_path, "vad", models.stateful(), **stateful_samples())
    outcome = compress(uri, DYNAMIC, file_store, sample_inputs=npz)
    accuracy = outcome.manifest.report.accuracy
    assert accuracy is not None and accuracy.passed and accuracy.samples == 12
    assert set(accuracy.outputs) == {"output", "stateN"}  # neither is computed from the other
    assert outcome.manifest.report.samples_digest


def test_made_up_inputs_honour_fixed_dims_scalars_and_dtypes(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    uri, _ = save(tmp_path, "vad", models.stateful())
    outcome = compress(uri, Compression(), file_store)
    report = outcome.manifest.report
    assert report.accuracy is not None and report.accuracy.synthetic_inputs
    assert any("made-up inputs" in n for n in report.notes)
    static = next(c for c in report.candidates if c.name == "static-int8")
    assert "made-up" in static.why and not static.passed  # no calibration on noise
    # an int32 byte input: made-up values index a 256-row table, so they stay in 0..255
    uri, _ = save(tmp_path, "bytes", models.byte_classifier())
    assert compress(uri, Compression(), file_store).manifest.report.accuracy is not None


@pytest.mark.parametrize("layout", ["stacked", "rows-on-axis-0"])
def test_a_batch_fixed_at_1_runs_one_sample_at_a_time(
    layout: str, tmp_path: Path, file_store: ArtifactStore
) -> None:
    x = np.random.default_rng(2).standard_normal((10, 1, 3, 16, 16)).astype(np.float32)
    uri, npz = save(tmp_path, "fixed", models.fixed_batch_cnn(),
                    x=x if layout == "stacked" else x[:, 0])  # fmt: skip
    outcome = compress(uri, DYNAMIC, file_store, sample_inputs=npz)
    report = outcome.manifest.report
    assert report.accuracy is not None and report.accuracy.samples == 10
    assert any("one sample at a time" in n for n in report.notes)
    # the published model still takes one sample of the model's shape
    model = file_store.fetch(outcome.manifest, tmp_path / "pod")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": x[0]})[0].shape == (1, 10)


def test_a_batch_fixed_at_1_without_samples_is_made_up_one_at_a_time(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    uri, _ = save(tmp_path, "fixed", models.fixed_batch_cnn())
    accuracy = compress(uri, Compression(), file_store).manifest.report.accuracy
    assert accuracy is not None and accuracy.synthetic_inputs and accuracy.samples == 16


def test_samples_that_do_not_fit_name_the_input_and_the_shapes(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    from onnxship.compress import SourceError

    bad = stateful_samples()
    bad["state"] = bad["state"][:, :, :3]
    uri, npz = save(tmp_path, "vad", models.stateful(), **bad)
    with pytest.raises(SourceError, match=r"state is shaped \[2, 12, 3\].*\[2, batch, 4\]"):
        compress(uri, Compression(), file_store, sample_inputs=npz)


def test_the_default_gate_reads_the_final_output_and_says_what_it_left(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    x = np.random.default_rng(1).standard_normal((300, 8, 64)).astype(np.float32)
    uri, npz = save(tmp_path, "embedder", models.pooled_encoder(), x=x)
    report = compress(uri, DYNAMIC, file_store, sample_inputs=npz).manifest.report
    assert report.accuracy is not None
    assert set(report.accuracy.outputs) == {"pooled"}
    assert report.accuracy.deciding_output == "pooled" and report.accuracy.top1_agreement is None
    assert any("256 of 300 rows" in n for n in report.notes)
    assert any("hidden" in n and "pooled is computed from it" in n for n in report.notes)
    both = compress(
        uri,
        settings(quantize={"mode": "dynamic"}, accuracyGate={"outputs": ["hidden", "pooled"]}),
        file_store,
        sample_inputs=npz,
    ).manifest.report
    assert both.accuracy is not None and set(both.accuracy.outputs) == {"hidden", "pooled"}


def test_other_samples_are_no_cache_hit(tmp_path: Path, file_store: ArtifactStore) -> None:
    uri, npz = save(tmp_path, "vad", models.stateful(), **stateful_samples(12))
    first = compress(uri, DYNAMIC, file_store, sample_inputs=npz)
    assert compress(uri, DYNAMIC, file_store, sample_inputs=npz).cache_hit
    other = tmp_path / "other.npz"
    np.savez(other, **stateful_samples(6))
    again = compress(uri, DYNAMIC, file_store, sample_inputs=str(other))
    assert not again.cache_hit and again.manifest.cache_key != first.manifest.cache_key
    assert again.manifest.report.accuracy is not None
    assert again.manifest.report.accuracy.samples == 6


def test_auto_lists_every_candidate_and_keeps_warmup_rows(
    tmp_path: Path, file_store: ArtifactStore, cnn: object
) -> None:
    outcome = compress(cnn.uri, Compression(), file_store, sample_inputs=str(cnn.samples))  # type: ignore[attr-defined]
    report = outcome.manifest.report
    names = [c.name for c in report.candidates]
    assert names == [
        "weight-only-int4", "int8-matmul", "int8-conv", "static-int8", "weight-only-int8",
        "fp16", "none",
    ]
    chosen = [c for c in report.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].passed and chosen[0].bytes == report.compressed_bytes
    assert all(c.why for c in report.candidates)
    assert "CPU" in next(c for c in report.candidates if c.name == "fp16").why
    for c in report.candidates:
        if c.passed and not c.chosen:
            assert c.bytes >= chosen[0].bytes
    blobs = {b.name for b in outcome.manifest.blobs}
    assert "warmup.npz" in blobs
    folder = file_store.fetch(outcome.manifest, tmp_path / "pod").parent
    with np.load(folder / "warmup.npz", allow_pickle=False) as z:
        assert z["x"].shape == (4, 3, 16, 16)


def test_static_per_channel_on_an_opset_12_model_raises_the_opset(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    x = np.random.default_rng(2).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    uri, npz = save(tmp_path, "fixed", models.fixed_batch_cnn(opset=12), x=x)
    outcome = compress(
        uri,
        settings(quantize={"mode": "static", "perChannel": True}, accuracyGate={"min": 0.9}),
        file_store,
        sample_inputs=npz,
    )
    assert any("opset raised from 12 to 13" in n for n in outcome.manifest.report.notes)
    model = onnx.load(str(file_store.fetch(outcome.manifest, tmp_path / "pod")))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def test_a_refusal_carries_sizes_and_the_candidates_table(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((16, 8, 64)).astype(np.float32)
    uri, npz = save(tmp_path, "embedder", models.pooled_encoder(), x=x)
    store = (tmp_path / "store").as_uri()
    result = CliRunner().invoke(
        app,
        ["--log-format", "json", "compress", uri, "--store", store, "--samples", npz,
         "--sparsity", "0.9", "--gate-output", "pooled", "--progress", "none", "-o", "json"],
    )  # fmt: skip
    assert result.exit_code == ExitCode.accuracy_gate, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert "pooled cosine" in doc["error"] and "(--gate-min)" in doc["error"]
    report = doc["report"]
    assert report["originalBytes"] > 0 and report["compressedBytes"] > 0
    assert [c["name"] for c in report["candidates"]] == [
        "weight-only-int4", "int8-matmul", "int8-conv", "static-int8", "weight-only-int8",
        "fp16", "none",
    ]  # fmt: skip
    assert all(c["bytes"] for c in report["candidates"] if c.get("accuracy"))
    assert "int8-matmul" in doc["error"]  # the table is in the message too


def test_an_unknown_gate_output_is_a_settings_error(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    from onnxship.compress import InvalidSettingsError

    uri, _ = save(tmp_path, "embedder", models.pooled_encoder())
    with pytest.raises(InvalidSettingsError, match=r"no output 'embedding'.*hidden, pooled"):
        compress(uri, settings(accuracyGate={"outputs": ["embedding"]}), file_store)


def test_nothing_is_published_when_auto_finds_no_candidate(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    x = np.random.default_rng(1).standard_normal((16, 8, 64)).astype(np.float32)
    uri, npz = save(tmp_path, "embedder", models.pooled_encoder(), x=x)
    with pytest.raises(AccuracyGateError) as err:
        compress(uri, settings(prune={"sparsity": 0.9}), file_store, sample_inputs=npz)
    assert err.value.summary is not None and err.value.summary.candidates
    assert file_store.list_manifests() == []


def test_made_up_inputs_grow_until_the_model_runs(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    """A reflect Pad of 20 refuses 16 made-up frames; 64 run, and the note says so."""
    uri, _ = save(tmp_path, "padded", models.reflect_padded(pad=20))
    report = compress(uri, Compression(), file_store).manifest.report
    assert report.accuracy is not None and report.accuracy.synthetic_inputs
    assert any("other dimensions 64" in n for n in report.notes)
    uri, _ = save(tmp_path, "too-long", models.reflect_padded(pad=600))
    from onnxship.compress import InvalidSettingsError

    with pytest.raises(InvalidSettingsError, match=r"made up from its signature.*--samples|"
                       r"made up from its signature.*sampleInputs"):  # fmt: skip
        compress(uri, Compression(), file_store)
