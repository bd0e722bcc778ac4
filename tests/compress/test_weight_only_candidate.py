"""quantize: auto's weight-only candidates (MatMulNBits) on encoders the tests build."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxship.api import Compression
from onnxship.compress import compress
from onnxship.store import ArtifactStore
from tests.compress import models
from tests.compress.conftest import ModelOnDisk, _write


def _by_name(outcome):  # type: ignore[no-untyped-def]
    return {c.name: c for c in outcome.manifest.report.candidates}


def test_a_large_encoder_gets_weight_only_int4_measured_with_its_size(
    tmp_path: Path, file_store: ArtifactStore
) -> None:
    # 256x256 attention and 256x512 feed-forward weights: at the LARGE_MATMUL_VALUES threshold
    big = _write(
        tmp_path, "big", models.encoder_block(dim=256, ff=512), models.inputs_for("encoder")
    )
    x = np.random.default_rng(3).standard_normal((16, 8, 256)).astype(np.float32)
    np.savez(big.samples, x=x)
    loose = Compression.model_validate({"accuracyGate": {"metric": "cosine", "min": 0.9}})
    outcome = compress(big.uri, loose, file_store, sample_inputs=str(big.samples))
    c = _by_name(outcome)
    int4 = c["weight-only-int4"]
    assert int4.steps == ["quantize:weightOnly:int4:rtn:b32"]
    assert int4.accuracy is not None and int4.latency_ms
    # about 0.6 of a byte a weight (4 bits + block scales) against 4: under 1/4 of the source
    assert 0 < int4.bytes < 0.25 * outcome.manifest.report.original_bytes, int4
    assert int4.passed and int4.chosen, int4.why  # smallest, and 4-bit passes a 0.9 gate
    # the smallest that passed is published, and int8 is not even built
    assert outcome.manifest.report.steps[-1] == "quantize:weightOnly:int4:rtn:b32"
    assert outcome.manifest.report.compressed_bytes == int4.bytes
    assert c["int8-matmul"].why.startswith("not tried: it cannot be smaller than weight-only")


def test_a_model_without_large_matmuls_says_why_weight_only_was_skipped(
    encoder: ModelOnDisk, file_store: ArtifactStore
) -> None:
    outcome = compress(encoder.uri, Compression(), file_store, sample_inputs=str(encoder.samples))
    c = _by_name(outcome)
    for name in ("weight-only-int4", "weight-only-int8"):
        assert c[name].bytes == 0 and not c[name].passed
        assert c[name].why == (
            "not tried: no large MatMul weight (the largest constant one has 8,192 values; "
            "weight-only pays off from 65,536)"
        ), c[name].why
    assert any(x.chosen for x in c.values())
