"""Quantization through ONNX Runtime's quantizer: dynamic int8, static int8 (QDQ), fp16.

Choices the spec does not spell out, and why:
- dynamic: only MatMuls with a constant weight are quantized (``MatMulConstBOnly``):
  quantizing activation x activation products (attention scores) costs accuracy for no size.
- embedding Gathers are quantized only when their table is large enough to matter for size.
- static: QDQ format with uint8 activations and int8 weights (the fast path on x86 CPUs),
  calibration (MinMax, Entropy or Percentile) on the sample inputs.
- fp16: float32 inputs and outputs are kept, so clients do not change.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnxship.api import Quantize

from .compact import compact
from .errors import InvalidModelError, InvalidSettingsError
from .samples import Samples
from .weights import has_external_data

# quantize: dynamic. auto tries MatMuls first and Conv/LSTM second: int8 Conv cost a CNN + attention
# OCR recognizer its accuracy (cosine 0.43) where int8 MatMuls alone kept 0.9999.
MATMUL_OPS = ["MatMul", "Attention", "EmbedLayerNormalization"]
DYNAMIC_OPS = [*MATMUL_OPS, "LSTM", "Conv"]
# Dynamic int8 in ONNX Runtime has no Gemm kernel: Gemm stays float in dynamic candidates.
GATHER_MIN_ELEMENTS = 1_000_000  # quantize embedding tables of at least ~4 MB
CALIBRATION_BATCH = 8
# Ops with weights. Q/DQ around every Add, Mul, Softmax and LayerNormalization of a BERT
# export took its sentence-embedding cosine to 0.36; weight-bearing ops only gave 0.93.
STATIC_OPS = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention"]
CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class _QuietQuantizer(logging.Filter):
    # The quantizer logs chatter (and a pre-processing hint on every call) on the root logger;
    # the report says what was done. Its warnings and errors still pass.
    def filter(self, record: logging.LogRecord) -> bool:
        if "pre-processing before quantization" in record.getMessage():
            return False
        return not (record.levelno < logging.WARNING and "onnxruntime" in record.pathname)


_QUIET = _QuietQuantizer()


def _quiet() -> None:
    """Silence the quantizer's chatter (idempotent; called when quantizing, not at import)."""
    root = logging.getLogger()
    if _QUIET not in root.filters:
        root.addFilter(_QUIET)
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)


def _weight_type(q: Quantize) -> QuantType:
    return QuantType.QUInt8 if q.weight_type == "uint8" else QuantType.QInt8


