"""`onnxship compress`: compress a model, check it, and publish it to an artifact store.

Settings come from flags, or from a ModelDeployment (``--spec FILE [--environment NAME]``),
with flags overriding the file. The report goes to stdout (``--output json`` for the
operator's Job and local mode); progress goes to stderr (bars in a terminal, one JSON log
line per step otherwise). Exit codes tell failures apart (see ``ExitCode``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from onnxship.api import (
    AccuracyGate,
    AccuracyReport,
    Compression,
    CompressionReport,
    ModelDeploymentSpec,
    ModelKind,
    Prune,
    Quantize,
    SpecError,
    parse_model_deployment,
)
from onnxship.api.resource import describe
from onnxship.compress.result import RESULT_LIMIT, compact_result

from .app import ExitCode, app, console, load_yaml_file, out

if TYPE_CHECKING:
    from onnxship.compress import CompressionOutcome, SourceAccess

# The pipeline (onnx, onnxruntime, numpy) and the store (boto3) are imported by the command
# itself: `onnxship` imports every command module, and the operator's process must not carry
# them (issue 21: ~40 MB an operator pod).


class BarProgress:
    """Rich bars on stderr: bytes for transfers, a done/not-done bar for each step."""

    def __init__(self) -> None:
        self.bars = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.steps = Progress(
            TextColumn("{task.description:<24}"), BarColumn(), TimeElapsedColumn(), console=console
        )
        self._tasks: dict[str, tuple[Progress, TaskID]] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self._tasks:
            bars = self.steps if total == 1 else self.bars
            self._tasks[task] = (bars, bars.add_task(task, total=total))
        bars, tid = self._tasks[task]
        bars.update(tid, completed=done, total=total)

    def __enter__(self) -> BarProgress:
        # One live display at a time: steps and transfers share it through a group.
        from rich.console import Group
        from rich.live import Live

        self._live = Live(Group(self.steps, self.bars), console=console, refresh_per_second=8)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)


def _settings(
    spec_file: Path | None, environment: str | None, reporter: _Reporter
) -> tuple[ModelDeploymentSpec | None, Compression, str]:
    if spec_file is None:
        if environment:
            raise typer.BadParameter("--environment needs --spec")
        return None, Compression(), "CPU"
    try:
        md = parse_model_deployment(load_yaml_file(spec_file), source=str(spec_file))
    except SpecError as exc:
        reporter.fail(str(exc), ExitCode.invalid_spec)
    envs = md.spec.serving.effective_environments()
    if environment is None:
        env = envs[0]
    else:
        matches = [e for e in envs if e.name == environment]
        if not matches:
            names = ", ".join(e.name for e in envs)
            reporter.fail(
                f"{spec_file}: no environment {environment!r} (it has: {names})",
                ExitCode.invalid_spec,
            )
        env = matches[0]
    return md.spec, md.spec.compression_for(env), str(env.execution_provider)


def _override(base: Compression, **flags: Any) -> Compression:
    """The compression settings with the flags the user gave (None = not given) applied."""
    q = base.quantize.model_dump()
    for name, key in (
        ("quantize", "mode"),
        ("weight_type", "weight_type"),
        ("per_channel", "per_channel"),
        ("calibration", "calibration"),
        ("bits", "bits"),
        ("block_size", "block_size"),
        ("symmetric", "symmetric"),
        ("accuracy_level", "accuracy_level"),
        ("algorithm", "algorithm"),
        ("embedding", "embedding"),
    ):
        if flags.get(name) is not None:
            q[key] = flags[name]
    gate = base.accuracy_gate.model_dump()
    if flags["gate_metric"] is not None:
        gate["metric"] = flags["gate_metric"]
    if flags["gate_min"] is not None:
        gate["min"] = flags["gate_min"]
    if flags["gate_outputs"]:
        gate["outputs"] = list(flags["gate_outputs"])
    if flags.get("gate_max") is not None:
        gate["max"] = flags["gate_max"]
    try:
        return Compression(
            optimize=flags["optimize"] if flags["optimize"] is not None else base.optimize,
            prune=Prune(
                sparsity=flags["sparsity"]
                if flags["sparsity"] is not None
                else base.prune.sparsity,
                method=flags["prune_method"] or base.prune.method,
            ),
            quantize=Quantize.model_validate(q),
            accuracy_gate=AccuracyGate.model_validate(gate),
        )
    except ValidationError as exc:
        # "mode: Input should be 'none', 'dynamic', ..." rather than pydantic's full dump.
        raise typer.BadParameter("; ".join(describe(exc))) from None


# A Pod's termination message holds at most 4096 bytes; the result must stay parseable.


class _Reporter:
    """Where results and failures go: stdout (text or JSON), and the --result-file."""

    def __init__(self, output: str = "text", result_file: Path | None = None) -> None:
        self.output = output
        self.result_file = result_file

    def fail(self, message: str, code: ExitCode, **extra: Any) -> NoReturn:
        doc = {"ok": False, "exitCode": int(code), "error": message, **extra}
        if self.output == "json":
            print(json.dumps(doc))
        self._write({"ok": False, "exitCode": int(code), "error": message[: RESULT_LIMIT - 100]})
        console.print(f"[bold red]error:[/] {message}", highlight=False)
        raise typer.Exit(int(code))

    def succeed(self, outcome: CompressionOutcome) -> None:
        self._write(result_json(outcome))
        if self.output == "json":
            print(json.dumps(as_json(outcome)))
            return
        out.print(report_table(outcome))
        if len(outcome.manifest.report.candidates) > 1:
            out.print(candidates_table(outcome.manifest.report))
        for note in outcome.notes + [
            n for n in outcome.manifest.report.notes if n not in outcome.notes
        ]:
            out.print(f"[dim]note:[/] {note}", highlight=False)

    def _write(self, doc: dict[str, Any]) -> None:
        if self.result_file is None:
            return
        try:
            self.result_file.write_text(json.dumps(doc, separators=(",", ":")))
        except OSError as exc:
            console.print(f"[yellow]warning:[/] cannot write {self.result_file}: {exc.strerror}")


def _source_access(endpoint: str) -> SourceAccess:
    """Source credentials from the environment the operator's Job sets (ONNXSHIP_SOURCE_*);
    without them, boto3's usual chain and no token."""
    from onnxship.compress import SourceAccess
    from onnxship.store import S3Credentials

    key = os.environ.get("ONNXSHIP_SOURCE_AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("ONNXSHIP_SOURCE_AWS_SECRET_ACCESS_KEY", "")
    return SourceAccess(
        endpoint=endpoint,
        credentials=S3Credentials(key, secret) if key and secret else None,
        http_token=os.environ.get("ONNXSHIP_SOURCE_TOKEN", ""),
    )


@app.command("compress")
def compress_command(
    model: str = typer.Argument("", help="Source model: s3://, http(s)://, file:// (or a path)."),
    store_uri: str = typer.Option(
        "", "--store", help="Artifact store: s3://bucket/prefix/ or file:///dir."
    ),
    spec_file: Path | None = typer.Option(
        None, "--spec", "-f", help="Take settings from a ModelDeployment."
    ),
    environment: str | None = typer.Option(
        None, "--environment", "-e", help="Environment of --spec."
    ),
    endpoint: str = typer.Option("", "--endpoint", help="S3-compatible endpoint of the store."),
    region: str = typer.Option("", "--region", help="S3 region of the store."),
    sha256: str = typer.Option("", "--sha256", help="Pin: expected SHA-256 of the model file."),
    samples: str = typer.Option(
        "", "--samples", help=".npz of sample inputs, or a causal LM's JSONL prompts (URI or path)."
    ),
    optimize: str | None = typer.Option(None, "--optimize", help="none | basic | extended | all"),
    sparsity: float | None = typer.Option(
        None, "--sparsity", help="Pruning: fraction of weights set to 0 (0 to <1)."
    ),
    prune_method: str | None = typer.Option(None, "--prune-method", help="magnitude | shrink"),
    quantize: str | None = typer.Option(
        None, "--quantize", help="auto (default) | none | dynamic | static | fp16 | weightOnly"
    ),
    calibration: str | None = typer.Option(
        None, "--calibration", help="static int8: minmax | entropy | percentile"
    ),
    weight_type: str | None = typer.Option(None, "--weight-type", help="int8 | uint8"),
    per_channel: bool | None = typer.Option(
        None, "--per-channel/--per-tensor", help="Weight scales."
    ),
    bits: int | None = typer.Option(None, "--bits", help="weightOnly: 4 | 8"),
    block_size: int | None = typer.Option(
        None, "--block-size", help="weightOnly: 16 | 32 | 64 | 128 | 256 weights per scale"
    ),
    algorithm: str | None = typer.Option(
        None, "--algorithm", help="weightOnly: rtn | kquant | kquantMixed | hqq | gptq"
    ),
    symmetric: bool | None = typer.Option(
        None, "--symmetric/--asymmetric", help="weightOnly: zero points or not."
    ),
    accuracy_level: int | None = typer.Option(
        None, "--accuracy-level", help="weightOnly: MatMulNBits accuracy_level 0-4"
    ),
    embedding: str | None = typer.Option(
        None, "--embedding", help="weightOnly: keep | int8 | int4 (token embedding, tied lm_head)"
    ),
    kind: str | None = typer.Option(
        None, "--kind", help="onnx | causal-lm (default: spec.model.kind, else found)"
    ),
    gate_metric: str | None = typer.Option(
        None, "--gate-metric", help="cosine | top1 | kl | tokens (the last two: causal LM)"
    ),
    gate_min: float | None = typer.Option(None, "--gate-min", help="The accuracy gate's minimum."),
    gate_outputs: list[str] | None = typer.Option(
        None,
        "--gate-output",
        help="An output the gate reads (repeat for several); default: the final outputs.",
    ),
    gate_max: float | None = typer.Option(
        None, "--gate-max", help="The accuracy gate's maximum (metric kl)."
    ),
    execution_provider: str | None = typer.Option(
        None, "--execution-provider", help="CPU, CUDA, ..."
    ),
    output: str = typer.Option("text", "--output", "-o", help="text | json"),
    progress_mode: str = typer.Option("auto", "--progress", help="auto | bars | none"),
    result_file: Path | None = typer.Option(
        None,
        "--result-file",
        help="Also write a compact JSON result here (a Job's termination log).",
    ),
    source_endpoint: str = typer.Option(
        "", "--source-endpoint", envvar="ONNXSHIP_SOURCE_ENDPOINT", help="S3 endpoint of the model."
    ),
) -> None:
    """Compress a model, check it against the original, and publish it to an artifact store."""
    from onnxship.compress import (
        AccuracyGateError,
        InvalidModelError,
        InvalidSettingsError,
        SourceError,
        compress,
    )
    from onnxship.compress.accuracy import CLI_NAMES
    from onnxship.store import StoreError, open_store

    if output not in ("text", "json"):
        raise typer.BadParameter("--output is text or json")
    reporter = _Reporter(output, result_file)
    spec, base, env_provider = _settings(spec_file, environment, reporter)
    compression = _override(
        base,
        optimize=optimize,
        sparsity=sparsity,
        prune_method=prune_method,
        quantize=quantize,
        calibration=calibration,
        weight_type=weight_type,
        per_channel=per_channel,
        gate_metric=gate_metric,
        gate_min=gate_min,
        gate_outputs=gate_outputs,
        gate_max=gate_max,
        bits=bits,
        block_size=block_size,
        algorithm=algorithm,
        symmetric=symmetric,
        accuracy_level=accuracy_level,
        embedding=embedding,
    )
    provider = execution_provider or env_provider
    model_kind = kind or (spec.model.kind if spec and spec.model.kind else None)
    if model_kind is not None and model_kind not in [k.value for k in ModelKind]:
        raise typer.BadParameter(
            f"--kind {model_kind!r}: one of {', '.join(k.value for k in ModelKind)}"
        )
    model_uri = model or (spec.model.uri if spec else "")
    if not model_uri:
        reporter.fail("give a model URI, or --spec FILE with spec.model.uri", ExitCode.usage)
    if "://" not in model_uri:
        model_uri = Path(model_uri).resolve().as_uri()
    if spec is not None:
        store_uri = store_uri or spec.artifacts.uri
        endpoint = endpoint or spec.artifacts.endpoint
        region = region or spec.artifacts.region
        sha256 = sha256 or spec.model.sha256
        samples = samples or spec.model.sample_inputs
    if not store_uri:
        reporter.fail(
            "give --store s3://bucket/prefix/ or file:///dir (or spec.artifacts.uri)",
            ExitCode.usage,
        )
    if "://" not in store_uri:
        store_uri = Path(store_uri).resolve().as_uri()

    bars = progress_mode == "bars" or (progress_mode == "auto" and console.is_terminal)
    access = _source_access(source_endpoint)
    try:
        store = open_store(store_uri, endpoint=endpoint, region=region)
        if bars:
            with BarProgress() as listener:
                outcome = compress(
                    model_uri,
                    compression,
                    store,
                    sample_inputs=samples,
                    execution_provider=provider,
                    expected_sha256=sha256,
                    progress=listener,
                    model_version=spec.model.version if spec else "",
                    source_access=access,
                    model_kind=model_kind,
                    gate_names=CLI_NAMES,
                )
        else:
            outcome = compress(
                model_uri,
                compression,
                store,
                sample_inputs=samples,
                execution_provider=provider,
                expected_sha256=sha256,
                model_version=spec.model.version if spec else "",
                source_access=access,
                model_kind=model_kind,
                gate_names=CLI_NAMES,
            )
    except AccuracyGateError as exc:
        # The refusal carries the sizes and every candidate, so the user can weigh it.
        summary = exc.summary.to_wire() if exc.summary is not None else exc.report.to_wire()
        if exc.summary is not None and output == "text" and exc.summary.candidates:
            out.print(candidates_table(exc.summary))
        reporter.fail(str(exc), ExitCode.accuracy_gate, report=summary)
    except InvalidModelError as exc:
        reporter.fail(str(exc), ExitCode.invalid_model)
    except SourceError as exc:
        reporter.fail(str(exc), ExitCode.source_error)
    except InvalidSettingsError as exc:
        reporter.fail(str(exc), ExitCode.invalid_spec)
    except StoreError as exc:
        reporter.fail(f"artifact store: {exc}", ExitCode.store_error)
    reporter.succeed(outcome)


def as_json(outcome: CompressionOutcome) -> dict[str, Any]:
    """What machines read on stdout: where the artifact is, whether it was a cache hit, its
    report, and the whole manifest as stored."""
    return {
        "ok": True,
        "cacheHit": outcome.cache_hit,
        "artifactUri": outcome.artifact_uri,
        "cacheKey": outcome.manifest.cache_key,
        "report": outcome.manifest.report.to_wire(),
        "manifest": outcome.manifest.to_wire(),
    }


def result_json(outcome: CompressionOutcome) -> dict[str, Any]:
    """The --result-file document (see ``compress.result``)."""
    return compact_result(outcome.manifest, outcome.artifact_uri, outcome.cache_hit)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB" if n >= 10_000 else f"{n:,} B"


def _llm_agreement(a: AccuracyReport) -> str:
    """The three figures of a causal LM's gate, and which one decided."""
    sign = "<=" if a.metric == "kl" else ">="
    verdict = "[green]passed[/]" if a.passed else "[red]failed[/]"
    lines = [
        f"teacher-forced top-1 {a.top1_agreement:.4f}, mean KL {a.kl_mean:.4f}, "
        f"free-run tokens {a.token_agreement:.4f}",
        f"gate: {a.metric} {a.mean:.4f} {sign} {a.threshold} {verdict}; worst prompt {a.min:.4f}",
        f"{a.samples} prompts",
    ]
    return "\n".join(lines)


def report_table(outcome: CompressionOutcome) -> Table:
    m = outcome.manifest
    r = m.report
    table = Table(title="onnxship compress", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("source", f"{m.source.uri}\nsha256 {m.source.sha256}")
    table.add_row("artifact", f"{outcome.artifact_uri}\ncache key {m.cache_key}")
    table.add_row("cache hit", "yes (nothing recomputed)" if outcome.cache_hit else "no")
    if m.kind == ModelKind.causal_lm:
        variant = next((c.name for c in r.candidates if c.chosen), "")
        table.add_row("kind", f"{m.kind} ({len(m.blobs)} files)")
        table.add_row("variant", f"{variant or 'none'}  {_mb(r.compressed_bytes)}")
    table.add_row("steps", ", ".join(r.steps) or "none")
    table.add_row(
        "size",
        f"{_mb(r.original_bytes)} -> {_mb(r.compressed_bytes)}  (ratio {r.ratio:.3f}, "
        f"{(1 / r.ratio if r.ratio else 0):.2f}x smaller)",
    )
    if r.accuracy is not None and m.kind == ModelKind.causal_lm:
        table.add_row("agreement", _llm_agreement(r.accuracy))
    elif r.accuracy is not None:
        a = r.accuracy
        verdict = "[green]passed[/]" if a.passed else "[red]failed[/]"
        parts = [f"{a.metric} mean {a.mean:.6f} min {a.min:.6f} (gate >= {a.threshold}) {verdict}"]
        if a.deciding_output:
            parts.append(f"decided by {a.deciding_output}")
        if a.top1_agreement is not None:
            parts.append(f"top-1 agreement {a.top1_agreement:.4f}")
        if a.max_abs_error is not None:
            parts.append(f"max abs error {a.max_abs_error:.4g}")
        parts.append(f"{a.samples} {'synthetic' if a.synthetic_inputs else 'sample'} inputs")
        table.add_row("accuracy", "\n".join(parts))
    if r.original_latency_ms is not None and r.compressed_latency_ms is not None:
        table.add_row(
            "latency (batch 1)",
            f"{r.original_latency_ms:.3f} ms -> {r.compressed_latency_ms:.3f} ms",
        )
    if r.accuracy is not None and r.accuracy.outputs:
        table.add_row(
            "per output",
            ", ".join(
                f"{n} {v:.6f}{' (decides)' if n == r.accuracy.deciding_output else ''}"
                for n, v in r.accuracy.outputs.items()
            ),
        )
    if r.step_seconds:
        table.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in r.step_seconds.items()))
    table.add_row(
        "tools", f"onnx {m.tools.onnx}, onnxruntime {m.tools.onnxruntime}, {m.execution_provider}"
    )
    return table


def candidates_table(report: CompressionReport) -> Table:
    """quantize: auto: every candidate, its figures, and why it won or lost."""
    table = Table(title="candidates", title_justify="left")
    for column in ("candidate", "size", "latency", "accuracy", ""):
        table.add_column(column, overflow="fold")
    for c in report.candidates:
        a = c.accuracy
        figure = (
            f"{a.deciding_output + ' ' if a.deciding_output else ''}{a.metric} {a.mean:.4f}"
            f" ({a.samples} rows)"
            if a is not None
            else "-"
        )
        table.add_row(
            f"[bold]{c.name}[/]" if c.chosen else c.name,
            _mb(c.bytes) if c.bytes else "-",
            f"{c.latency_ms:.2f} ms" if c.latency_ms is not None else "-",
            figure,
            c.why,
        )
    return table
