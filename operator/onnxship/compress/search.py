"""quantize: auto. Build candidates, measure each against the gate, keep the smallest that passes.

Candidates, in order: weight-only int4 (MatMulNBits, RTN, block 32; only on models with large
constant MatMul weights); int8 dynamic on MatMuls; the same plus Conv and LSTM; static int8 (QDQ,
per-channel, calibrated on the samples); weight-only int8 (MatMulNBits, block 32: no activation
quantization, for when dynamic int8 fails the gate); fp16 where the execution provider gains from
it; none (the optimized graph). Each is measured for size, latency (batch 1) and agreement per
output.

Faster than a plain search (build everything, score everything on every row):
- a candidate is skipped unbuilt when it cannot be smaller than one that already passed (its
  size bound: the source less the int8/fp16 savings on the weights it would quantize), or
  when it quantizes exactly the weights of an earlier candidate;
- it is screened on the first rows (``SCREEN_ROWS``) before it is scored on all of them, and
  the original's outputs are computed once, call by call, as far as they are needed.

``Referee`` (the original model, its outputs and the gate) is shared with explicit modes.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxship.api import AccuracyGate, AccuracyReport, CandidateReport, Quantize

from . import quantize
from .accuracy import (
    BATCH,
    GateNames,
    Model,
    compare,
    describe_outputs,
    judge,
    outputs_read,
)
from .errors import InvalidModelError, InvalidSettingsError
from .llm.weights import quantize_weight_only
from .samples import Samples

log = logging.getLogger(__name__)
SCREEN_ROWS = 32
CALIBRATION_ROWS = 64  # activation ranges settle well before; each row costs a full run
SIZE_MARGIN = 0.99  # a bound this close to a passed size cannot beat it once scales are added
GPU_PROVIDERS = ("CUDA", "TensorRT", "ROCm", "DirectML", "CoreML")
# Weight-only candidates are tried only where some MatMul has a constant weight this large
# (256x256): MiniLM's smallest is 384x384. Below it the block scales (1/8 of int8's bytes) and
# the build and screening time buy little over int8, which already quantizes those weights.
LARGE_MATMUL_VALUES = 65_536
WEIGHT_ONLY_BLOCK = 32


def _first_line(exc: BaseException, path: Path | None = None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if path is not None:  # a work folder path means nothing to the user
        text = text.replace(str(path), path.name).replace(str(path.parent) + "/", "")
    return text


class Referee:
    """The original model on the samples, computed once and as far as needed, and the gate."""

    def __init__(
        self,
        original: Path,
        samples: Samples,
        gate: AccuracyGate,
        names: GateNames,
        execution_provider: str,
    ) -> None:
        self.samples = samples
        self.gate = gate
        self.names = names
        self.provider = execution_provider
        self.calls = samples.batches(BATCH)
        self.infos = describe_outputs(original)
        self.read = outputs_read(self.infos, gate, names)
        self.model = Model(original, execution_provider)
        self.screen_calls = min(len(self.calls), _calls_for(SCREEN_ROWS, self.calls, samples))
        self.latency_feed = samples.batches(1)[0]

    def reference(self, n: int) -> list[list[np.ndarray]]:
        """The original's outputs on the first ``n`` calls (raises what ONNX Runtime raised)."""
        return self.model.run(self.calls[:n])

    def rows(self, n: int) -> int:
        if self.samples.one_per_call:
            return n
        return sum(_rows_of(c, self.samples) for c in self.calls[:n])

    def score(self, model: Model, n: int | None = None) -> tuple[AccuracyReport, dict[str, float]]:
        """The gate's verdict on the first ``n`` calls (all by default), and every output's
        cosine (for the outputs the gate does not read)."""
        n = len(self.calls) if n is None else n
        figures = compare(
            self.reference(n),
            model.run(self.calls[:n]),
            self.calls[:n],
            self.infos,
            self.samples,
        )
        report = judge(
            figures, self.gate, self.read, self.rows(n), self.samples.synthetic, self.names
        )
        return report, {k: f.cosine_mean for k, f in figures.items()}

    def unread_note(self, cosines: dict[str, float]) -> str:
        unread = [i for i in self.infos if i.name not in self.read and i.name in cosines]
        if not unread:
            return ""
        parts = ", ".join(
            f"{i.name} (cosine {cosines[i.name]:.4f}; {i.feeds} is computed from it)"
            if i.feeds
            else f"{i.name} (cosine {cosines[i.name]:.4f})"
            for i in unread
        )
        return (
            f"accuracy: the gate read {', '.join(self.read)}; not judged: {parts}. Name outputs "
            f"in {self.names.outputs} to judge them too"
        )


