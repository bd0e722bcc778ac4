"""Does the compressed model still answer like the original? Metrics, the gate, and latency.

The gate reads outputs as users do:
- each output gets the metric that fits it: cosine per row for embeddings and feature maps,
  top-1 agreement only for class scores (an output made by Softmax/LogSoftmax or named like
  logits, scores, probabilities or labels): argmax of an embedding means nothing;
- by default it reads the model's final outputs: an output another output is computed from
  (MiniLM's ``last_hidden_state``, pooled into ``sentence_embedding``) is an intermediate the
  graph also exposes, reported but not judged unless named in ``accuracyGate.outputs``;
- among the outputs read, the worst decides, and the report names it;
- an output's rows are found on its batch axis (the axis as long as the call's rows), so a
  state shaped [2, B, 128] is compared per row like any other.

The metric functions are pure (arrays in, numbers out); ``Model`` runs one model.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxship.api import AccuracyGate, AccuracyReport

from .errors import InvalidSettingsError
from .optimize import session
from .samples import Samples

BATCH = 32
LATENCY_RUNS = 5
_CLASS_NAME = re.compile(r"logit|score|class|label|prob|softmax", re.IGNORECASE)
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


@dataclass(frozen=True)
class GateNames:
    """How the user set the gate, for messages: spec fields, or a CLI run's flags."""

    min: str = "spec.compression.accuracyGate.min"
    metric: str = "spec.compression.accuracyGate.metric"
    outputs: str = "spec.compression.accuracyGate.outputs"
    quantize: str = "spec.compression.quantize.mode"


SPEC_NAMES = GateNames()
CLI_NAMES = GateNames("--gate-min", "--gate-metric", "--gate-output", "--quantize")


@dataclass(frozen=True)
class OutputInfo:
    name: str
    classes: bool  # class scores: top-1 agreement means something
    axis_hint: int | None  # first symbolic axis of the declared shape
    feeds: str = ""  # another output computed from this one


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (row) of two outputs; two all-zero rows agree fully."""
    x = a.reshape(a.shape[0], -1).astype(np.float64)
    y = b.reshape(b.shape[0], -1).astype(np.float64)
    dot = np.sum(x * y, axis=1)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    norms = nx * ny
    both_zero = (nx == 0) & (ny == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), 0.0)
    return np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)


def describe_outputs(path: Path) -> list[OutputInfo]:
    """What each output is: class scores or not, its declared batch axis, and whether another
    output is computed from it (read from the graph, without weights)."""
    model = onnx.load_model(str(path), load_external_data=False)
    graph = model.graph
    producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}

    def node_inputs(node: onnx.NodeProto) -> set[str]:
        names = set(node.input)
        for attr in node.attribute:  # outer names a branch or loop body reads
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for inner in g.node:
                    names |= node_inputs(inner)
        return names

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = producer.get(stack.pop())
            if node is None:
                continue
            for i in node_inputs(node):
                if i and i not in seen:
                    seen.add(i)
                    stack.append(i)
        return seen

    def made_by_softmax(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0]) if node.input else None
        return node is not None and node.op_type in ("Softmax", "LogSoftmax")

    names = [o.name for o in graph.output]
    upstream = {n: ancestors(n) for n in names}
    infos = []
    for vi in graph.output:
        dims = vi.type.tensor_type.shape.dim
        hint = next((i for i, d in enumerate(dims) if not d.HasField("dim_value")), None)
        last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else 0
        classes = (
            vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
            and len(dims) >= 2
            and last != 1
            and (made_by_softmax(vi.name) or bool(_CLASS_NAME.search(vi.name)))
        )
        # an Identity that only renames a tensor for the output counts as that tensor
        node = producer.get(vi.name)
        alias = node.input[0] if node is not None and node.op_type == "Identity" else vi.name
        feeds = next(
            (o for o in names if o != vi.name and {vi.name, alias} & upstream[o]), ""
        )
        infos.append(OutputInfo(vi.name, classes, hint, feeds))
    return infos


def outputs_read(infos: list[OutputInfo], gate: AccuracyGate, names: GateNames) -> list[str]:
    """The outputs the gate judges: those named, else the final ones (see the module doc)."""
    known = [i.name for i in infos]
    if gate.outputs:
        unknown = [n for n in gate.outputs if n not in known]
        if unknown:
            raise InvalidSettingsError(
                f"{names.outputs}: the model has no output {', '.join(map(repr, unknown))} "
                f"(its outputs are {', '.join(known)})"
            )
        return list(gate.outputs)
    finals = [i.name for i in infos if not i.feeds]
    return finals or known


@dataclass
class Figures:
    """Per-row figures of one output over every call."""

    cosine: list[np.ndarray] = field(default_factory=list)
    top1: list[np.ndarray] = field(default_factory=list)
    max_abs: float = 0.0

    @property
    def cosine_mean(self) -> float:
        return float(np.concatenate(self.cosine).mean())

    @property
    def cosine_min(self) -> float:
        return float(np.concatenate(self.cosine).min())

    @property
    def top1_mean(self) -> float | None:
        return float(np.concatenate(self.top1).mean()) if self.top1 else None


def _masked(output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Padding positions (mask 0) of a [batch, seq, ...] output set to zero: they are not part
    of any answer, and quantization noise there would fail a gate for nothing."""
    if mask is None or output.ndim < 3 or output.shape[:2] != mask.shape:
        return output
    keep = (mask != 0).reshape(mask.shape + (1,) * (output.ndim - 2))
    return np.where(keep, output, 0).astype(output.dtype, copy=False)


