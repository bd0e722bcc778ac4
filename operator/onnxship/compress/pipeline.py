"""compress(): fetch, validate, look up the cache, optimize, prune, quantize, check, publish.

Each step writes a new folder under a private work directory, so a failure anywhere leaves
the store untouched: publishing is the last step, and the store writes the manifest last.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import onnx
import onnxruntime as ort

from onnxship import __version__
from onnxship.api import (
    AccuracyReport,
    ArtifactManifest,
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

from . import accuracy, quantize
from .errors import AccuracyGateError, InvalidModelError, InvalidSettingsError
from .optimize import optimize
from .prune import prune
from .samples import Samples, load_samples, synthesize
from .source import SourceAccess, digest_of_files, fetch_model, fetch_samples
from .validate import ModelInfo, validate_model

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CompressionOutcome:
    """What ``compress`` did: the manifest in the store, and whether it was already there."""

    manifest: ArtifactManifest
    cache_hit: bool
    artifact_uri: str = ""
    notes: list[str] = field(default_factory=list)


def tool_versions(execution_provider: str) -> dict[str, str]:
    """What produces the compressed bytes, for the cache key.

    The execution provider is here because the optimizer fuses for the provider it targets.
    """
    return {
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "optimizedFor": execution_provider,
    }


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
) -> CompressionOutcome:
    """Compress the model at ``source_uri`` with ``compression`` and publish it to ``store``.

    - ``sample_inputs``: URI or path of an .npz keyed by input name, for calibration and the
      accuracy gate; without it, inputs are made up from the signature (the report says so).
    - ``execution_provider``: the ORT provider the artifact is for (CPU, CUDA, ...).
    - ``expected_sha256``: pin of the source model file; a mismatch publishes nothing.
    - ``progress``: listener for byte and step progress (see ``onnxship.store.Progress``).
    - ``model_kind``: spec.model.kind; None = found from the files (a folder, or a graph with
      a decoder's signature, is a causal LM: compressed by ``llm.pipeline.compress_llm``).

    The same source digest, settings and tool versions give the same cache key; when the
    store already has it, nothing is computed (``cache_hit=True``) but the gate is still
    judged on the stored figures. Raises InvalidModelError, SourceError, InvalidSettingsError,
    AccuracyGateError or StoreError; in every case nothing is published.
    """
    progress = progress or no_progress
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
        key = cache_key(source_digest, compression, tool_versions(execution_provider))
        existing = store.get_manifest(key)
        if existing is not None:
            return _cache_hit(existing, compression, store)

        samples = _samples(sample_inputs, info, work, source_access)
        notes = [samples.note] if samples.note else []
        if samples.attention_mask() is not None:
            notes.append("accuracy: outputs shaped [batch, seq, ...] compared on unmasked tokens")
        current = info.path
        applied: list[str] = []

        def step_dir(name: str) -> Path:
            d = work / f"{len(applied):02d}-{name}"
            d.mkdir()
            return d / "model.onnx"

        level = compression.optimize
        if compression.quantize.mode == QuantizeMode.static and level in ("extended", "all"):
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
        q = compression.quantize
        if q.mode != QuantizeMode.none:
            out = step_dir("quantize")
            src = current

            def run_quantize() -> list[str]:
                if q.mode == QuantizeMode.dynamic:
                    return quantize.dynamic(src, out, q)
                if q.mode == QuantizeMode.static:
                    return quantize.static(src, out, q, samples)
                return quantize.fp16(src, out, info.total_bytes)

            notes += steps.run("quantize", run_quantize)
            detail = (
                ""
                if q.mode == QuantizeMode.fp16
                else f":{q.weight_type}:{'per-channel' if q.per_channel else 'per-tensor'}"
            )
            applied.append(f"quantize:{q.mode}{detail}")
            current = out

        result = steps.run("check", lambda: validate_model(current, full_check=False))
        # One session per model for outputs and latency: a multi-GB model is loaded once here.
        report_accuracy, latencies = steps.run(
            "accuracy",
            lambda: _accuracy(info.path, current, samples, execution_provider, compression),
        )
        if not report_accuracy.passed:
            raise _gate_error(report_accuracy, compression)

        files = result.files
        blobs = describe(current.parent, files, progress)
        compressed_bytes = sum(b.size for b in blobs)
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
            ),
            tools=ToolVersions(
                onnxship=__version__, onnx=onnx.__version__, onnxruntime=ort.__version__
            ),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        manifest = steps.run("publish", lambda: store.publish(draft, current.parent, progress))
        return CompressionOutcome(manifest, False, store.manifest_uri(key), notes)


def _samples(uri: str, info: ModelInfo, work: Path, access: SourceAccess | None) -> Samples:
    if uri:
        return load_samples(fetch_samples(uri, work, access), info.inputs)
    return synthesize(info.inputs)


def _accuracy(
    original: Path,
    compressed: Path,
    samples: Samples,
    execution_provider: str,
    compression: Compression,
) -> tuple[AccuracyReport, tuple[float, float]]:
    try:
        before, before_ms = accuracy.run_all(original, samples, execution_provider)
    except InvalidModelError:
        raise
    except Exception as exc:
        raise InvalidSettingsError(
            f"{original}: running the model on the sample inputs failed: {exc}"
        ) from None
    try:
        after, after_ms = accuracy.run_all(compressed, samples, execution_provider)
    except Exception as exc:
        raise InvalidSettingsError(
            f"the compressed model does not run on {execution_provider} here ({exc}); "
            "choose other compression settings for this environment"
        ) from None
    found = accuracy.agreement(before, after, samples.attention_mask())
    report = accuracy.judge(found, compression.accuracy_gate, samples.rows, samples.synthetic)
    return report, (before_ms, after_ms)


def _gate_error(report: AccuracyReport, compression: Compression) -> AccuracyGateError:
    gate = compression.accuracy_gate
    return AccuracyGateError(
        f"accuracy gate failed: {gate.metric} {report.mean:.6f} < {gate.min} "
        f"(spec.compression.accuracyGate.min) on {report.samples} samples; nothing was published. "
        "Loosen the compression (per-channel, fewer pruned weights, no quantization) or the gate",
        report,
    )


def _cache_hit(
    existing: ArtifactManifest, compression: Compression, store: ArtifactStore
) -> CompressionOutcome:
    notes = ["cache hit: the store already holds this model compressed with these settings"]
    report = existing.report
    if report.accuracy is not None:
        verdict = accuracy.rejudge(report.accuracy, compression.accuracy_gate)
        if not verdict.passed:
            raise _gate_error(verdict, compression)
        existing = existing.model_copy(
            update={"report": report.model_copy(update={"accuracy": verdict})}
        )
    return CompressionOutcome(existing, True, store.manifest_uri(existing.cache_key), notes)