def _rows_of(feed: dict[str, np.ndarray], samples: Samples) -> int:
    for name, layout in samples.layouts.items():
        if layout.how == "axis":
            return int(feed[name].shape[layout.axis])
    return 1


def _calls_for(rows: int, calls: list[dict[str, np.ndarray]], samples: Samples) -> int:
    if samples.one_per_call or not calls:
        return rows
    return max(1, math.ceil(rows / max(_rows_of(calls[0], samples), 1)))


def model_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())


@dataclass
class Plan:
    """A candidate before it is built: how to build it and what it would quantize."""

    name: str
    step: str
    build: Callable[[Path], list[str]] | None  # None: the source itself
    weights: dict[str, int] = field(default_factory=dict)  # float weights it turns int8
    halves: int = 0  # float bytes it turns fp16
    saves: int = 0  # bytes it saves at most, when neither int8 nor fp16 (weight-only)
    skip: str = ""


@dataclass
class Entry:
    """A candidate being measured (CandidateReport is frozen)."""

    name: str
    steps: list[str]
    bytes: int = 0
    latency_ms: float | None = None
    accuracy: AccuracyReport | None = None
    passed: bool = False
    chosen: bool = False
    why: str = ""
    notes: list[str] = field(default_factory=list)  # the quantizer's, for the winner's report

    def report(self) -> CandidateReport:
        return CandidateReport(**{k: v for k, v in self.__dict__.items() if k != "notes"})


@dataclass
class SearchResult:
    path: Path
    step: str
    accuracy: AccuracyReport
    latencies: tuple[float, float]
    candidates: list[CandidateReport]
    notes: list[str]


def plans(
    source: Path,
    q: Quantize,
    samples: Samples,
    execution_provider: str,
    static_source: Callable[[], Path],
) -> list[Plan]:
    graph = onnx.load_model(str(source), load_external_data=False)
    gathers = ["Gather"] if quantize.large_gathers(graph) else []
    initializers = graph.graph.initializer
    q8 = q.model_copy(update={"weight_type": "int8", "per_channel": True})
    matmul_ops = [*quantize.MATMUL_OPS, *gathers]
    conv_ops = [*quantize.DYNAMIC_OPS, *gathers]
    floats = sum(
        int(np.prod(t.dims)) * 4
        for t in initializers
        if t.data_type == onnx.TensorProto.FLOAT
    )
    result = [
        Plan(
            "int8-matmul",
            "quantize:dynamic:int8:per-channel:matmul",
            lambda dst: quantize.dynamic(source, dst, q8, matmul_ops),
            quantize.quantized_weights(graph, matmul_ops),
        ),
        Plan(
            "int8-conv",
            "quantize:dynamic:int8:per-channel",
            lambda dst: quantize.dynamic(source, dst, q8, conv_ops),
            quantize.quantized_weights(graph, conv_ops),
        ),
    ]
    static = Plan(
        "static-int8",
        "quantize:static:int8:per-channel",
        lambda dst: quantize.static(static_source(), dst, q8, samples.head(CALIBRATION_ROWS)),
        quantize.quantized_weights(graph, quantize.STATIC_OPS, small_gathers=True),
    )
    if samples.synthetic:
        static.skip = "only made-up samples: static int8 calibrates activation ranges on real ones"
    elif execution_provider != "CPU":
        static.skip = f"static int8 (QDQ) is measured on CPU only, not {execution_provider}"
    fp16 = Plan(
        "fp16",
        "quantize:fp16",
        lambda dst: quantize.fp16(source, dst, model_bytes(source)),
        halves=floats,
    )
    if execution_provider not in GPU_PROVIDERS:
        fp16.skip = (
            f"{execution_provider} has no fast fp16 kernels: fp16 halves the size but runs "
            "slower than fp32 there"
        )
    int4, int8 = (_weight_only(source, graph, bits, execution_provider) for bits in (4, 8))
    return [int4, *result, static, int8, fp16, Plan("none", "", None)]


