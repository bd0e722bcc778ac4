"""Pure pieces: agreement metrics, the gate's verdict, magnitude pruning."""

from __future__ import annotations

import numpy as np
import pytest

from onnxship.api import AccuracyGate
from onnxship.compress import InvalidSettingsError
from onnxship.compress.accuracy import agreement, cosine_rows, judge, rejudge
from onnxship.compress.prune import magnitude_prune, shrink


def test_cosine_rows_per_sample_and_zero_rows_agree() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    assert cosine_rows(a, b).tolist() == pytest.approx([1.0, 1.0, -1.0])


def test_the_worst_output_decides() -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((8, 4))
    drifted = good + rng.standard_normal((8, 4))
    found = agreement([good, good], [good, drifted])
    assert found.cosine_mean == pytest.approx(float(cosine_rows(good, drifted).mean()))
    assert found.cosine_min <= found.cosine_mean < 1.0
    assert found.max_abs_error == pytest.approx(float(np.max(np.abs(good - drifted))))
    assert found.top1 is not None  # [8, 4] float scores look like a classifier


def test_gate_verdicts_and_rejudging_a_stored_report() -> None:
    found = agreement([np.eye(4)], [np.eye(4) * 2])
    report = judge(found, AccuracyGate(metric="cosine", min=0.99), rows=4, synthetic=False)
    assert report.passed and report.mean == 1.0 and report.top1_agreement == 1.0
    assert rejudge(report, AccuracyGate(metric="top1", min=1.0)).passed
    noisy = judge(agreement([np.eye(4)], [np.eye(4)[::-1]]), AccuracyGate(min=0.5), 4, False)
    assert not noisy.passed and noisy.threshold == 0.5


def test_top1_gate_needs_a_classifier_output() -> None:
    found = agreement([np.ones((4, 3, 2))], [np.ones((4, 3, 2))])
    with pytest.raises(InvalidSettingsError, match="top1 needs a classifier"):
        judge(found, AccuracyGate(metric="top1", min=0.9), 4, False)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.95])
def test_magnitude_pruning_zeroes_at_least_the_target_and_keeps_the_largest(
    sparsity: float,
) -> None:
    w = np.random.default_rng(1).standard_normal((64, 33)).astype(np.float32)
    pruned = magnitude_prune(w, sparsity)
    assert np.mean(pruned == 0) >= sparsity
    assert np.mean(pruned == 0) <= sparsity + 2 / w.size
    kept = pruned != 0
    assert np.all(pruned[kept] == w[kept])
    assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()


def test_shrinkage_zeroes_the_same_values_and_moves_survivors_towards_zero() -> None:
    w = np.random.default_rng(2).standard_normal((32, 32)).astype(np.float32)
    hard, soft = magnitude_prune(w, 0.6), shrink(w, 0.6)
    assert np.array_equal(hard == 0, soft == 0)
    kept = soft != 0
    a = np.abs(w[kept]) - np.abs(soft[kept])
    assert np.allclose(a, a[0], atol=1e-6) and a[0] > 0  # the same step a for every survivor
    assert np.all(np.sign(soft[kept]) == np.sign(w[kept]))


def test_padding_positions_are_left_out_of_token_outputs() -> None:
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((2, 4, 8))
    noisy = hidden.copy()
    noisy[:, 2:, :] = rng.standard_normal((2, 2, 8))  # garbage where the mask is 0
    mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    assert agreement([hidden], [noisy], mask).cosine_min == pytest.approx(1.0)
    assert agreement([hidden], [noisy]).cosine_min < 0.9
