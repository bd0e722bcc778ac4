"""Creating the ONNX Runtime session: execution provider, threads, optimization level."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnxruntime as ort

from ..cpus import cpu_quota
from .config import ServeConfig
from .errors import StartupError

_OPT_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the container's CPU quota if one is set, else its affinity.

    ONNX Runtime sizes its pool from the host's cores, which in a pod with ``limits.cpu: 2`` on
    a 64-core node means 64 threads fighting over 2 CPUs of quota.
    """
    available = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup_root)
    if quota is None:
        return available
    return max(1, min(available, math.ceil(quota)))


def provider_name(short: str) -> str:
    return short if short.endswith("ExecutionProvider") else f"{short}ExecutionProvider"


def check_provider(config: ServeConfig) -> str:
    """The ORT name of the asked provider; a startup error naming the available ones if this
    onnxruntime build lacks it (checked before anything is loaded or started)."""
    provider = provider_name(config.execution_provider)
    available = ort.get_available_providers()
    if provider not in available:
        raise StartupError(
            f"execution provider {config.execution_provider!r} is not available in this "
            f"onnxruntime build (available: {', '.join(available)})",
            kind="invalid_spec",
        )
    return provider


def session_options(config: ServeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads or cpu_limit()
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization_level]
    # ORT's default is to spin idle workers. Under a CPU limit that burns the quota (and gets
    # the pod throttled), and it takes the CPU the event loop needs to parse the next request:
    # on a shared 2-vCPU machine batch-1 latency was 3-6x worse with spinning (bench notes).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
    # ORT would print each failed run to stderr in its own format; the server reports the
    # failure to the client and logs it once, as JSON in the cluster.
    options.log_severity_level = 4
    return options


def create_session(
    model_file: Path,
    config: ServeConfig,
    *,
    graph: bytes | None = None,
) -> ort.InferenceSession:
    """A session on exactly the asked provider; a missing provider is a startup error.

    ONNX Runtime would otherwise fall back to CPU in silence, and a GPU pool would serve
    at CPU speed with nothing in the logs to say why. With ``config.shared_model`` (worker
    processes) the session loads that prepared copy instead: see ``prepare_shared_model``.
    ``graph`` is an edited copy of the model file's graph (serve/llm cuts the logits to the
    positions it reads) whose external data files are the model folder's: ORT memory-maps them
    from there as for a file (handed over from memory it would copy the weights).
    """
    provider = check_provider(config)
    options = session_options(config)
    providers = (
        [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    )
    source = config.shared_model or model_file
    if graph is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(model_file.resolve().parent)
        )
    try:
        session = ort.InferenceSession(
            graph if graph is not None else str(source), options, providers=providers
        )
    except Exception as exc:  # ORT raises its own exception types for bad files
        raise StartupError(
            f"{model_file}: ONNX Runtime cannot load the model: {exc}",
            kind="invalid_model",
        ) from exc
    if session.get_providers()[0] != provider:
        raise StartupError(
            f"execution provider {config.execution_provider!r} failed to initialise "
            f"(session runs on {session.get_providers()})",
            kind="invalid_spec",
        )
    return session


def prepare_shared_model(model_file: Path, config: ServeConfig, dest: Path) -> Path:
    """Write the model as every CPU worker of a pod will run it, for them to share.

    ONNX Runtime (1.32, CPU) memory-maps initializers stored as external data, so processes
    that load the same file share those pages. What it computes at load time is private to
    each process, though: the graph optimizer's new initializers (MiniLM's fused attention
    weights) and above all the prepacked MatMul weights, a second copy of every weight. Saving
    the optimized graph with its prepacked weights as external data
    (``session.save_external_prepacked_constant_initializers``) makes both part of the file:
    workers that load it map them instead of building them (MiniLM: 148 -> 77 MiB PSS for one
    process, +31 MiB per further process instead of +117). The copy holds NCHWc and other
    CPU-specific layouts, so it is made on the machine that runs it, for the CPU provider.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "model.onnx"
    options = session_options(config)
    options.intra_op_num_threads = 1  # the session only optimizes and saves; it runs nothing
    options.optimized_model_filepath = str(out)
    for key, value in (
        ("session.optimized_model_external_initializers_file_name", "model.onnx.data"),
        ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
        ("session.save_external_prepacked_constant_initializers", "1"),
    ):
        options.add_session_config_entry(key, value)
    try:
        ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StartupError(
            f"{model_file}: ONNX Runtime cannot load the model: {exc}", kind="invalid_model"
        ) from exc
    return out
