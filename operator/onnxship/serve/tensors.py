"""Turning protocol tensors into NumPy arrays and back, checking them against the model.

Binary payloads (the HTTP binary extension, gRPC raw contents) become arrays with
``np.frombuffer`` and stay views over the request body; only JSON data is walked in Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .datatypes import OIP_TO_NUMPY, WIRE_DTYPE
from .errors import InvalidInput
from .signature import TensorSpec


def check_header(spec: TensorSpec, datatype: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The request's shape as a tuple, if its datatype and shape fit the model's input."""
    name = spec.name
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input {name!r}: expected datatype {spec.datatype}, got {datatype or '(none)'}"
        )
    try:
        dims = tuple(map(int, shape))
    except (TypeError, ValueError):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of integers, got {shape!r}"
        ) from None
    fits = len(dims) == len(spec.shape)
    if fits:
        for d, want in zip(dims, spec.shape, strict=True):
            if d < 0 or (want != -1 and want != d):
                fits = False
                break
    if not fits:
        raise InvalidInput(
            f"input {name!r}: expected shape {list(spec.shape)} (-1 = any), got {list(dims)}"
        )
    return dims


def from_data(spec: TensorSpec, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """An array from JSON ``data`` (flat or nested, row-major) or typed gRPC contents."""
    count = math.prod(shape)
    dtype = OIP_TO_NUMPY[spec.datatype]
    try:
        if spec.datatype == "BYTES":
            if isinstance(data, str | bytes):
                flat: list[Any] = [data]
            else:
                flat = _flatten(data) if isinstance(data, list) else list(data)
            # Count before allocating: a declared shape of 10**11 elements is the client's
            # mistake, not a MemoryError (a 500) for the server.
            if len(flat) != count:
                raise _size_error(spec, shape, count, f"{len(flat)} elements")
            arr = np.empty(count, dtype=object)
            for i, item in enumerate(flat):
                arr[i] = _as_str(spec, item)
            return arr.reshape(shape)
        arr = _numbers(spec, data, dtype)
    except InvalidInput:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(
            f"input {spec.name!r}: data is not a regular array of {spec.datatype} values ({exc})"
        ) from None
    if arr.size != count:
        raise _size_error(spec, shape, count, f"{arr.size} elements")
    return arr.reshape(shape)


def from_raw(spec: TensorSpec, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """An array over binary tensor bytes (little-endian, row-major), without a copy."""
    count = math.prod(shape)
    if spec.datatype == "BYTES":
        return _bytes_from_raw(spec, shape, count, memoryview(raw))
    dtype = WIRE_DTYPE[spec.datatype]
    if len(raw) != count * dtype.itemsize:
        raise _size_error(spec, shape, count * dtype.itemsize, f"{len(raw)} bytes", unit="bytes")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if not arr.flags.aligned:
        # The binary part follows a JSON header of any length; a misaligned view is legal
        # for NumPy but not something to hand to vectorised kernels.
        arr = arr.copy()
    return arr


def to_raw(datatype: str, arr: np.ndarray) -> bytes | memoryview:
    """Binary tensor bytes of an output; a view of the array's memory where possible."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in arr.flat:
            b = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(len(b).to_bytes(4, "little"))
            parts.append(b)
        return b"".join(parts)
    arr = np.ascontiguousarray(arr, dtype=WIRE_DTYPE[datatype])
    if arr.size == 0:
        return b""  # memoryview.cast refuses a view with a zero in its shape
    return arr.data.cast("B")


def to_data(datatype: str, arr: np.ndarray) -> list[Any]:
    """A flat, row-major list for a JSON response."""
    if datatype == "BYTES":
        return [x if isinstance(x, str) else bytes(x).decode("utf-8", "replace") for x in arr.flat]
    data: list[Any] = arr.ravel().tolist()
    return data


def _size_error(
    spec: TensorSpec, shape: tuple[int, ...], want: int, got: str, unit: str = "elements"
) -> InvalidInput:
    return InvalidInput(
        f"input {spec.name!r}: shape {list(shape)} of {spec.datatype} needs {want} {unit}, "
        f"got {got}"
    )


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


# What JSON (or a typed gRPC field) may hold for each kind of input: NumPy's inferred kinds.
# Booleans only for BOOL, integers for integer inputs, numbers for floating-point ones.
_ACCEPTS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_WHAT = {"b": "true or false", "i": "an integer", "u": "an integer", "f": "a number"}


def _numbers(spec: TensorSpec, data: Any, dtype: np.dtype) -> np.ndarray:
    """``data`` as an array of ``dtype``, refusing what NumPy would coerce silently.

    ``np.asarray(data, dtype)`` turns "1.5" into 1.5, null into NaN, 1.7 into 1 for an
    integer input and true into 1.0. NumPy infers a dtype from the values first, in C;
    only when that dtype does not fit is the data walked in Python, to name the element.
    """
    arr = np.asarray(data)
    if arr.size == 0:
        return arr.astype(dtype)
    kind = arr.dtype.kind
    if kind in _ACCEPTS[dtype.kind]:
        if dtype.kind in "iu" and arr.dtype != dtype:
            info = np.iinfo(dtype)
            low, high = arr.min(), arr.max()
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise InvalidInput(
                    f"input {spec.name!r}: {bad} is out of range for {spec.datatype} "
                    f"({info.min}..{info.max})"
                )
        with np.errstate(over="ignore"):  # 1e10 as FP16 is inf, as np.asarray made it
            return arr.astype(dtype, copy=False)
    _refuse_element(spec, data, dtype)
    # Every element has a fitting type (e.g. integers too large for NumPy to infer int64):
    # let the typed conversion decide, and raise what it raises.
    return np.asarray(data, dtype=dtype)


def _fits(item: Any, kind: str) -> bool:
    if isinstance(item, bool | np.bool_):
        return kind == "b"
    if isinstance(item, int | np.integer):
        return kind in "iuf"
    if isinstance(item, float | np.floating):
        return kind == "f"
    return False


def _refuse_element(spec: TensorSpec, data: Any, dtype: np.dtype) -> None:
    """Raise InvalidInput naming the first element that is not of the input's kind."""
    if isinstance(data, list):
        flat = _flatten(data)
    elif isinstance(data, str | bytes | dict):
        flat = [data]
    else:
        try:  # typed gRPC contents: a sequence, not always with __iter__
            flat = list(data)
        except TypeError:
            flat = [data]
    for i, item in enumerate(flat):
        if isinstance(item, list | tuple):
            return  # ragged nesting: NumPy's own error says so
        if not _fits(item, dtype.kind):
            raise InvalidInput(
                f"input {spec.name!r}: element {i} of 'data' is {_show(item)}, "
                f"not {_WHAT[dtype.kind]} ({spec.datatype})"
            )


def _show(item: Any) -> str:
    if item is None:
        return "null"
    if isinstance(item, bool | np.bool_):
        return "true" if item else "false"
    if isinstance(item, str):
        text = item if len(item) <= 20 else item[:20] + "..."
        return f"the string {text!r}"
    if isinstance(item, dict):
        return "an object"
    if isinstance(item, int | float):
        return repr(item)
    return f"a {type(item).__name__}"


def _as_str(spec: TensorSpec, item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.decode("utf-8", "surrogateescape")
    raise InvalidInput(
        f"input {spec.name!r}: BYTES elements must be strings, got {type(item).__name__}"
    )


def _bytes_from_raw(
    spec: TensorSpec, shape: tuple[int, ...], count: int, raw: memoryview
) -> np.ndarray:
    if count * 4 > len(raw):
        # Each element takes at least its 4-byte length: refuse before allocating `count`.
        raise _size_error(spec, shape, count * 4, f"{len(raw)} bytes", unit="bytes at least")
    arr = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input {spec.name!r}: BYTES data ends after {i} of {count} elements "
                "(each element is a 4-byte little-endian length, then the bytes)"
            )
        n = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise InvalidInput(
                f"input {spec.name!r}: BYTES element {i} claims {n} bytes, only {end - pos} left"
            )
        arr[i] = bytes(raw[pos : pos + n]).decode("utf-8", "surrogateescape")
        pos += n
    if pos != end:
        raise InvalidInput(
            f"input {spec.name!r}: {end - pos} bytes left over after {count} BYTES elements"
        )
    return arr.reshape(shape)
