"""Compact the quantization parameters that per-channel dynamic quantization adds.

Per-channel int8 costs one float32 scale and one int8 zero point per output channel of every
quantized weight (about 100 KB on a 6-layer BERT), which made it larger than per-tensor
quantization. Two lossless-or-nearly rewrites take that back:

- int8 weight zero points of MatMulInteger that are all zero (symmetric weights always are)
  are dropped: the input is optional and defaults to zero;
- per-channel weight scales are stored as float16 behind a Cast to float32. ONNX Runtime folds
  the Cast when it loads the model, so inference runs exactly the fused graph it would have
  run; the scales change by at most 2^-11 relative, far below int8 rounding. Scales outside
  float16's normal range are left alone.

Only tensors stored inside the .onnx file are touched; external data stays where it is.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MIN_NORMAL = 6.2e-5
FP16_MAX = 65504.0
MIN_CHANNELS = 8  # per-tensor scales (one value) gain nothing


def _inline(t: TensorProto) -> bool:
    return t.data_location != TensorProto.EXTERNAL


def compact(path: Path) -> tuple[int, int]:
    """Rewrite ``path`` in place; returns (zero points dropped, scales stored as float16)."""
    model = onnx.load_model(str(path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    outputs = {o.name for o in graph.output}

    dropped = 0
    for node in graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) != 4:
            continue
        zp = inits.get(node.input[3])
        if zp is None or not _inline(zp) or zp.data_type != TensorProto.INT8:
            continue
        if len(users[zp.name]) == 1 and not numpy_helper.to_array(zp).any():
            graph.initializer.remove(zp)
            del inits[zp.name]
            del node.input[3]
            dropped += 1

    casts = []
    for t in list(graph.initializer):
        if (
            t.data_type != TensorProto.FLOAT
            or not _inline(t)
            or len(t.dims) != 1
            or t.dims[0] < MIN_CHANNELS
            or not t.name.endswith("_scale")
            or t.name in outputs
            or not users[t.name]
            or any(u.op_type != "Mul" for u in users[t.name])
        ):
            continue
        scale = numpy_helper.to_array(t)
        magnitude = np.abs(scale)
        if magnitude.min() < FP16_MIN_NORMAL or magnitude.max() > FP16_MAX:
            continue
        half = scale.astype(np.float16)
        graph.initializer.remove(t)
        graph.initializer.append(numpy_helper.from_array(half, f"{t.name}_fp16"))
        casts.append(
            helper.make_node(
                "Cast", [f"{t.name}_fp16"], [t.name], to=TensorProto.FLOAT, name=f"{t.name}_cast"
            )
        )
    for i, node in enumerate(casts):
        graph.node.insert(i, node)  # before every user: the graph stays topologically sorted
    if dropped or casts:
        onnx.save_model(model, str(path))
    return dropped, len(casts)
