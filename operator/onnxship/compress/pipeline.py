"""compress(): fetch, validate, look up the cache, optimize, prune, quantize, check, publish.

Each step writes a new folder under a private work directory, so a failure anywhere leaves
the store untouched: publishing is the last step, and the store writes the manifest last.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnxruntime as ort

from onnxship import __version__
from onnxship.api import (
    AccuracyReport,
    ArtifactManifest,
    CandidateReport,
    Compression,
    CompressionReport,
    ExecutionProvider,
    ModelKind,
    QuantizeMode,
    SourceInfo,
    ToolVersions,
)
from onnxship.plan.revision import cache_key
from onnxship.store import ArtifactStore, Progress, describe, no_progress

from . import accuracy, quantize, search
from .accuracy import CLI_NAMES, SPEC_NAMES, GateNames
from .errors import AccuracyGateError, InvalidModelError, InvalidSettingsError
from .optimize import optimize
from .prune import prune
from .samples import SYNTHETIC_DIM, Samples, load_samples, synthesize, warmup_feed
from .source import SourceAccess, digest_of_files, fetch_model, fetch_samples
from .validate import ModelInfo, validate_model
from .versions import tool_versions

log = logging.getLogger(__name__)
T = TypeVar("T")
WARMUP_FILE = "warmup.npz"  # real sample rows serve warms up with (CONTRACTS.md §2)
RETRY_DIMS = (64, 512)  # made-up symbolic dimensions tried when 16 does not run


@dataclass(frozen=True)
class CompressionOutcome:
    """What ``compress`` did: the manifest in the store, and whether it was already there."""

    manifest: ArtifactManifest
    cache_hit: bool
    artifact_uri: str = ""
    notes: list[str] = field(default_factory=list)


class _Steps:
    """Times each step, reports it to the progress listener and logs one line per step."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        self.progress(name, 0, 1)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.progress(name, 1, 1)
        log.info(
            "%s done in %.2fs",
            name,
            self.seconds[name],
            extra={"step": name, "seconds": self.seconds[name]},
        )
        return result


