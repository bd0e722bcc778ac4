"""Pure pieces: agreement metrics, the gate's verdict, magnitude pruning."""

from __future__ import annotations

import numpy as np
import pytest

from onnxship.api import AccuracyGate
from onnxship.compress import InvalidSettingsError
from onnxship.compress.accuracy import (
    CLI_NAMES,
    Figures,
    OutputInfo,
    compare,
    cosine_rows,
    gate_message,
    judge,
    rejudge,
)
from onnxship.compress.prune import magnitude_prune, shrink
from onnxship.compress.samples import Layout, Samples


def batched(**arrays: np.ndarray) -> Samples:
    return Samples(arrays, {k: Layout("axis", 0) for k in arrays}, synthetic=False)


def figures_of(
    original: list[np.ndarray], compressed: list[np.ndarray], classes: bool = False
) -> dict[str, Figures]:
    """One call of [N, ...] outputs named y0, y1, ..."""
    infos = [OutputInfo(f"y{i}", classes, 0) for i in range(len(original))]
    x = np.zeros((original[0].shape[0], 1), np.float32)
    return compare([original], [compressed], [{"x": x}], infos, batched(x=x))


def test_cosine_rows_per_sample_and_zero_rows_agree() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    assert cosine_rows(a, b).tolist() == pytest.approx([1.0, 1.0, -1.0])


def test_the_worst_output_read_decides_and_is_named() -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((8, 4))
    drifted = good + rng.standard_normal((8, 4))
    figures = figures_of([good, good], [good, drifted])
    report = judge(figures, AccuracyGate(min=0.99), ["y0", "y1"], 8, False, CLI_NAMES)
    assert report.deciding_output == "y1" and not report.passed
    assert report.mean == pytest.approx(float(cosine_rows(good, drifted).mean()), abs=1e-6)
    assert report.outputs["y0"] == pytest.approx(1.0)
    assert report.max_abs_error == pytest.approx(float(np.max(np.abs(good - drifted))), rel=1e-5)
    message = gate_message(report, CLI_NAMES)
    assert "y1 cosine" in message and "(--gate-min)" in message
    # reading only the output that agrees passes
    assert judge(figures, AccuracyGate(min=0.99), ["y0"], 8, False).passed


def test_top1_only_for_class_scores() -> None:
    embedding = figures_of([np.eye(4)], [np.eye(4) * 2])
    report = judge(embedding, AccuracyGate(metric="cosine", min=0.99), ["y0"], 4, False)
    assert report.passed and report.top1_agreement is None  # argmax of an embedding: nothing
    scores = figures_of([np.eye(4)], [np.eye(4) * 2], classes=True)
    report = judge(scores, AccuracyGate(metric="cosine", min=0.99), ["y0"], 4, False)
    assert report.top1_agreement == 1.0
    assert rejudge(report, AccuracyGate(metric="top1", min=1.0)).passed
    noisy = figures_of([np.eye(4)], [np.eye(4)[::-1]], classes=True)
    low = judge(noisy, AccuracyGate(min=0.5), ["y0"], 4, False)
    assert not low.passed and low.threshold == 0.5


def test_top1_gate_needs_a_class_score_output() -> None:
    figures = figures_of([np.ones((4, 3, 2))], [np.ones((4, 3, 2))])
    with pytest.raises(InvalidSettingsError, match="top1 needs a class-score output"):
        judge(figures, AccuracyGate(metric="top1", min=0.9), ["y0"], 4, False)


def test_an_output_batched_on_axis_1_is_compared_per_row() -> None:
    """A state [2, B, 128]: row i is [:, i, :], even when B is 2 in some call."""
    rng = np.random.default_rng(4)
    calls_a, calls_b, feeds = [], [], []
    for rows in (5, 2):
        state = rng.standard_normal((2, rows, 16))
        spoiled = state.copy()
        spoiled[:, 0, :] = -state[:, 0, :]  # the first row of each call answers backwards
        calls_a.append([state])
        calls_b.append([spoiled])
        feeds.append({"x": np.zeros((rows, 3), np.float32)})
    samples = batched(x=np.zeros((7, 3), np.float32))
    figures = compare(calls_a, calls_b, feeds, [OutputInfo("stateN", False, 0)], samples)
    cos = np.concatenate(figures["stateN"].cosine)
    assert cos.shape == (7,) and cos.tolist() == pytest.approx([-1, 1, 1, 1, 1, -1, 1])


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
    samples = batched(attention_mask=mask)
    info = [OutputInfo("h", False, 0)]
    masked = compare([[hidden]], [[noisy]], [{"attention_mask": mask}], info, samples)
    assert masked["h"].cosine_min == pytest.approx(1.0)
    assert figures_of([hidden], [noisy])["y0"].cosine_min < 0.9
