"""`onnxship serve`: run the Open Inference Protocol server for one model version."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from pydantic import ValidationError

from .app import ExitCode, app, fail

# gRPC's core reads these when it loads, at the process's first `import grpc`, so they are set
# before the server's imports (a value the user set wins). Off: the EventEngine listener and
# endpoints, which read and write sockets on threads of their own; the core's older
# endpoints do that I/O on the thread that polls the completion queue (serve's one gRPC
# thread), a thread hand-over less per call. ModelInfer on the bench MLP, one core
# (bench/serve_frontend_bench.py): 153 -> 132 us CPU per call. The names are grpcio 1.85's
# (pinned to that minor in pyproject.toml; an unknown name only logs a line at start).
GRPC_CORE_ENV = {"GRPC_EXPERIMENTS": "-event_engine_listener,-event_engine_for_all_other_endpoints"}


@app.command("serve")
def serve_command(
    model: Path | None = typer.Option(
        None, "--model", help="A local .onnx file (or a folder holding model.onnx)."
    ),
    store: str | None = typer.Option(
        None, "--store", help="Artifact store URI (s3://... or file://...)."
    ),
    cache_key: str | None = typer.Option(
        None, "--cache-key", help="The artifact's cache key in --store."
    ),
    store_endpoint: str | None = typer.Option(
        None, "--store-endpoint", envvar="ONNXSHIP_S3_ENDPOINT", help="S3-compatible endpoint URL."
    ),
    store_region: str | None = typer.Option(None, "--store-region", envvar="AWS_REGION"),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Cache root for fetched artifacts (a folder per cache key inside; default: temp).",
    ),
    name: str = typer.Option("model", "--name", help="Model name in /v2/models/{name}."),
    model_version: str = typer.Option("1", "--model-version", help="Model version label."),
    revision: str = typer.Option(
        "",
        "--revision",
        help="Name this revision on every answer (the onnxship-revision header); empty: none.",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 in a pod)."
    ),
    http_port: int = typer.Option(8080, "--http-port"),
    max_connection_age: float = typer.Option(
        0.0,
        "--max-connection-age",
        min=0.0,
        help="Seconds a client connection is kept: the first answer after that says "
        "'Connection: close', so clients reconnect (and reach whatever their Service selects "
        "by then). 0: as long as it is used.",
    ),
    grpc_port: int = typer.Option(8081, "--grpc-port", help="gRPC port; -1 turns gRPC off."),
    workers: int = typer.Option(
        0,
        "--workers",
        help="Processes sharing the ports, each with its own session; 0 = one per CPU of the "
        "limit (1 for a causal LM). 1 = a single process, no supervisor.",
    ),
    threads: int = typer.Option(
        0,
        "--threads",
        help="ONNX Runtime intra-op threads per worker; 0 = the CPU limit split between workers.",
    ),
    inter_op_threads: int = typer.Option(1, "--inter-op-threads"),
    optimization: str = typer.Option(
        "all", "--graph-optimization-level", help="none | basic | extended | all"
    ),
    spin: bool = typer.Option(
        False, "--spin/--no-spin", help="Let idle ONNX Runtime workers spin (dedicated cores only)."
    ),
    execution_provider: str = typer.Option(
        "CPU", "--execution-provider", help="CPU, CUDA, TensorRT, ..."
    ),
    max_batch_size: int = typer.Option(
        1, "--max-batch-size", help="Dynamic batching up to N rows; 1 = off."
    ),
    max_batch_delay_ms: float = typer.Option(
        2.0, "--max-batch-delay-ms", help="Longest wait for a batch to fill."
    ),
    max_queue_size: int = typer.Option(
        128, "--max-queue-size", help="Requests admitted before answering 503."
    ),
    instances: int = typer.Option(
        1, "--instances", help="Session runs in flight at once (each with --threads threads)."
    ),
    max_body_bytes: int = typer.Option(
        64 << 20, "--max-body-bytes", help="Larger requests get 413."
    ),
    pad_sequences: bool = typer.Option(
        True,
        "--pad-sequences/--no-pad-sequences",
        help="Batch different sequence lengths by padding (models with attention_mask).",
    ),
    max_sequences: int = typer.Option(
        8, "--max-sequences", help="Causal LMs: sequences generated at once (KV cache slots)."
    ),
    max_context: int = typer.Option(
        0, "--max-context", help="Causal LMs: tokens per sequence; 0 = min(4096, the model's)."
    ),
    grace_period_s: float = typer.Option(
        30.0, "--grace-period", help="Seconds in-flight requests get after SIGTERM."
    ),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup"),
) -> None:
    """Serve one model over the Open Inference Protocol (KServe v2): HTTP, binary tensors, gRPC."""
    for key, value in GRPC_CORE_ENV.items():
        os.environ.setdefault(key, value)
    # Imported here so that other commands do not pay for onnxruntime, aiohttp and grpc.
    from onnxship.serve import ServeConfig, StartupError, run

    try:
        config = ServeConfig(
            model_path=model,
            store_uri=store,
            cache_key=cache_key,
            store_endpoint=store_endpoint,
            store_region=store_region,
            cache_dir=cache_dir,
            name=name,
            version=model_version,
            revision=revision,
            host=host,
            http_port=http_port,
            max_connection_age=max_connection_age,
            grpc_port=None if grpc_port < 0 else grpc_port,
            workers=workers,
            threads=threads,
            inter_op_threads=inter_op_threads,
            graph_optimization_level=optimization,
            execution_provider=execution_provider,
            spin=spin,
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            max_queue_size=max_queue_size,
            instances=instances,
            max_body_bytes=max_body_bytes,
            pad_sequences=pad_sequences,
            max_sequences=max_sequences,
            max_context=max_context,
            grace_period_s=grace_period_s,
            warmup=warmup,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()
        )
        fail(problems, ExitCode.usage)
    try:
        status = run(config)
    except StartupError as exc:
        fail(str(exc), ExitCode[exc.kind] if exc.kind in ExitCode.__members__ else ExitCode.failure)
    if status:
        raise typer.Exit(status)  # a worker died: the supervisor has logged which and how
