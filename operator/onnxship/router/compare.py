"""Comparing two inference answers (stable's and the canary's) on the same request.

Answers are Open Inference Protocol v2 responses, JSON or with Triton's binary tensor
extension; or, for language models, two generations as token sequences (``compare_tokens``).
Only the router's mirror path parses them, off the user's path.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass
from operator import mul, sub
from typing import Any

import numpy as np
import orjson

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


def _loads(text: bytes) -> Any:
    """``json.loads``, in C: the standard library's Python wrapper cost more than the rest of
    a small answer's comparison. What orjson refuses and Python reads (NaN, Infinity, numbers
    past 64 bits) goes to ``json``, so both parse the same documents alike."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def decode_outputs(body: bytes, header_length: int | None = None) -> dict[str, np.ndarray]:
    """Output tensors by name, as float64 arrays; BYTES outputs are left out."""
    if header_length is None:
        return _decode(_loads(body), b"")
    return _decode(_loads(body[:header_length]), body[header_length:])


def _decode(doc: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
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
        if stable_header is None and canary_header is None:
            # JSON answers: small outputs are compared as the lists they are (numpy costs
            # more than the arithmetic below an output of a few thousand numbers)
            doc_a, doc_b = _loads(stable), _loads(canary)
            small_a, small_b = _small_outputs(doc_a), _small_outputs(doc_b)
            if small_a is not None and small_b is not None:
                return _combine(small_a, small_b, _compare_flat)
            return _combine(_decode(doc_a, b""), _decode(doc_b, b""), compare_arrays)
        a = decode_outputs(stable, stable_header)
        b = decode_outputs(canary, canary_header)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return _combine(a, b, compare_arrays)


def _combine(a: dict[str, Any], b: dict[str, Any], compare: Any) -> Comparison | None:
    if len(a) == 1 and a.keys() == b.keys():  # one output, in both: the common answer
        return compare(*a.values(), *b.values())  # type: ignore[no-any-return]
    names = sorted(set(a) | set(b))
    if not names:
        return None
    parts = [
        compare(a[n], b[n]) if n in a and n in b else Comparison(0.0, 0.0, float("inf"))
        for n in names
    ]
    return Comparison(
        cosine=min(p.cosine for p in parts),
        top1=min(p.top1 for p in parts),
        max_abs_diff=max(p.max_abs_diff for p in parts),
    )


# Outputs compared without numpy: JSON data of these types, finite, this many values at most.
_SMALL = 4096
_KINDS = {"FP32", "FP64", "INT32", "INT64"}
Flat = tuple[tuple[int, ...], list[float]]  # shape, values


def _small_outputs(doc: Any) -> dict[str, Flat] | None:
    """A JSON answer's outputs as flat lists, rounded as numpy would read them; None when
    any output needs numpy (another type, nested or binary data, too many values, NaN...)."""
    out: dict[str, Flat] = {}
    for o in doc.get("outputs", []):
        data, shape = o.get("data"), o.get("shape")
        kind = o.get("datatype")
        if kind not in _KINDS or not isinstance(data, list) or not isinstance(shape, list):
            return None
        dims = tuple(map(int, shape))
        if len(data) > _SMALL or math.prod(dims) != len(data):
            return None
        try:  # FP32 rounded to float32 first, as np.asarray(data, np.float32) does
            values = array("f", data).tolist() if kind == "FP32" else [float(v) for v in data]
        except (TypeError, OverflowError):
            return None
        if not all(map(math.isfinite, values)):
            return None
        out[str(o["name"])] = (dims, values)
    return out


def _argmax(values: list[float]) -> int:
    return values.index(max(values))  # the first largest, as numpy (the values are finite)


def _compare_flat(a: Flat, b: Flat) -> Comparison:
    """``compare_arrays`` on flat lists."""
    (shape, fa), (other, fb) = a, b
    if shape != other:
        return Comparison(0.0, 0.0, float("inf"))
    # map(mul...) sums the same products in the same order as a generator would, faster
    na = math.sqrt(sum(map(mul, fa, fa)))
    nb = math.sqrt(sum(map(mul, fb, fb)))
    if na == 0.0 and nb == 0.0:
        cosine = 1.0
    elif na == 0.0 or nb == 0.0:
        cosine = 0.0
    else:
        cosine = sum(map(mul, fa, fb)) / (na * nb)
    if not fa:
        return Comparison(cosine, 1.0, 0.0)
    if len(shape) >= 2 and len(fa) == shape[-1]:  # one row (batch 1): no slices
        top1 = float(_argmax(fa) == _argmax(fb))
    elif len(shape) >= 2:
        width = shape[-1]
        rows = len(fa) // width
        same = sum(
            _argmax(fa[i : i + width]) == _argmax(fb[i : i + width])
            for i in range(0, rows * width, width)
        )
        top1 = same / rows
    else:
        top1 = float(_argmax(fa) == _argmax(fb))
    diff = max(map(abs, map(sub, fa, fb)))
    return Comparison(cosine, top1, diff)


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
