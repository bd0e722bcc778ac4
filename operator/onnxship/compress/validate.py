"""Treat a model file as untrusted input: parse it, check it, and say what is wrong.

Reads the graph without its external data (a multi-GB model costs only its small .onnx
file here), checks every external-data reference stays inside the model's folder and fits in
its file, refuses unknown opsets and models without inputs, and then runs onnx's full checker
on the path (which reads external data itself, tensor by tensor).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from .errors import InvalidModelError

# Newest opset this onnx knows, per domain; ORT is checked by loading the model later.
KNOWN_DOMAINS = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version()}
# Domains ONNX Runtime implements (contrib, ML, preview ops); their ops are checked by ORT.
ORT_DOMAIN_PREFIXES = ("ai.onnx.", "com.microsoft")
MIN_OPSET = 7  # older opsets predate what ONNX Runtime and the quantizer support
MAX_MODEL_BYTES = 256 * 1024**3  # a sanity bound on model + external data


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int
    shape: tuple[int | str | None, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a validated model."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opsets: dict[str, int]
    external_files: list[str] = field(default_factory=list)
    total_bytes: int = 0

    @property
    def files(self) -> list[str]:
        """The model file first, then its external-data files (names relative to its folder)."""
        return [self.path.name, *self.external_files]


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor stored in a graph: initializers, Constant attributes, and subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    t = vi.type.tensor_type
    shape = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
    )
    return TensorSpec(vi.name, t.elem_type, shape)


def load_graph(path: Path) -> onnx.ModelProto:
    """The model proto without external data; a clear error for what is not ONNX."""
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"{path}: the file is empty")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(
            f"{path}: not an ONNX model, or a truncated one (protobuf could not parse it: {exc}); "
            "check that the upload or download finished and that the file is a .onnx model"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModelError(
            f"{path}: no graph nodes: not an ONNX model, or a truncated one; "
            "check that the upload or download finished"
        )
    return model


def check_external_data(model: onnx.ModelProto, folder: Path, model_name: str) -> list[str]:
    """External-data files the model names, refused when a reference is unsafe or too large."""
    real_folder = folder.resolve()
    files: dict[str, int] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"{model_name}: tensor {tensor.name!r} stores its data in {location!r}"
        rel = PurePosixPath(location.replace("\\", "/"))
        unsafe = not location or "\0" in location or location.startswith("~")
        if unsafe or rel.is_absolute() or ".." in rel.parts:
            raise InvalidModelError(
                f"{where}: external data must be a relative path inside the model's folder "
                "(no '..', no absolute paths); re-save the model with onnx.save(..., "
                "save_as_external_data=True, location='<file name>')"
            )
        target = folder / rel
        if not target.resolve().is_relative_to(real_folder):
            raise InvalidModelError(f"{where}: the path leaves the model's folder (symbolic link)")
        if not target.is_file():
            raise InvalidModelError(f"{where}, which is missing beside the model")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise InvalidModelError(f"{where}: offset/length are not integers") from None
        size = files.setdefault(str(rel), target.stat().st_size)
        expected = _expected_bytes(tensor)
        if length is None:
            length = expected if expected is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidModelError(
                f"{where} at offset {offset}, length {length}, but {rel} has only {size} bytes: "
                "the data file is truncated or does not belong to this model"
            )
        if expected is not None and length != expected:
            raise InvalidModelError(
                f"{where}: {length} bytes declared, but shape {list(tensor.dims)} needs {expected}"
            )
    return sorted(files)


def _expected_bytes(tensor: TensorProto) -> int | None:
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in (TensorProto.STRING,):
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def check_opsets(model: onnx.ModelProto, name: str) -> dict[str, int]:
    opsets = {o.domain: o.version for o in model.opset_import}
    for domain, version in opsets.items():
        label = domain or "ai.onnx"
        if domain in KNOWN_DOMAINS:
            newest = KNOWN_DOMAINS[domain]
            if version > newest:
                raise InvalidModelError(
                    f"{name}: opset {label} {version} is newer than this onnxship supports "
                    f"(up to {newest}); export the model with opset <= {newest}"
                )
            if version < MIN_OPSET:
                raise InvalidModelError(
                    f"{name}: opset {label} {version} is older than {MIN_OPSET}; convert it with "
                    "onnx.version_converter.convert_version"
                )
        elif not domain.startswith(ORT_DOMAIN_PREFIXES):
            raise InvalidModelError(
                f"{name}: unknown operator domain {domain!r} (opset {version}); custom operators "
                "are not supported"
            )
    if "" not in opsets and "ai.onnx" not in opsets:
        raise InvalidModelError(f"{name}: the model imports no ai.onnx opset")
    if model.ir_version > onnx.IR_VERSION:
        raise InvalidModelError(
            f"{name}: IR version {model.ir_version} is newer than this onnx supports "
            f"({onnx.IR_VERSION})"
        )
    return opsets


def validate_model(path: Path, full_check: bool = True, onnx_checker: bool = True) -> ModelInfo:
    """Check an untrusted model file; raise InvalidModelError naming the file and the fix.

    ``full_check=False`` is for files onnxship wrote itself (ONNX Runtime lists every domain
    it knows in their opset imports): structure and external data only.
    ``onnx_checker=False`` skips onnx's checker only, for graphs that use ONNX Runtime's own
    operators in the default domain (ONNX Runtime GenAI's SimplifiedLayerNormalization): ONNX
    Runtime, which loads them later, is their checker.
    """
    model = load_graph(path)
    name = str(path)
    opsets = (
        check_opsets(model, name)
        if full_check
        else {o.domain: o.version for o in model.opset_import}
    )
    external = check_external_data(model, path.parent, name)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_spec(vi) for vi in model.graph.input if vi.name not in initializers]
    if not inputs:
        raise InvalidModelError(f"{name}: the model has no inputs; there is nothing to serve")
    outputs = [_spec(vi) for vi in model.graph.output]
    if not outputs:
        raise InvalidModelError(f"{name}: the model has no outputs")
    total = path.stat().st_size + sum((path.parent / f).stat().st_size for f in external)
    if total > MAX_MODEL_BYTES:
        raise InvalidModelError(f"{name}: {total} bytes with external data, over the limit")
    if full_check and onnx_checker:
        try:
            # A path, not a proto: onnx then reads external data itself and handles > 2 GB.
            onnx.checker.check_model(os.fspath(path), full_check=True)
        except (
            onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError,
            # A name or string field that is not UTF-8: the checker fails to decode its own
            # message about it.
            UnicodeDecodeError,
            # An enum out of range ("Invalid tensor data type 33.") is a ValueError.
            ValueError,
        ) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, UnicodeDecodeError):
                first = f"a name or string in the model is not valid UTF-8 ({exc.reason})"
            raise InvalidModelError(
                f"{name}: the ONNX checker refused the model: {first}"
            ) from None
    del model
    return ModelInfo(path, inputs, outputs, opsets, external, total)
