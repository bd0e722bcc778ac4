"""Block quantization of one weight matrix for MatMulNBits, by algorithm.

Every function takes a float32 matrix ``w`` of shape [K, n] (a slice of columns of a MatMul's
weight, K padded to whole blocks) and returns ``(packed, scales, zero_points)`` in
MatMulNBits' layout for those n columns: ``packed`` uint8 [n, K/block, block*bits/8],
``scales`` [n, K/block] float32, ``zero_points`` None (symmetric), uint8 [n, K/block] (one per
block, not yet packed) or float32 [n, K/block] (HQQ: the zero need not be an integer).

The arithmetic is ONNX Runtime's own where its library has it: RTN through the C++ kernels its
``DefaultWeightOnlyQuantizer`` calls (``quantize_matmul_4bits`` / ``_8bits``), k-quant through
``quant_tensor_k_quant_cpu`` and GPTQ through ``gptq`` (both in
``onnxruntime.quantization.neural_compressor.weight_only``). HQQ is ORT's
``HQQWeightOnlyQuantizer`` solver ported from torch to numpy (ORT's needs torch, a 5 GB install);
its float zero points are what MatMulNBits accepts and GatherBlockQuantized does not.
"""

from __future__ import annotations

import numpy as np

Quantized = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def pad_rows(w: np.ndarray, block: int) -> np.ndarray:
    """``w`` [K, n] as float32 with K padded with zero rows to whole blocks (a copy)."""
    k = w.shape[0]
    padded = -(-k // block) * block
    out = np.zeros((padded, w.shape[1]), dtype=np.float32)
    out[:k] = w
    return out


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes [n, blocks, block] (0..2^bits-1) into MatMulNBits' bytes, low nibble first."""
    q = q.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(q)
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4))


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points [n, blocks] into MatMulNBits' layout ([n, ceil(blocks/2)] at 4 bits)."""
    zp = zp.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(zp)
    n, blocks = zp.shape
    if blocks % 2:
        zp = np.concatenate([zp, np.full((n, 1), 8, np.uint8)], axis=1)
    return np.ascontiguousarray(zp[:, 0::2] | (zp[:, 1::2] << 4))


def rtn(w: np.ndarray, bits: int, block: int, symmetric: bool) -> Quantized:
    """Round to nearest on ONNX Runtime's C++ kernel (what MatMulNBitsQuantizer's default does:
    asymmetric ranges include zero, integer zero points)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = w.shape
    blocks = k // block
    packed = np.zeros((n, blocks, block * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zp = np.zeros((n, (blocks + 1) // 2 if bits == 4 else blocks), dtype=np.uint8)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, np.ascontiguousarray(w), scales, zp, block, n, k, symmetric)
    if symmetric:
        return packed, scales, None
    if bits == 4:  # the kernel packs two zero points a byte; the caller packs whole rows
        zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
    return packed, scales, zp


def symmetric_int8(w: np.ndarray, block: int) -> Quantized:
    """int8 with scale max|w|/127 per block, codes stored +128 (MatMulNBits' and
    GatherBlockQuantized's default zero point at 8 bits): the usual symmetric int8 grid.
    ORT's 8-bit kernel divides by -128 instead, which puts max|w| off the grid."""
    k, n = w.shape
    blocks = w.T.reshape(n, k // block, block)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale), -127, 127) + 128
    return pack(q, 8), scale[..., 0], None


def kquant(w: np.ndarray, bits: int, block: int) -> Quantized:
    """ONNX Runtime's k-quant (llama.cpp's weighted search of scale and minimum per block)."""
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

    k, n = w.shape
    q, scale, zp = quant_tensor_k_quant_cpu(np.ascontiguousarray(w.T), bits, block)
    blocks = k // block
    return (
        pack(q.reshape(n, blocks, block), bits),
        scale.reshape(n, blocks).astype(np.float32),
        zp.reshape(n, blocks).astype(np.uint8),
    )


def hqq(w: np.ndarray, bits: int, block: int, iters: int = 20) -> Quantized:
    """Half-quadratic quantization as ORT's HQQWeightOnlyQuantizer does it (min/max start,
    then the lp-norm proximal solver refines the zero), in numpy."""
    k, n = w.shape
    blocks = k // block
    x = np.ascontiguousarray(w.T).reshape(n * blocks, block)
    maxq = float(2**bits - 1)
    lo = x.min(axis=1, keepdims=True)
    hi = x.max(axis=1, keepdims=True)
    span = hi - lo
    span[span == 0] = maxq
    scale = np.minimum(maxq / span, 2e4).astype(np.float32)  # the inverse scale, as ORT keeps it
    # The zero stays a float from the start (ORT rounds it first, for integer zero points; ours
    # are stored as float block offsets): a block already on a uniform grid is kept exactly.
    zero = -lo * scale
    zero = _hqq_solve(x, scale, zero, maxq, iters)
    q = np.clip(np.rint(x * scale + zero), 0, maxq)
    packed = pack(q.reshape(n, blocks, block), bits)
    return (
        packed,
        (1.0 / scale).reshape(n, blocks).astype(np.float32),
        zero.reshape(n, blocks).astype(np.float32),
    )


def _hqq_solve(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray, maxq: float, iters: int
) -> np.ndarray:
    # ORT's optimize_weights: lp_norm 0.7, beta 10, kappa 1.01, stop when the error grows.
    lp, beta, kappa = 0.7, 10.0, 1.01
    best = np.inf
    best_zero = zero
    for _ in range(iters):
        q = np.clip(np.rint(x * scale + zero), 0, maxq)
        r = (q - zero) / scale
        e = x - r
        err = float(np.abs(e).mean())
        if err < best:
            best, best_zero = err, zero
        else:
            break
        shrink = (1.0 / beta) * (np.abs(e) + 1e-8) ** (lp - 1)
        shrunk = np.sign(e) * np.maximum(np.abs(e) - shrink, 0)
        zero = np.mean(q - (x - shrunk) * scale, axis=1, keepdims=True)
        beta *= kappa
    return best_zero


def gptq(w: np.ndarray, hessian: np.ndarray, bits: int, block: int, symmetric: bool) -> Quantized:
    """ONNX Runtime's GPTQ (column by column, errors pushed onto the columns not yet rounded,
    weighted by the inverse Hessian of the calibration activations), then the block grid."""
    from onnxruntime.quantization.neural_compressor.weight_only import gptq as ort_gptq
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor

    k, n = w.shape
    h = np.zeros((k, k), dtype=np.float64)
    h[: hessian.shape[0], : hessian.shape[0]] = hessian
    scheme = "sym" if symmetric else "asym"
    fake = ort_gptq(w.astype(np.float64), h, num_bits=bits, group_size=block, scheme=scheme)
    q, scale, zp = quant_tensor(np.ascontiguousarray(fake.T), bits, block, scheme, "uint")
    blocks = k // block
    # symmetric: quant_tensor centres the codes on 2^(bits-1), MatMulNBits' default zero point
    zp_out = None if symmetric else np.asarray(zp).reshape(n, blocks).astype(np.uint8)
    scales = scale.reshape(n, blocks).astype(np.float32)
    return pack(q.reshape(n, blocks, block), bits), scales, zp_out
