"""Rewrite a model's weight initializers one tensor at a time.

A model with external data is rewritten by streaming: each tensor is read through a memory
map of its data file, passed to the transform, and appended to the new data file, so the
whole set of weights is never in memory (nor loaded twice). Small single-file models go
through the same function with their tensors inside the proto.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

ALIGN = 4096  # data offsets aligned for memory mapping, as onnx does

Transform = Callable[[TensorProto, np.ndarray], np.ndarray | None]


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def _external_array(tensor: TensorProto, folder: Path) -> np.ndarray:
    info = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(
        folder / info["location"],
        dtype=dtype,
        mode="r",
        offset=int(info.get("offset", "0")),
        shape=shape,
    )


def rewrite_initializers(src: Path, dst: Path, transform: Transform) -> int:
    """Write ``src`` to ``dst`` with each initializer passed through ``transform`` (None keeps
    it as is); returns how many tensors changed. External data goes to ``<dst>.data``."""
    model = onnx.load_model(str(src), load_external_data=False)
    external = has_external_data(model)
    _inline_non_initializer_data(model.graph, src.parent)
    dst.parent.mkdir(parents=True, exist_ok=True)
    changed = 0
    if not external:
        for tensor in model.graph.initializer:
            if tensor.data_type in (TensorProto.STRING,):
                continue
            new = transform(tensor, numpy_helper.to_array(tensor))
            if new is not None:
                tensor.CopyFrom(
                    numpy_helper.from_array(new.astype(new.dtype, copy=False), tensor.name)
                )
                changed += 1
        onnx.save_model(model, str(dst))
        return changed
    data_name = dst.name + ".data"
    with (dst.parent / data_name).open("wb") as out:
        for tensor in model.graph.initializer:
            if tensor.data_location == TensorProto.EXTERNAL:
                array: np.ndarray = _external_array(tensor, src.parent)
            else:
                array = numpy_helper.to_array(tensor)
            new = transform(tensor, array)
            if new is not None:
                changed += 1
                array = new
            _append(tensor, np.ascontiguousarray(array), out, data_name)
            del array, new
    onnx.save_model(model, str(dst))
    return changed


def _append(tensor: TensorProto, array: np.ndarray, out: BinaryIO, location: str) -> None:
    pad = (-out.tell()) % ALIGN
    if pad:
        out.write(b"\0" * pad)
    offset = out.tell()
    if array.size:
        array.tofile(out)  # straight from the memory map, no copy in Python
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (
        ("location", location),
        ("offset", str(offset)),
        ("length", str(array.nbytes)),
    ):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _inline_non_initializer_data(graph: onnx.GraphProto, folder: Path) -> None:
    # Constant-node tensors with external data are rare and small: bring them into the proto
    # so the rewritten model does not point back into the source folder.
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_location == TensorProto.EXTERNAL:
                load_external_data_for_tensor(attr.t, str(folder))
                attr.t.data_location = TensorProto.DEFAULT
                del attr.t.external_data[:]
            if attr.HasField("g"):
                _inline_non_initializer_data(attr.g, folder)
