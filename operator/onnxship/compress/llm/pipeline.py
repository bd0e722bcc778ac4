"""compress() for a causal LM folder: check, quantize weight-only, gate on generation, publish.

``compress`` (compress/pipeline.py) hands over right after the fetch when the model is a folder
(see llm/folder.py for what makes one). Each candidate is written into its own folder (the
quantized graph and data, every other file of the source copied), judged by the generation gate
against the original, and only the chosen one is published: every file a blob, the manifest
last (``kind: causal-lm``).

Settings: ``quantize.mode`` weightOnly (one variant), auto (the default: the candidate list,
cheapest first; the first that passes the gate is published, every candidate is in the report)
or none (the folder as it is). A spec that left the accuracy gate at its encoder default
(cosine >= 0.99) gets the causal-LM gate below; the report says so.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import onnx
import onnxruntime as ort

from onnxship import __version__
from onnxship.api import (
    AccuracyGate,
    AccuracyReport,
    ArtifactManifest,
    CandidateReport,
    Compression,
    CompressionReport,
    ModelKind,
    Quantize,
    QuantizeMode,
    SourceInfo,
    ToolVersions,
)
from onnxship.store import ArtifactStore, Progress, describe, sha256_file

from ..errors import AccuracyGateError, InvalidSettingsError
from ..pipeline import CompressionOutcome
from ..source import FetchedModel, SourceAccess, fetch_samples
from ..validate import validate_model
from . import gate as generation
from . import prompts as prompt_sets
from . import weights
from .folder import GENAI_CONFIG, LlmFolder, check_folder, list_files
from .keys import KL_MAX, llm_cache_key, llm_settings

T = TypeVar("T")

OUT_GRAPH = "model.onnx"


class Steps(Protocol):
    def run(self, name: str, fn: Callable[[], T]) -> T: ...

    @property
    def seconds(self) -> dict[str, float]: ...


def variant_name(q: Quantize) -> str:
    """A short name for a weight-only variant, e.g. int4-kquantMixed-b32-emb8."""
    if q.mode == QuantizeMode.none:
        return "original"
    grid = "" if q.symmetric or q.algorithm != "rtn" else "-asym"
    emb = {"keep": "-embf", "int8": "-emb8", "int4": "-emb4"}[q.embedding]
    return f"int{q.bits}-{q.algorithm}-b{q.block_size}{grid}{emb}"


def judge(found: generation.GenerationAgreement, gate: AccuracyGate) -> AccuracyReport:
    """The gate's verdict on the three figures. ``min`` holds the worst prompt's figure."""
    per_prompt = [{k: round(float(v), 6) for k, v in p.items()} for p in found.per_prompt]
    return _verdict(
        found.top1, found.kl_mean, found.token_agreement, per_prompt, found.prompts, gate
    )


def rejudge(report: AccuracyReport, gate: AccuracyGate) -> AccuracyReport:
    """A stored causal-LM report judged against another gate, without running anything."""
    return _verdict(
        report.top1_agreement if report.top1_agreement is not None else report.mean,
        report.kl_mean or 0.0,
        report.token_agreement if report.token_agreement is not None else report.mean,
        report.per_prompt,
        report.samples,
        gate,
    )


def _verdict(
    top1: float,
    kl: float,
    tokens: float,
    per_prompt: list[dict[str, float]],
    prompts: int,
    gate: AccuracyGate,
) -> AccuracyReport:
    metric = gate.metric
    value = {"top1": top1, "kl": kl, "tokens": tokens}[metric]
    each = [p[metric] for p in per_prompt if metric in p] or [value]
    if metric == "kl":
        threshold = gate.max if gate.max is not None else KL_MAX
        worst, passed = max(each), value <= threshold
    else:
        threshold = gate.min
        worst, passed = min(each), value >= threshold
    return AccuracyReport(
        metric=metric,
        mean=round(value, 6),
        min=round(worst, 6),
        threshold=threshold,
        passed=passed,
        samples=prompts,
        top1_agreement=round(top1, 6),
        kl_mean=round(kl, 6),
        token_agreement=round(tokens, 6),
        per_prompt=per_prompt,
    )


def gate_error(
    report: AccuracyReport, detail: str = "", summary: CompressionReport | None = None
) -> AccuracyGateError:
    if report.metric == "kl":
        failed = f"kl {report.mean:.6f} > {report.threshold} (spec.compression.accuracyGate.max)"
    else:
        failed = (
            f"{report.metric} {report.mean:.6f} < {report.threshold} "
            "(spec.compression.accuracyGate.min)"
        )
    return AccuracyGateError(
        f"accuracy gate failed: {failed} on {report.samples} prompts{detail}; nothing was "
        "published. Loosen the quantization (bits 8, a smaller block, embedding keep, mode "
        "auto) or the gate",
        report,
        summary,
    )


def candidates(q: Quantize) -> list[tuple[str, Quantize]]:
    """What to try, cheapest first: the one variant asked for, or D's list for auto (with the
    accuracy level the spec asks for)."""
    if q.mode == QuantizeMode.auto:
        return [
            (name, c.model_copy(update={"accuracy_level": q.accuracy_level}))
            for name, c in weights.llm_candidates()
        ]
    return [(variant_name(q), q)]


def compress_llm(
    fetched: FetchedModel,
    compression: Compression,
    store: ArtifactStore,
    *,
    source_uri: str,
    work: Path,
    steps: Steps,
    started: float,
    sample_inputs: str = "",
    execution_provider: str = "CPU",
    progress: Progress,
    source_access: SourceAccess | None = None,
    model_version: str = "",
) -> CompressionOutcome:
    """Compress the causal-LM folder ``fetched.folder``; see the module's docstring."""
    assert fetched.folder is not None
    folder: LlmFolder = steps.run("validate", lambda: check_folder(fetched.folder))
    effective, notes = llm_settings(compression)
    prompts_file = fetch_samples(sample_inputs, work, source_access) if sample_inputs else None
    prompts_digest = sha256_file(prompts_file)[0] if prompts_file else ""
    key = llm_cache_key(fetched.sha256, effective, execution_provider, prompts_digest)
    existing = store.get_manifest(key)
    if existing is not None:
        return _cache_hit(existing, effective, store)

    q = effective.quantize
    gate = effective.accuracy_gate
    tried: list[CandidateReport] = []
    chosen: tuple[Path, AccuracyReport | None, str] | None = None
    if q.mode == QuantizeMode.none:
        notes.append("quantize none: the folder is published as it is (no gate to run)")
        chosen = (folder.path, None, variant_name(q))
        tried.append(
            CandidateReport(
                name="original", bytes=folder.total_bytes, passed=True, chosen=True, why="none"
            )
        )
    else:
        loaded = steps.run("prompts", lambda: prompt_sets.load_prompts(prompts_file, folder.path))
        notes += loaded.notes
        if execution_provider != "CPU":
            notes.append(f"gate: run on CPU; the artifact is for {execution_provider}")
        reference = steps.run(
            "gate reference",
            lambda: generation.build_reference(folder.path, loaded.ids, work / "reference"),
        )
        with reference:
            plan = candidates(q)
            for i, (name, cand) in enumerate(plan):
                out = work / f"candidate-{i:02d}"
                q_notes = steps.run(
                    f"quantize {name}",
                    lambda o=out, c=cand: _quantize(folder, o, c, progress, loaded.ids),  # type: ignore[misc]
                )
                found = steps.run(
                    f"gate {name}",
                    lambda o=out: generation.compare(reference, o),  # type: ignore[misc]
                )
                report = judge(found, gate)
                size = sum((out / f).stat().st_size for f in list_files(out))
                entry = CandidateReport(
                    name=name,
                    steps=[f"quantize:weightOnly:{name}"],
                    bytes=size,
                    accuracy=report,
                    passed=report.passed,
                )
                if report.passed:
                    why = "the cheapest that passed the gate" if len(plan) > 1 else "passed"
                    tried.append(entry.model_copy(update={"chosen": True, "why": why}))
                    chosen = (out, report, name)
                    notes += q_notes
                    skipped = plan[i + 1 :]
                    tried += [
                        CandidateReport(name=n, why="not tried: a cheaper one passed")
                        for n, _ in skipped
                    ]
                    break
                tried.append(entry.model_copy(update={"why": "failed the gate"}))
                shutil.rmtree(out, ignore_errors=True)
        if chosen is None:
            best = _best(tried, gate)
            detail = f" (best of {len(tried)} candidates: {best.name})" if len(tried) > 1 else ""
            assert best.accuracy is not None
            summary = CompressionReport(
                original_bytes=folder.total_bytes,
                compressed_bytes=best.bytes,
                ratio=round(best.bytes / folder.total_bytes, 6),
                accuracy=best.accuracy,
                seconds=round(time.perf_counter() - started, 3),
                step_seconds=steps.seconds,
                notes=notes,
                candidates=tried,
                samples_digest=prompts_digest,
            )
            raise gate_error(best.accuracy, detail, summary)

    out, accuracy_report, variant = chosen
    if q.mode != QuantizeMode.none:
        # The gate ran plain ONNX Runtime; the servers run ONNX Runtime GenAI.
        steps.run("check genai", lambda: loads_in_genai(out, variant))
    names = list_files(out)
    names.sort(key=lambda n: (n != OUT_GRAPH, n))  # the graph first, then the rest
    blobs = describe(out, names, progress)
    compressed = sum(b.size for b in blobs)
    step = "none" if q.mode == QuantizeMode.none else f"quantize:weightOnly:{variant}"
    draft = ArtifactManifest(
        cache_key=key,
        source=SourceInfo(
            uri=source_uri,
            sha256=fetched.sha256,
            size_bytes=folder.total_bytes,
            version=model_version,
        ),
        compression=effective,
        execution_provider=execution_provider,
        kind=ModelKind.causal_lm,
        model_file=OUT_GRAPH if q.mode != QuantizeMode.none else folder.graph,
        blobs=blobs,
        report=CompressionReport(
            original_bytes=folder.total_bytes,
            compressed_bytes=compressed,
            ratio=round(compressed / folder.total_bytes, 6),
            accuracy=accuracy_report,
            steps=[step] if q.mode != QuantizeMode.none else [],
            seconds=round(time.perf_counter() - started, 3),
            step_seconds=steps.seconds,
            notes=notes,
            candidates=tried,
            samples_digest=prompts_digest,
        ),
        tools=ToolVersions(
            onnxship=__version__, onnx=onnx.__version__, onnxruntime=ort.__version__
        ),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest = steps.run("publish", lambda: store.publish(draft, out, progress))
    return CompressionOutcome(manifest, False, store.manifest_uri(key), notes)


def chosen_variant(manifest: ArtifactManifest) -> str:
    """The published variant's name ("" for an encoder without a search)."""
    return next((c.name for c in manifest.report.candidates if c.chosen), "")


def loads_in_genai(folder: Path, variant: str) -> None:
    """ONNX Runtime GenAI loads the folder and takes one step; else InvalidSettingsError."""
    import onnxruntime_genai as og  # only for causal LMs

    try:
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=2)
        generator = og.Generator(model, params)
        generator.append_tokens([0])
        del generator, params, model
    except Exception as exc:
        raise InvalidSettingsError(
            f"variant {variant}: ONNX Runtime GenAI {og.__version__} cannot run it ({exc}); "
            "choose other weight-only settings (spec.compression.quantize)"
        ) from None


