"""ONNX Runtime graph optimization, saved offline so that every pod loads the optimized graph.

``basic`` rewrites are provider-independent; ``extended`` fuses into contrib ops that only
some providers implement, and ``all`` adds layouts for this very CPU. When the target
provider is not available here, the optimizer cannot target it, so the level is capped at
``basic`` (and the report says so).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from onnxship.api import ExecutionProvider

from .errors import InvalidModelError
from .weights import has_external_data

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
PROTO_LIMIT = 1_800_000_000  # below protobuf's 2 GB, with room for the graph itself


def providers_for(execution_provider: str) -> tuple[list[str], bool]:
    """ORT providers to run on here, and whether the requested one is among them."""
    wanted = ExecutionProvider(execution_provider).ort_name
    available = ort.get_available_providers()
    if wanted in available:
        return (
            [wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]
        ), True
    return ["CPUExecutionProvider"], False


def session(path: Path, execution_provider: str = "CPU", threads: int = 0) -> ort.InferenceSession:
    """An inference session, with ORT's refusal turned into an error naming the file."""
    so = ort.SessionOptions()
    # Fatal only: a run that fails raises, and the pipeline's error names the model and says
    # what to do; ORT's own log line for it (in red, before that error) said it twice.
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
    providers, _ = providers_for(execution_provider)
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{path}: ONNX Runtime cannot load the model: {first}") from None


def optimize(
    src: Path, dst: Path, level: str, execution_provider: str, total_bytes: int
) -> list[str]:
    """Write ``src`` optimized at ``level`` to ``dst``; returns notes for the report."""
    notes = []
    providers, found = providers_for(execution_provider)
    if not found and level != "basic":
        notes.append(
            f"optimize: {execution_provider} is not available on this machine; "
            f"used level basic instead of {level} (provider-independent rewrites only)"
        )
        level = "basic"
    if level == "all":
        notes.append("optimize: level all writes layouts for this CPU; serve it on the same kind")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = LEVELS[level]
    so.optimized_model_filepath = str(dst)
    header = onnx.load_model(str(src), load_external_data=False)
    if has_external_data(header) or total_bytes > PROTO_LIMIT:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", dst.name + ".data"
        )
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        ort.InferenceSession(str(src), so, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{src}: ONNX Runtime cannot load the model: {first}") from None
    return notes
