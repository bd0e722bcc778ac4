"""Comparing two inference answers (stable's and the canary's) on the same request.

Answers are Open Inference Protocol v2 responses, JSON or with Triton's binary tensor
extension; or, for language models, two generations as token sequences (``compare_tokens``).
Only the router's mirror path parses them, off the user's path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Comparison:
    cosine: float
    top1: float  # share of rows whose argmax agrees
    max_abs_diff: float


def decode_outputs(body: bytes, header_length: int | None = None) -> dict[str, np.ndarray]:
    """Output tensors by name, as float64 arrays; BYTES outputs are left out."""
    if header_length is None:
        doc: dict[str, Any] = json.loads(body)
        binary = b""
    else:
        doc = json.loads(body[:header_length])
        binary = body[header_length:]
    out: dict[str, np.ndarray] = {}
    offset = 0
    for o in doc.get("outputs", []):
        dtype = DTYPES.get(str(o.get("datatype")))
        shape = [int(d) for d in o.get("shape", [])]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = binary[offset : offset + int(size)]
            offset += int(size)
            if dtype is None:
                continue
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        else:
            if dtype is None:
                continue
            array = np.asarray(o.get("data", []), dtype=dtype)
        out[str(o["name"])] = array.astype(np.float64).reshape(shape)
    return out


def compare_arrays(a: np.ndarray, b: np.ndarray) -> Comparison:
    if a.shape != b.shape:
        return Comparison(0.0, 0.0, float("inf"))
    fa, fb = a.ravel(), b.ravel()
    na, nb = float(np.linalg.norm(fa)), float(np.linalg.norm(fb))
    if na == 0.0 and nb == 0.0:
        cosine = 1.0
    elif na == 0.0 or nb == 0.0:
        cosine = 0.0
    else:
        cosine = float(np.dot(fa, fb) / (na * nb))
    if a.size == 0:
        top1 = 1.0
    elif a.ndim >= 2:
        ra, rb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        top1 = float(np.mean(np.argmax(ra, axis=1) == np.argmax(rb, axis=1)))
    else:
        top1 = float(np.argmax(a) == np.argmax(b))
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    return Comparison(cosine, top1, diff)


def compare_answers(
    stable: bytes, stable_header: int | None, canary: bytes, canary_header: int | None
) -> Comparison | None:
    """Agreement of two answers over the outputs both carry; None if nothing is comparable."""
    try:
        a = decode_outputs(stable, stable_header)
        b = decode_outputs(canary, canary_header)
    except (ValueError, KeyError, TypeError):
        return None
    names = sorted(set(a) | set(b))
    if not names:
        return None
    parts = [
        compare_arrays(a[n], b[n]) if n in a and n in b else Comparison(0.0, 0.0, float("inf"))
        for n in names
    ]
    return Comparison(
        cosine=min(p.cosine for p in parts),
        top1=min(p.top1 for p in parts),
        max_abs_diff=max(p.max_abs_diff for p in parts),
    )


@dataclass(frozen=True)
class TokenComparison:
    """Two generations, position by position over the stable's length (the compression
    gate's free-run token agreement)."""

    agreement: float  # share of the stable's positions where the canary has the same token
    first_divergence: int  # first position that differs; the common length when none does
    identical: bool
    stable_length: int
    canary_length: int


def compare_tokens(stable: list[Any], canary: list[Any]) -> TokenComparison:
    same = sum(a == b for a, b in zip(stable, canary, strict=False))
    first = next(
        (i for i, (a, b) in enumerate(zip(stable, canary, strict=False)) if a != b),
        min(len(stable), len(canary)),
    )
    # two empty answers agree; an empty stable answer against words does not
    agreement = same / len(stable) if stable else float(not canary)
    return TokenComparison(agreement, first, stable == canary, len(stable), len(canary))