def _row_axis(
    outs: list[np.ndarray], rows: list[int], hint: int | None, one_per_call: bool
) -> int | None:
    """The axis of an output that holds the call's rows (None: the whole output is one row).

    Found from calls where exactly one axis is as long as the call's rows, so a fixed 2 beside
    a batch of 2 does not mislead it."""
    if one_per_call:
        return None
    fallback: int | None = None
    for out, n in zip(outs, rows, strict=True):
        axes = [ax for ax in range(out.ndim) if out.shape[ax] == n]
        if len(axes) == 1:
            return axes[0]
        if axes and fallback is None:
            fallback = hint if hint in axes else axes[0]
    return fallback


def compare(
    original: list[list[np.ndarray]],
    compressed: list[list[np.ndarray]],
    feeds: list[dict[str, np.ndarray]],
    infos: list[OutputInfo],
    samples: Samples,
) -> dict[str, Figures]:
    """Per-output figures of two models' outputs on the same calls (pure)."""
    mask_name = samples.mask_name()
    rows = [_call_rows(f, samples) for f in feeds]
    result: dict[str, Figures] = {}
    for j, info in enumerate(infos):
        outs_a = [np.asarray(call[j]) for call in original]
        if not outs_a or outs_a[0].dtype.kind not in "fiub":
            continue
        axis = _row_axis(outs_a, rows, info.axis_hint, samples.one_per_call)
        figs = Figures()
        for i, call in enumerate(compressed):
            a, b = outs_a[i], np.asarray(call[j])
            if a.shape != b.shape:
                raise InvalidSettingsError(
                    f"output {info.name}: the compressed model answers shaped {list(b.shape)}, "
                    f"the original {list(a.shape)}"
                )
            if axis is None:
                a, b = a[None], b[None]
            elif axis:
                a, b = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
            mask = feeds[i].get(mask_name) if mask_name and axis == 0 else None
            a, b = _masked(a, mask), _masked(b, mask)
            if a.size == 0:
                continue
            figs.cosine.append(
                cosine_rows(a, b) if a.ndim > 1 else cosine_rows(a[:, None], b[:, None])
            )
            figs.max_abs = max(
                figs.max_abs, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            )
            if info.classes and a.ndim >= 2 and a.shape[-1] > 1:
                same = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
                if mask is not None and same.shape == mask.shape:
                    kept = (mask != 0).sum(axis=1)
                    figs.top1.append((same & (mask != 0)).sum(axis=1) / np.maximum(kept, 1))
                else:
                    figs.top1.append(same.reshape(same.shape[0], -1).mean(axis=1))
        if figs.cosine:
            result[info.name] = figs
    if not result:
        raise InvalidSettingsError("the model has no numeric outputs to compare")
    return result


def _call_rows(feed: dict[str, np.ndarray], samples: Samples) -> int:
    for name, layout in samples.layouts.items():
        if layout.how == "axis":
            return int(feed[name].shape[layout.axis])
    return 1


