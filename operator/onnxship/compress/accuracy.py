"""Does the compressed model still answer like the original? Metrics, the gate, and latency.

The metric functions are pure (arrays in, numbers out); ``measure`` runs both models on the
samples with ONNX Runtime. With several outputs, the worst one decides: a gate is only as
good as the output that drifted most.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxship.api import AccuracyGate, AccuracyReport

from .errors import InvalidSettingsError
from .optimize import session
from .samples import Samples

BATCH = 32
LATENCY_RUNS = 5


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (row) of two outputs; two all-zero rows agree fully."""
    x = a.reshape(a.shape[0], -1).astype(np.float64)
    y = b.reshape(b.shape[0], -1).astype(np.float64)
    dot = np.sum(x * y, axis=1)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    both_zero = (np.linalg.norm(x, axis=1) == 0) & (np.linalg.norm(y, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), 0.0)
    return np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)


def is_classifier(output: np.ndarray) -> bool:
    """[N, C] float scores with several classes: argmax is meaningful."""
    return output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f"


@dataclass(frozen=True)
class Agreement:
    cosine_mean: float
    cosine_min: float
    top1: float | None
    max_abs_error: float


def _masked(output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Padding positions (mask 0) of a [batch, seq, ...] output set to zero: they are not part
    of any answer, and quantization noise there would fail a gate for nothing."""
    if mask is None or output.ndim < 3 or output.shape[:2] != mask.shape:
        return output
    keep = (mask != 0).reshape(mask.shape + (1,) * (output.ndim - 2))
    return np.where(keep, output, 0).astype(output.dtype, copy=False)


def agreement(
    original: list[np.ndarray], compressed: list[np.ndarray], mask: np.ndarray | None = None
) -> Agreement:
    """How closely outputs agree, the worst output deciding each figure.

    ``mask``: a [batch, seq] attention mask; outputs shaped [batch, seq, ...] are compared on
    real tokens only.
    """
    means, mins, tops, errors = [], [], [], []
    for raw_a, raw_b in zip(original, compressed, strict=True):
        a, b = _masked(raw_a, mask), _masked(raw_b, mask)
        if a.dtype.kind not in "fiub" or a.size == 0:
            continue
        cos = cosine_rows(a, b) if a.ndim else cosine_rows(a.reshape(1, 1), b.reshape(1, 1))
        means.append(float(cos.mean()))
        mins.append(float(cos.min()))
        errors.append(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
        if is_classifier(a):
            tops.append(float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))))
    if not means:
        raise InvalidSettingsError("the model has no numeric outputs to compare")
    return Agreement(min(means), min(mins), min(tops) if tops else None, max(errors))


def judge(found: Agreement, gate: AccuracyGate, rows: int, synthetic: bool) -> AccuracyReport:
    """The gate's verdict on measured figures (pure; also used on a cache hit)."""
    if gate.metric == "top1":
        if found.top1 is None:
            raise InvalidSettingsError(
                "spec.compression.accuracyGate.metric: top1 needs a classifier output "
                "(float [batch, classes]); use metric cosine for this model"
            )
        mean = low = found.top1
    else:
        mean, low = found.cosine_mean, found.cosine_min
    return AccuracyReport(
        metric=gate.metric,
        mean=round(mean, 6),
        min=round(low, 6),
        threshold=gate.min,
        passed=mean >= gate.min,
        samples=rows,
        cosine_mean=round(found.cosine_mean, 6),
        cosine_min=round(found.cosine_min, 6),
        top1_agreement=None if found.top1 is None else round(found.top1, 6),
        max_abs_error=float(f"{found.max_abs_error:.6g}"),
        synthetic_inputs=synthetic,
    )


def rejudge(report: AccuracyReport, gate: AccuracyGate) -> AccuracyReport:
    """A stored report judged against a (possibly different) gate, without running anything."""
    found = Agreement(
        report.cosine_mean if report.cosine_mean is not None else report.mean,
        report.cosine_min if report.cosine_min is not None else report.min,
        report.top1_agreement,
        report.max_abs_error or 0.0,
    )
    return judge(found, gate, report.samples, report.synthetic_inputs)


def run_all(
    path: Path, samples: Samples, execution_provider: str
) -> tuple[list[np.ndarray], float]:
    """Every output of the model on every sample, and its median batch-1 latency in ms (a
    hint about this machine, not a benchmark)."""
    sess = session(path, execution_provider)
    names = [o.name for o in sess.get_outputs()]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for batch in samples.batches(BATCH):
        for i, out in enumerate(sess.run(names, batch)):
            parts[i].append(np.asarray(out))
    outputs = [np.concatenate(p) if p[0].ndim else p[0] for p in parts]
    feed = samples.batches(1)[0]
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        sess.run(names, feed)
        times.append(time.perf_counter() - start)
    return outputs, round(float(np.median(times)) * 1000, 3)