def matmul_weights(graph: onnx.ModelProto) -> dict[str, int]:
    """2-D float initializers read only as a MatMul's B (what MatMulNBits replaces) -> values."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in graph.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, i))
    return {
        t.name: int(np.prod(t.dims))
        for t in graph.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and len(t.dims) == 2
        and uses.get(t.name)
        and all(u == ("MatMul", 1) for u in uses[t.name])
    }


def _weight_only(source: Path, graph: onnx.ModelProto, bits: int, provider: str) -> Plan:
    """Weight-only MatMulNBits (block 32; the vocabulary table as int8 GatherBlockQuantized),
    round-to-nearest, symmetric. On MiniLM (optimized graph, batch 1, load 8 on 2 cores) 4-bit
    RTN built in 1-2 s and ran at 0.7-0.9x fp32's latency, sentence_embedding cosine 0.966; HQQ
    gave 0.975 but built in 6-9 s and its block-offset path ran 1.1-1.2x fp32 (711 ms against
    int8's 120 ms inside one search): on a gate both miss, speed decides. 8 bits: 0.9996 there,
    where dynamic int8 (activations quantized too) gave 0.992."""
    q = Quantize(
        mode="weightOnly",
        bits=bits,
        block_size=WEIGHT_ONLY_BLOCK,
        algorithm="rtn",
        symmetric=True,
        embedding="int8",
        accuracy_level=4,
    )
    weights = matmul_weights(graph)
    tables = {n.input[0] for n in graph.graph.node if n.op_type == "Gather"}
    table = max(
        (int(np.prod(t.dims)) for t in graph.graph.initializer if t.name in tables), default=0
    )
    # per value: fp32 4 bytes -> bits/8 + a 4-byte scale per block (an upper bound on the
    # saving: fp16 weights, zero points and offsets save less)
    per_value = 4 - bits / 8 - 4 / WEIGHT_ONLY_BLOCK
    plan = Plan(
        f"weight-only-int{bits}",
        f"quantize:weightOnly:int{bits}:{q.algorithm}:b{WEIGHT_ONLY_BLOCK}",
        lambda dst: quantize_weight_only(source, dst.parent, q),
        {k: v * 4 for k, v in weights.items()},
        saves=int(per_value * sum(weights.values()) + (4 - 1 - 4 / WEIGHT_ONLY_BLOCK) * table),
    )
    largest = max(weights.values(), default=0)
    if largest < LARGE_MATMUL_VALUES:
        plan.skip = (
            f"no large MatMul weight (the largest constant one has {largest:,} values; "
            f"weight-only pays off from {LARGE_MATMUL_VALUES:,})"
        )
    elif provider not in ("CPU", "CUDA"):
        plan.skip = f"MatMulNBits has kernels for CPU and CUDA only, not {provider}"
    return plan


def search(
    source: Path,
    work: Path,
    referee: Referee,
    q: Quantize,
    static_source: Callable[[], Path],
    progress: Callable[[str, int, int], None] | None = None,
) -> SearchResult:
    """Measure the candidates against the gate; the smallest that passes (then the fastest)."""
    samples = referee.samples
    source_bytes = model_bytes(source)
    original_ms = referee.model.latency_ms(referee.latency_feed)
    reports: list[Entry] = []
    built: dict[str, tuple[Path, float]] = {}
    notes: list[str] = []
    best: Entry | None = None
    unreads: dict[str, str] = {}
    candidates = plans(source, q, samples, referee.provider, static_source)
    seen_weights: dict[frozenset[str], str] = {}
    for i, plan in enumerate(candidates):
        if progress:
            progress(f"auto: {plan.name}", i, len(candidates))
        report = Entry(plan.name, [plan.step] if plan.step else [])
        reports.append(report)
        if plan.skip:
            report.why = f"not tried: {plan.skip}"
            continue
        key = frozenset(plan.weights)
        if plan.build is not None and not plan.halves:
            if not key:
                report.why = "not tried: the model has no weights this candidate quantizes"
                continue
            if key in seen_weights and plan.name != "static-int8" and not plan.saves:
                report.why = f"not tried: it quantizes the same weights as {seen_weights[key]}"
                continue
            if not plan.saves:  # weight-only leaves activations float: not the same variant
                seen_weights.setdefault(key, plan.name)
        saved = plan.saves or 0.75 * sum(plan.weights.values())
        bound = source_bytes - saved - 0.5 * plan.halves
        if best is not None and bound >= best.bytes * SIZE_MARGIN:
            report.why = (
                f"not tried: it cannot be smaller than {best.name} ({best.bytes:,} bytes), "
                "which passed"
            )
            continue
        if plan.build is None:
            path = source
        else:
            path = work / plan.name / "model.onnx"
            path.parent.mkdir(parents=True)
            try:
                notes_of = plan.build(path)
            except Exception as exc:  # a quantizer's failure loses the candidate, not the run
                report.why = f"could not be built: {_first_line(exc, path)}"
                log.info("auto: %s could not be built", plan.name, exc_info=True)
                continue
            report.notes = notes_of
        report.bytes = model_bytes(path)
        try:
            model = Model(path, referee.provider)
            screened, _ = referee.score(model, referee.screen_calls)
        except (InvalidModelError, InvalidSettingsError, Exception) as exc:
            report.why = f"does not run on {referee.provider}: {_first_line(exc, path)}"
            continue
        report.accuracy = screened
        report.latency_ms = model.latency_ms(referee.latency_feed)
        if not screened.passed:
            which = "all" if referee.screen_calls == len(referee.calls) else "the first"
            report.why = (
                f"failed the gate on {which} {screened.samples} rows: "
                f"{screened.deciding_output} {screened.metric} {screened.mean:.4f} < "
                f"{screened.threshold}"
            )
            continue
        full, cosines = (
            referee.score(model)
            if referee.screen_calls < len(referee.calls)
            else (screened, referee.score(model, referee.screen_calls)[1])
        )
        report.accuracy = full
        if not full.passed:
            report.why = (
                f"failed the gate on all {full.samples} rows: {full.deciding_output} "
                f"{full.metric} {full.mean:.4f} < {full.threshold}"
            )
            continue
        report.passed = True
        built[plan.name] = (path, report.latency_ms)
        unreads[plan.name] = referee.unread_note(cosines)
        if best is None or report.bytes < best.bytes:
            best = report
    if progress:
        progress("auto", len(candidates), len(candidates))
    if best is None:
        final = [r.report() for r in reports]
        return SearchResult(source, "", _worst(final), (original_ms, 0.0), final, notes)
    # Sizes within 1% are the same size: the fastest of them wins (int8 Conv kernels can be
    # 3x slower than a QDQ graph 1% larger).
    smallest = best
    best = min(
        (r for r in reports if r.passed and r.bytes * SIZE_MARGIN <= smallest.bytes),
        key=lambda r: (r.latency_ms or 0.0, r.bytes),
    )
    best_accuracy = best.accuracy
    assert best_accuracy is not None
    unread = unreads[best.name]
    best.chosen = True
    best.why = (
        "chosen: the smallest candidate that passed the gate"
        if best is smallest
        else f"chosen: as small as {smallest.name} (within 1%) and faster"
    )
    for r in reports:
        if r.passed and not r.chosen:
            r.why = (
                f"passed, but {best.name} is smaller ({best.bytes:,} < {r.bytes:,} bytes)"
                if r.bytes > best.bytes
                else f"passed, but {best.name} is about as small and faster "
                f"({best.latency_ms:.2f} < {r.latency_ms or 0:.2f} ms)"
            )
    notes += best.notes
    if unread:
        notes.append(unread)
    if best.name == "none":
        notes.append("quantize: auto: no quantized candidate passed the gate; published as is")
    path, latency = built[best.name]
    if path != source:
        for other, _ in built.values():  # free the losers' bytes before publishing
            if other != path and other.parent.is_relative_to(work):
                shutil.rmtree(other.parent, ignore_errors=True)
    return SearchResult(
        path,
        best.steps[0] if best.steps else "",
        best_accuracy,
        (original_ms, latency),
        [r.report() for r in reports],
        notes,
    )


def _worst(reports: list[CandidateReport]) -> AccuracyReport:
    """The report of the candidate that came closest, for the refusal."""
    measured = [r.accuracy for r in reports if r.accuracy is not None]
    if not measured:
        raise InvalidSettingsError(
            "quantize: auto: no candidate could be measured: "
            + "; ".join(f"{r.name}: {r.why}" for r in reports)
        )
    return max(measured, key=lambda a: a.mean)


def table(reports: list[CandidateReport]) -> str:
    """The candidates as plain text lines (a refusal's message, logs)."""
    lines = []
    for r in reports:
        figure = (
            f"{r.accuracy.deciding_output or r.accuracy.metric} {r.accuracy.mean:.4f}"
            if r.accuracy
            else "-"
        )
        size = f"{r.bytes / 1e6:.2f} MB" if r.bytes else "-"
        lines.append(f"  {r.name:<12} {size:>10}  {figure:<32} {r.why}")
    return "\n".join(lines)
