"""Magnitude pruning of weight initializers: the smallest |w| of each weight tensor become 0.

Only the weights of matrix products and convolutions are pruned (biases, norms and
embeddings are few values that matter a lot). Zeros do not make a dense model faster; they
make its blobs compress well (the store keeps them zstd-compressed).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .weights import rewrite_initializers

# op type -> indices of inputs that are weights
WEIGHT_INPUTS = {
    "MatMul": (0, 1),
    "Gemm": (1,),
    "Conv": (1,),
    "ConvTranspose": (1,),
    "FusedMatMul": (0, 1),
}
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
MIN_ELEMENTS = 1024  # tiny matrices are not worth pruning


def prunable(model: onnx.ModelProto) -> set[str]:
    """Names of initializers that are weights of MatMul/Gemm/Conv nodes."""
    inits = {t.name: t for t in model.graph.initializer}
    names = set()
    for node in model.graph.node:
        for i in WEIGHT_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in inits:
                t = inits[node.input[i]]
                if (
                    t.data_type in FLOATS
                    and len(t.dims) >= 2
                    and int(np.prod(t.dims)) >= MIN_ELEMENTS
                ):
                    names.add(t.name)
    return names


def magnitude_prune(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``weights`` with the ``sparsity`` fraction of smallest magnitudes set to 0."""
    flat = np.abs(weights.reshape(-1))
    k = min(flat.size, math.ceil(sparsity * flat.size - 1e-9))  # at least the target fraction
    if k <= 0:
        return np.array(weights)
    threshold = np.partition(flat, k - 1)[k - 1]
    out = np.array(weights)
    # Ties at the threshold may prune a few more than k; never fewer.
    out[np.abs(out) <= threshold] = 0
    return out


def prune(src: Path, dst: Path, sparsity: float) -> tuple[int, float]:
    """Prune ``src`` into ``dst``; returns (tensors pruned, fraction of their values now zero)."""
    names = prunable(onnx.load_model(str(src), load_external_data=False))
    zeros = total = 0

    def transform(tensor: TensorProto, array: np.ndarray) -> np.ndarray | None:
        nonlocal zeros, total
        if tensor.name not in names:
            return None
        pruned = magnitude_prune(array, sparsity)
        zeros += int(np.count_nonzero(pruned == 0))
        total += pruned.size
        return pruned

    count = rewrite_initializers(src, dst, transform)
    return count, (zeros / total if total else 0.0)
