"""Pruning of weight initializers: the smallest |w| of each weight tensor become 0 (magnitude),
or every weight moves towards 0 by the same amount and the smallest reach it (shrink).

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


def _threshold(magnitudes: np.ndarray, sparsity: float) -> float | None:
    """The k-th smallest magnitude, k covering at least ``sparsity`` of the values."""
    k = min(magnitudes.size, math.ceil(sparsity * magnitudes.size - 1e-9))
    if k <= 0:
        return None
    return float(np.partition(magnitudes, k - 1)[k - 1])


def magnitude_prune(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``weights`` with the ``sparsity`` fraction of smallest magnitudes set to 0."""
    out = np.array(weights)
    threshold = _threshold(np.abs(out.reshape(-1)), sparsity)
    if threshold is not None:
        # Ties at the threshold may prune a few more than k; never fewer.
        out[np.abs(out) <= threshold] = 0
    return out


def shrink(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Soft thresholding: ``w - a*sign(w)``, clamped at zero, ``a`` the sparsity quantile of
    |w|. The same values become zero as with magnitude pruning; the survivors move towards
    zero by ``a`` (the proximal step of an L1 penalty)."""
    out = np.array(weights)
    threshold = _threshold(np.abs(out.reshape(-1)), sparsity)
    if threshold is not None:
        out = (np.sign(out) * np.maximum(np.abs(out) - threshold, 0)).astype(weights.dtype)
    return out


METHODS = {"magnitude": magnitude_prune, "shrink": shrink}


def prune(src: Path, dst: Path, sparsity: float, method: str = "magnitude") -> tuple[int, float]:
    """Prune ``src`` into ``dst``; returns (tensors pruned, fraction of their values now zero)."""
    names = prunable(onnx.load_model(str(src), load_external_data=False))
    zeros = total = 0

    def transform(tensor: TensorProto, array: np.ndarray) -> np.ndarray | None:
        nonlocal zeros, total
        if tensor.name not in names:
            return None
        pruned = METHODS[method](array, sparsity)
        zeros += int(np.count_nonzero(pruned == 0))
        total += pruned.size
        return pruned

    count = rewrite_initializers(src, dst, transform)
    return count, (zeros / total if total else 0.0)