def compress(
    source_uri: str,
    compression: Compression,
    store: ArtifactStore,
    *,
    sample_inputs: str = "",
    execution_provider: str = "CPU",
    expected_sha256: str = "",
    progress: Progress | None = None,
    source_access: SourceAccess | None = None,
    model_version: str = "",
    work_dir: Path | None = None,
    model_kind: ModelKind | str | None = None,
    gate_names: GateNames | None = None,
) -> CompressionOutcome:
    """Compress the model at ``source_uri`` with ``compression`` and publish it to ``store``.

    - ``sample_inputs``: URI or path of an .npz keyed by input name, for calibration and the
      accuracy gate; without it, inputs are made up from the signature (the report says so).
    - ``execution_provider``: the ORT provider the artifact is for (CPU, CUDA, ...).
    - ``expected_sha256``: pin of the source model file; a mismatch publishes nothing.
    - ``progress``: listener for byte and step progress (see ``onnxship.store.Progress``).
    - ``gate_names``: how the user set the gate, for messages (``accuracy.CLI_NAMES`` on a
      CLI run names ``--gate-min``; the spec's fields by default).
    - ``model_kind``: spec.model.kind; None = found from the files (a folder, or a graph with
      a decoder's signature, is a causal LM: compressed by ``llm.pipeline.compress_llm``).

    The same source digest, settings and tool versions give the same cache key; when the
    store already has it, nothing is computed (``cache_hit=True``) but the gate is still
    judged on the stored figures. Raises InvalidModelError, SourceError, InvalidSettingsError,
    AccuracyGateError or StoreError; in every case nothing is published.
    """
    progress = progress or no_progress
    names = gate_names or SPEC_NAMES
    started = time.perf_counter()
    known = [e.value for e in ExecutionProvider]
    if execution_provider not in known:
        raise InvalidSettingsError(
            f"execution provider {execution_provider!r} is not one of {', '.join(known)}"
        )
    with tempfile.TemporaryDirectory(prefix="onnxship-compress-", dir=work_dir) as tmp:
        work = Path(tmp)
        steps = _Steps(progress)
        fetched = steps.run(
            "fetch",
            lambda: fetch_model(
                source_uri,
                work,
                expected_sha256=expected_sha256,
                access=source_access,
                progress=progress,
                kind=model_kind,
            ),
        )
        if fetched.folder is not None:  # a causal LM: its own pipeline from here on
            from .llm.pipeline import compress_llm

            return compress_llm(
                fetched,
                compression,
                store,
                source_uri=source_uri,
                work=work,
                steps=steps,
                started=started,
                sample_inputs=sample_inputs,
                execution_provider=execution_provider,
                progress=progress,
                source_access=source_access,
                model_version=model_version,
            )
        info: ModelInfo = steps.run("validate", lambda: validate_model(fetched.path))
        source_digest = (
            fetched.sha256
            if not info.external_files
            else digest_of_files(info.path.parent, info.files)
        )
        samples = _samples(sample_inputs, info, work, source_access, names)
        key = cache_key(
            source_digest,
            compression,
            tool_versions(execution_provider),
            # Made-up inputs follow from the model, so they are left out: the operator's
            # store lookup (controller/artifacts.py), which has no samples, still finds it.
            samples_sha256="" if samples.synthetic else samples.digest,
        )
        existing = store.get_manifest(key)
        if existing is not None:
            return _cache_hit(existing, compression, store, names)

        notes = [samples.note] if samples.note else []
        if samples.mask_name() is not None:
            notes.append("accuracy: outputs shaped [batch, seq, ...] compared on unmasked tokens")
        current = info.path
        applied: list[str] = []

        def step_dir(name: str) -> Path:
            d = work / f"{len(applied):02d}-{name}"
            d.mkdir()
            return d / "model.onnx"

        q = compression.quantize
        level = compression.optimize
        if q.mode == QuantizeMode.static and level in ("extended", "all"):
            # The static quantizer places Q/DQ pairs on standard ops; fused contrib ops carry no
            # shapes and break it. ORT fuses the quantized graph when it loads it anyway.
            notes.append(f"optimize: basic instead of {level} before static quantization")
            level = "basic"
        if level != "none":
            out = step_dir("optimize")
            notes += steps.run(
                "optimize",
                lambda: optimize(current, out, level, execution_provider, info.total_bytes),
            )
            applied.append(f"optimize:{level}")
            current = out
        if compression.prune.sparsity > 0:
            out = step_dir("prune")
            count, zeros = steps.run(
                "prune",
                lambda: prune(current, out, compression.prune.sparsity, compression.prune.method),
            )
            notes.append(f"prune: {count} weight tensors, {zeros:.1%} of their values now zero")
            applied.append(f"prune:{compression.prune.method}:{compression.prune.sparsity:g}")
            current = out

        referee = steps.run(
            "reference",
            lambda: _referee(
                info.path, samples, compression, names, execution_provider, source_uri
            ),
        )
        if referee.samples is not samples:  # made-up again with longer dimensions
            notes = [referee.samples.note if n == samples.note else n for n in notes]
            samples = referee.samples
        candidates: list[CandidateReport] = []
        if q.mode == QuantizeMode.auto:
            base = current
            result = steps.run(
                "search",
                lambda: search.search(
                    base,
                    work / "search",
                    referee,
                    q,
                    lambda: _static_source(info.path, compression, work, execution_provider),
                    progress,
                ),
            )
            candidates = result.candidates
            notes += result.notes
            report_accuracy, latencies = result.accuracy, result.latencies
            if result.step.startswith("quantize:static"):
                # the static candidate starts from a basic-optimized graph (_static_source)
                applied = ["optimize:basic" if a.startswith("optimize:") else a for a in applied]
            if result.step:
                applied.append(result.step)
            current = result.path
            if not result.step and result.accuracy.passed and current != info.path:
                current, applied = _smaller_original(current, info, step_dir, notes, applied)
        else:
            if q.mode != QuantizeMode.none:
                out = step_dir("quantize")
                src = current

                def run_quantize() -> list[str]:
                    if q.mode == QuantizeMode.dynamic:
                        return quantize.dynamic(src, out, q)
                    if q.mode == QuantizeMode.static:
                        return quantize.static(src, out, q, samples)
                    if q.mode == QuantizeMode.fp16:
                        return quantize.fp16(src, out, info.total_bytes)
                    raise InvalidSettingsError(
                        f"{names.quantize}: {q.mode} is for causal LMs; use auto, dynamic, "
                        "static, fp16 or none for this model"
                    )

                notes += steps.run("quantize", run_quantize)
                detail = (
                    ""
                    if q.mode == QuantizeMode.fp16
                    else f":{q.weight_type}:{'per-channel' if q.per_channel else 'per-tensor'}"
                )
                applied.append(f"quantize:{q.mode}{detail}")
                current = out
            steps.run("check", lambda: validate_model(current, full_check=False))
            report_accuracy, latencies, unread = steps.run(
                "accuracy", lambda: _accuracy(referee, current, execution_provider)
            )
            if unread:
                notes.append(unread)
            candidates = [
                CandidateReport(
                    name=str(q.mode),
                    steps=applied[-1:],
                    bytes=search.model_bytes(current),
                    latency_ms=latencies[1],
                    accuracy=report_accuracy,
                    passed=report_accuracy.passed,
                    chosen=report_accuracy.passed,
                    why=f"{names.quantize}: {q.mode} (explicit)",
                )
            ]
        result_files = validate_model(current, full_check=False).files
        if not report_accuracy.passed:
            smallest = min((c.bytes for c in candidates if c.bytes), default=0)
            raise _gate_error(
                report_accuracy,
                names,
                CompressionReport(
                    original_bytes=info.total_bytes,
                    compressed_bytes=smallest,
                    ratio=round(smallest / info.total_bytes, 6),
                    accuracy=report_accuracy,
                    steps=applied,
                    notes=notes,
                    candidates=candidates,
                    samples_digest=samples.digest,
                ),
            )

        files = list(result_files)
        warm = warmup_feed(samples)
        if warm is not None:
            np.savez(current.parent / WARMUP_FILE, **warm)
            files.append(WARMUP_FILE)
            notes.append(
                f"warm-up: {_call_rows(warm, samples)} sample row(s) kept as {WARMUP_FILE}"
            )
        blobs = describe(current.parent, files, progress)
        compressed_bytes = sum(b.size for b in blobs if b.name != WARMUP_FILE)
        if compressed_bytes >= info.total_bytes:
            notes.append(
                "size: the result is not smaller than the original (quantization adds scales "
                "and nodes; small models have little weight to save)"
            )
        draft = ArtifactManifest(
            cache_key=key,
            source=SourceInfo(
                uri=source_uri,
                sha256=source_digest,
                size_bytes=info.total_bytes,
                version=model_version,
            ),
            compression=compression,
            execution_provider=execution_provider,
            model_file=current.name,
            blobs=blobs,
            report=CompressionReport(
                original_bytes=info.total_bytes,
                compressed_bytes=compressed_bytes,
                ratio=round(compressed_bytes / info.total_bytes, 6),
                accuracy=report_accuracy,
                original_latency_ms=latencies[0],
                compressed_latency_ms=latencies[1],
                steps=applied,
                seconds=round(time.perf_counter() - started, 3),
                step_seconds=steps.seconds,
                notes=notes,
                candidates=candidates,
                samples_digest=samples.digest,
            ),
            tools=ToolVersions(
                onnxship=__version__, onnx=onnx.__version__, onnxruntime=ort.__version__
            ),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        manifest = steps.run("publish", lambda: store.publish(draft, current.parent, progress))
        return CompressionOutcome(manifest, False, store.manifest_uri(key), notes)


def _smaller_original(
    current: Path,
    info: ModelInfo,
    step_dir: Callable[[str], Path],
    notes: list[str],
    applied: list[str],
) -> tuple[Path, list[str]]:
    """Nothing quantized passed: when the optimizer grew the graph (constant folding inside
    If branches did on a voice-activity model), the original graph is the smaller answer."""
    grown = search.model_bytes(current)
    if grown <= info.total_bytes or any(a.startswith("prune:") for a in applied):
        return current, applied
    out = step_dir("original")
    for name in info.files:
        shutil.copyfile(info.path.parent / name, out.parent / name)
    notes.append(
        f"optimize: the optimized graph was larger ({grown:,} > {info.total_bytes:,} bytes) "
        "and no quantized candidate was chosen: published the original graph"
    )
    return out.parent / info.path.name, []


def _call_rows(feed: dict[str, np.ndarray], samples: Samples) -> int:
    for name, layout in samples.layouts.items():
        if layout.how == "axis":
            return int(feed[name].shape[layout.axis])
    return 1


def _samples(
    uri: str, info: ModelInfo, work: Path, access: SourceAccess | None, names: GateNames
) -> Samples:
    if uri:
        return load_samples(fetch_samples(uri, work, access), info.inputs)
    where = "--samples" if names is CLI_NAMES else "spec.model.sampleInputs"
    return synthesize(info.inputs, where=where)


def _referee(
    original: Path,
    samples: Samples,
    compression: Compression,
    names: GateNames,
    execution_provider: str,
    source: str,
) -> search.Referee:
    """The original model ready to judge candidates: it must run on the samples. Made-up
    inputs that it refuses (a branch that pads more than 16 frames) are made again with longer
    symbolic dimensions before giving up. ``source``: the model as the user named it."""
    where = "--samples" if names is CLI_NAMES else "spec.model.sampleInputs"
    tries = [samples] if not samples.synthetic else [samples] + [
        synthesize(_inputs_of(original), dim=dim, where=where) for dim in RETRY_DIMS
    ]
    for attempt in tries:
        referee = search.Referee(
            original, attempt, compression.accuracy_gate, names, execution_provider
        )
        try:
            referee.reference(1)
        except InvalidModelError:
            raise
        except Exception as exc:
            reason = search._first_line(exc)
            if attempt is tries[-1]:
                shapes = ", ".join(
                    f"{k} {list(v.shape)} {v.dtype}" for k, v in referee.calls[0].items()
                )
                if samples.synthetic:
                    raise InvalidSettingsError(
                        f"the model {source} does not run on inputs made up from its signature "
                        f"({shapes}; "
                        f"symbolic dimensions tried: {SYNTHETIC_DIM}, "
                        f"{', '.join(map(str, RETRY_DIMS))}): {reason}. Pass real sample inputs "
                        f"({where})"
                    ) from None
                raise InvalidSettingsError(
                    f"the model {source} does not run on the sample inputs ({where}; first call: "
                    f"{shapes}): {reason}"
                ) from None
            continue
        return referee
    raise AssertionError("unreachable")


def _inputs_of(path: Path) -> list:  # type: ignore[type-arg]
    return validate_model(path, full_check=False).inputs


def _static_source(
    original: Path, compression: Compression, work: Path, execution_provider: str
) -> Path:
    """auto's static candidate starts from a basic-optimized graph: the static quantizer
    places Q/DQ pairs on standard ops, and extended fusions carry no shapes."""
    folder = work / "static-source"
    path = folder / "model.onnx"
    if path.exists():
        return path
    folder.mkdir()
    current = original
    if compression.optimize != "none":
        optimize(original, path, "basic", execution_provider, original.stat().st_size)
        current = path
    if compression.prune.sparsity > 0:
        pruned = folder / "pruned" / "model.onnx"
        pruned.parent.mkdir()
        prune(current, pruned, compression.prune.sparsity, compression.prune.method)
        current = pruned
    return current


def _accuracy(
    referee: search.Referee, compressed: Path, execution_provider: str
) -> tuple[AccuracyReport, tuple[float, float], str]:
    try:
        model = accuracy.Model(compressed, execution_provider)
        report, cosines = referee.score(model)
    except InvalidSettingsError:
        raise
    except Exception as exc:
        raise InvalidSettingsError(
            f"the compressed model does not run on {execution_provider} here "
            f"({search._first_line(exc, compressed)}); choose other compression settings for "
            "this environment"
        ) from None
    before = referee.model.latency_ms(referee.latency_feed)
    after = model.latency_ms(referee.latency_feed)
    return report, (before, after), referee.unread_note(cosines)


def _gate_error(
    report: AccuracyReport, names: GateNames, summary: CompressionReport | None = None
) -> AccuracyGateError:
    message = accuracy.gate_message(report, names)
    if summary is not None and len(summary.candidates) > 1:
        message += ". Candidates (quantize: auto):\n" + search.table(summary.candidates)
    else:
        message += (
            f". Loosen the compression ({names.quantize} auto tries gentler variants, "
            "fewer pruned weights) or the gate"
        )
    return AccuracyGateError(message, report, summary)


def _cache_hit(
    existing: ArtifactManifest, compression: Compression, store: ArtifactStore, names: GateNames
) -> CompressionOutcome:
    notes = ["cache hit: the store already holds this model compressed with these settings"]
    report = existing.report
    if report.accuracy is not None:
        verdict = accuracy.rejudge(report.accuracy, compression.accuracy_gate)
        if not verdict.passed:
            raise _gate_error(verdict, names, report)
        existing = existing.model_copy(
            update={"report": report.model_copy(update={"accuracy": verdict})}
        )
    return CompressionOutcome(existing, True, store.manifest_uri(existing.cache_key), notes)