def _quantize(
    folder: LlmFolder, out: Path, q: Quantize, progress: Progress, ids: list[list[int]]
) -> list[str]:
    """The candidate folder: the quantized graph and data, and every other file copied."""
    notes = weights.quantize_weight_only(folder.graph_path, out, q, progress, calibration=ids)
    copy_companions(folder, out)
    validate_model(out / OUT_GRAPH, full_check=False)
    return notes


def copy_companions(folder: LlmFolder, out: Path) -> None:
    """Every file but the decoder graph and its data; genai_config.json names the new graph."""
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for name in folder.files:
        if name in folder.graph_data():
            continue
        if name in written:
            raise InvalidSettingsError(
                f"{folder.path / name}: the quantized graph is written as {name}; rename the "
                "file in the source folder"
            )
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name == GENAI_CONFIG and folder.graph != OUT_GRAPH:
            config: dict[str, Any] = json.loads((folder.path / name).read_text())
            config["model"]["decoder"]["filename"] = OUT_GRAPH
            dest.write_text(json.dumps(config, indent=4) + "\n")
        else:
            shutil.copyfile(folder.path / name, dest)


def _best(tried: list[CandidateReport], gate: AccuracyGate) -> CandidateReport:
    measured = [c for c in tried if c.accuracy is not None]
    sign = -1.0 if gate.metric == "kl" else 1.0
    return max(measured, key=lambda c: sign * c.accuracy.mean if c.accuracy else 0.0)


def _cache_hit(
    existing: ArtifactManifest, compression: Compression, store: ArtifactStore
) -> CompressionOutcome:
    notes = ["cache hit: the store already holds this model compressed with these settings"]
    report = existing.report
    if report.accuracy is not None:
        verdict = rejudge(report.accuracy, compression.accuracy_gate)
        if not verdict.passed:
            raise gate_error(verdict)
        existing = existing.model_copy(
            update={"report": report.model_copy(update={"accuracy": verdict})}
        )
    return CompressionOutcome(existing, True, store.manifest_uri(existing.cache_key), notes)