def judge(
    figures: dict[str, Figures],
    gate: AccuracyGate,
    read: list[str],
    rows: int,
    synthetic: bool,
    names: GateNames = SPEC_NAMES,
    classes: set[str] | None = None,
) -> AccuracyReport:
    """The gate's verdict on measured figures, the worst output read deciding (pure)."""
    read = [n for n in read if n in figures]
    if gate.metric == "top1":
        scored = {n: figures[n].top1_mean for n in read if figures[n].top1_mean is not None}
        if not scored:
            raise InvalidSettingsError(
                f"{names.metric}: top1 needs a class-score output (float [batch, classes] made "
                "by Softmax, or named logits/scores/probs/labels) among the outputs read "
                f"({', '.join(read)}); use metric cosine for this model"
            )
        per_output = {n: float(v) for n, v in scored.items() if v is not None}
    elif gate.metric == "cosine":
        per_output = {n: figures[n].cosine_mean for n in read}
    else:
        raise InvalidSettingsError(
            f"{names.metric}: {gate.metric} is for causal LMs; use cosine or top1 for this model"
        )
    deciding = min(per_output, key=lambda n: per_output[n])
    low_of = {n: figures[n].cosine_min for n in per_output}
    tops = [figures[n].top1_mean for n in read if figures[n].top1_mean is not None]
    mean = per_output[deciding]
    return AccuracyReport(
        metric=gate.metric,
        mean=round(mean, 6),
        min=round(
            min(low_of.values()) if gate.metric == "cosine" else min(per_output.values()), 6
        ),
        threshold=gate.min,
        passed=mean >= gate.min,
        samples=rows,
        cosine_mean=round(min(figures[n].cosine_mean for n in read), 6),
        cosine_min=round(min(figures[n].cosine_min for n in read), 6),
        top1_agreement=round(min(t for t in tops if t is not None), 6) if tops else None,
        max_abs_error=float(f"{max(figures[n].max_abs for n in read):.6g}"),
        synthetic_inputs=synthetic,
        outputs={n: round(v, 6) for n, v in per_output.items()},
        deciding_output=deciding,
    )


def rejudge(report: AccuracyReport, gate: AccuracyGate) -> AccuracyReport:
    """A stored report judged against a (possibly different) gate, without running anything:
    per output when the stored figures are of the same metric, else on the overall ones."""
    per_output = dict(report.outputs)
    if gate.metric == report.metric and per_output:
        if gate.outputs and all(n in per_output for n in gate.outputs):
            per_output = {n: per_output[n] for n in gate.outputs}
    else:
        value = report.top1_agreement if gate.metric == "top1" else report.cosine_mean
        if value is None:
            raise InvalidSettingsError(
                "spec.compression.accuracyGate.metric: top1 needs a class-score output; "
                "use metric cosine for this model"
            )
        per_output = {report.deciding_output or "outputs": value}
    deciding = min(per_output, key=lambda n: per_output[n])
    mean = per_output[deciding]
    return report.model_copy(
        update={
            "metric": gate.metric,
            "mean": round(mean, 6),
            "threshold": gate.min,
            "passed": mean >= gate.min,
            "outputs": per_output,
            "deciding_output": deciding if deciding != "outputs" else "",
        }
    )


def gate_message(report: AccuracyReport, names: GateNames, what: str = "") -> str:
    """"accuracy gate failed: sentence_embedding cosine 0.98 < 0.99 (--gate-min) ..."."""
    output = f"{report.deciding_output} " if report.deciding_output else ""
    others = ", ".join(
        f"{n} {v:.4f}" for n, v in report.outputs.items() if n != report.deciding_output
    )
    return (
        f"accuracy gate failed{what}: {output}{report.metric} {report.mean:.6f} < "
        f"{report.threshold} ({names.min}) on {report.samples} samples"
        + (f" (other outputs read: {others})" if others else "")
        + "; nothing was published"
    )


class Model:
    """One model loaded once: its outputs on sample calls, and its latency."""

    def __init__(self, path: Path, execution_provider: str) -> None:
        self.path = path
        self.session: ort.InferenceSession = session(path, execution_provider)
        self.names = [o.name for o in self.session.get_outputs()]
        self._done: list[list[np.ndarray]] = []  # outputs on the first calls, kept

    def run(self, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Outputs on ``feeds``; calls already run on a prefix of them are not run again
        (a candidate screened on the first rows is then scored on all of them)."""
        if len(self._done) > len(feeds):
            return self._done[: len(feeds)]
        self._done += [self.session.run(self.names, feed) for feed in feeds[len(self._done) :]]
        return self._done[: len(feeds)]

    def latency_ms(self, feed: dict[str, np.ndarray], runs: int = LATENCY_RUNS) -> float:
        """Median latency of one call with ``feed`` (a hint about this machine)."""
        self.session.run(self.names, feed)  # the first run allocates
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.session.run(self.names, feed)
            times.append(time.perf_counter() - start)
        return round(float(np.median(times)) * 1000, 3)