def large_gathers(model: onnx.ModelProto) -> bool:
    """Whether the model has an embedding table worth quantizing."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    return any(
        n.op_type == "Gather" and sizes.get(n.input[0], 0) >= GATHER_MIN_ELEMENTS
        for n in model.graph.node
    )


def dynamic(src: Path, dst: Path, q: Quantize, op_types: list[str] | None = None) -> list[str]:
    _quiet()
    header = onnx.load_model(str(src), load_external_data=False)
    ops = list(op_types or DYNAMIC_OPS)
    notes = []
    if large_gathers(header):
        ops.append("Gather")
        notes.append("quantize: embedding tables (Gather) quantized to int8")
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=ops,
            per_channel=q.per_channel,
            weight_type=_weight_type(q),
            use_external_data_format=has_external_data(header),
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except AssertionError as exc:
        # ORT's quantizer asserts on weights it cannot scale: NaN or infinite values.
        raise InvalidModelError(
            f"dynamic quantization failed ({exc}): the model's weights hold NaN or infinite "
            "values; fix the model, or set spec.compression.quantize.mode: none"
        ) from None
    if q.per_channel:
        dropped, halved = compact(dst)
        if dropped or halved:
            notes.append(
                f"quantize: {dropped} all-zero weight zero points dropped, {halved} per-channel "
                "scales stored as float16"
            )
    return notes


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, samples: Samples, batch: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(samples.batches(batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def static(src: Path, dst: Path, q: Quantize, samples: Samples) -> list[str]:
    _quiet()
    header = onnx.load_model(str(src), load_external_data=False)
    method = CALIBRATION[q.calibration]
    notes = [f"quantize: static int8 (QDQ), {method.name} calibration on {samples.rows} samples"]
    if samples.synthetic:
        notes.append("quantize: calibrated on made-up inputs; pass real samples for real ranges")
    per_channel = q.per_channel
    opset = next((o.version for o in header.opset_import if o.domain in ("", "ai.onnx")), 0)
    if per_channel and opset < 13:
        # A per-channel DequantizeLinear has an axis, which opset 13 brought.
        raised = dst.parent / "opset13.onnx"
        if _raise_opset(src, raised, 13, has_external_data(header)):
            notes.append(f"quantize: opset raised from {opset} to 13 for per-channel scales")
            src = raised
        else:
            per_channel = False
            notes.append(
                f"quantize: per-tensor scales: the model's opset {opset} cannot be raised to 13, "
                "which per-channel DequantizeLinear needs"
            )
    source = _with_shapes(src, dst.parent / "shapes.onnx", has_external_data(header))
    quantize_static(
        str(source),
        str(dst),
        _Reader(samples, CALIBRATION_BATCH),  # one row per call where the batch is fixed
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=STATIC_OPS,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=_weight_type(q),
        calibrate_method=method,
        use_external_data_format=has_external_data(header),
        # Fused ops from the optimizer carry no value_info; their outputs are float.
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            # ORT 1.32 fails on some per-channel Conv biases when it rescales their weights
            "QDQDisableWeightAdjustForInt32Bias": True,
        },
    )
    for pattern in ("shapes.onnx*", "opset13.onnx*"):
        for leftover in dst.parent.glob(pattern):
            leftover.unlink()
    return notes


def _raise_opset(src: Path, dst: Path, version: int, external: bool) -> bool:
    """``src`` converted to ``version`` of the default domain by onnx's version converter
    (it rewrites the ops whose signature changed, e.g. Split, Squeeze, ReduceSum)."""
    from onnx import version_converter

    try:
        model = onnx.load_model(str(src))
        converted = version_converter.convert_version(model, version)
        onnx.save_model(
            converted,
            str(dst),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=dst.name + ".data",
        )
        import onnxruntime as ort

        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        return True
    except Exception as exc:  # the converter raises its own types per op
        logging.getLogger(__name__).info("opset %s conversion of %s: %s", version, src, exc)
        return False


def quantized_weights(
    model: onnx.ModelProto, op_types: list[str], small_gathers: bool = False
) -> dict[str, int]:
    """Float weights (initializer name -> bytes) that quantizing ``op_types`` would turn int8:
    for a size bound before building a candidate (pure on the graph, no weights read)."""
    sizes = {
        t.name: int(np.prod(t.dims)) * 4
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    }
    positions = {
        "MatMul": (1,),
        "Gemm": (1,),
        "Conv": (1,),
        "ConvTranspose": (1,),
        "LSTM": (1, 2),
        "Attention": (1,),
        "Gather": (0,),
        "EmbedLayerNormalization": (2, 3, 4),
    }
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for i in positions.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in sizes:
                small = sizes[node.input[i]] < GATHER_MIN_ELEMENTS * 4
                if node.op_type == "Gather" and small and not small_gathers:
                    continue
                found[node.input[i]] = sizes[node.input[i]]
    return found


def _with_shapes(src: Path, dst: Path, external: bool) -> Path:
    """``src`` with inferred shapes (what the static quantizer needs to place Q/DQ pairs)."""
    # Symbolic shape inference first; it gives up on some graphs (a BERT export), where onnx's
    # own shape inference still does the job. When it gives up, ONNX Runtime dumps the model
    # into the current folder (sym_shape_infer_temp.onnx and a .data file beside it): run it
    # in a child process whose current folder is our work folder, so nothing lands in the
    # user's. (A chdir here would move every thread of the process, local mode's included.)
    for symbolic in (True, False):
        args = [str(src.resolve()), str(dst.resolve()), "1" if external else "", dst.name + ".data"]
        try:
            if symbolic:
                # a scratch folder of its own: the dump must not be published with the model
                with tempfile.TemporaryDirectory(dir=dst.parent) as scratch:
                    subprocess.run(
                        [sys.executable, "-c", _PRE_PROCESS, *args],
                        cwd=scratch,
                        check=True,
                        capture_output=True,
                        timeout=3600,
                    )
            else:
                _pre_process(*args, symbolic=False)
            return dst
        except Exception as exc:
            logging.getLogger(__name__).info("shape inference before quantization: %s", exc)
    return src


def _pre_process(src: str, dst: str, external: str, location: str, symbolic: bool) -> None:
    quant_pre_process(
        src,
        dst,
        skip_optimization=True,
        skip_symbolic_shape=not symbolic,
        save_as_external_data=bool(external),
        all_tensors_to_one_file=True,
        external_data_location=location,
    )


_PRE_PROCESS = (
    "import sys; from onnxship.compress.quantize import _pre_process; "
    "_pre_process(*sys.argv[1:5], symbolic=True)"
)


def fp16(src: Path, dst: Path, total_bytes: int) -> list[str]:
    # ONNX Runtime's converter, not onnxconverter-common's: the latter retypes the outputs of
    # Cast(to=float) nodes and ORT then refuses the model (seen on a BERT export).
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_model(str(src))
    # Converters name their Cast nodes after the nodes they feed: unnamed nodes collide.
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    big = total_bytes > 1_800_000_000
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per clamped weight value
            converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=big)
    except Exception as exc:
        raise InvalidSettingsError(f"{src}: fp16 conversion failed: {exc}") from None
    del model
    onnx.save_model(
        converted,
        str(dst),
        save_as_external_data=big,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
    )
    return ["quantize: fp16 weights and activations; float32 inputs and outputs kept"]
