"""Hypothesis strategies for inference requests a careless or hostile client might send.

Each strategy draws a request that is *mostly* right for one single-input echo model
(``x: <DT> [batch, 3] -> y = x``) and then breaks one or more parts of it: the name, the
datatype, the shape (negative, huge, nested, not integers), the data (wrong length, wrong
nesting, NaN/Inf, mixed types), binary parts (truncated, too long, huge declared sizes) and
the JSON header itself. A request that stays valid must be answered 200 with its own data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from onnxship.serve.datatypes import OIP_TO_NUMPY, WIRE_DTYPE

DATATYPES = list(OIP_TO_NUMPY)
INT64_MAX = 2**63 - 1

# JSON scalars that no tensor should accept silently in the wrong place.
odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

shape_dims = st.one_of(
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=-3, max_value=-1),
    st.sampled_from([3, 2**31, 2**32 + 3, 10**11, INT64_MAX, 2**40]),
)


JSON_FAULTS = ["name", "datatype", "shape", "data", "nesting", "scalar", "structure",
               "outputs", "params", "huge", "huge", "count"]  # fmt: skip
GRPC_FAULTS = ["name", "datatype", "shape", "count", "raw", "typed", "field", "outputs",
               "extra", "huge", "huge"]  # fmt: skip


def fault_lists(kinds: list[str]) -> st.SearchStrategy[list[str]]:
    """Mostly one fault, so each reaches the code behind it; some none, some two."""
    return st.sampled_from([0, 1, 1, 1, 2]).flatmap(
        lambda n: st.lists(st.sampled_from(kinds), min_size=n, max_size=n)
    )


@dataclass
class Case:
    """One request as the client sends it, and whether it should succeed."""

    datatype: str  # the model's input datatype
    doc: Any  # the JSON header (any JSON value)
    binary: bytes = b""
    header_length: str | None = None  # Inference-Header-Content-Length, when binary
    valid: bool = False
    expect: np.ndarray | None = None
    names: list[str] = field(default_factory=list)  # input names the request mentions

    def body(self) -> bytes:
        return json.dumps(self.doc, allow_nan=True).encode() + self.binary


def _values(datatype: str, count: int, draw: Any) -> list[Any]:
    dtype = OIP_TO_NUMPY[datatype]
    if datatype == "BYTES":
        return draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
    if datatype == "BOOL":
        return draw(st.lists(st.booleans(), min_size=count, max_size=count))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        ints = st.integers(min_value=int(info.min), max_value=int(info.max))
        return draw(st.lists(ints, min_size=count, max_size=count))
    width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
    floats = st.floats(width=width, allow_nan=True, allow_infinity=True)  # type: ignore[arg-type]
    return draw(st.lists(floats, min_size=count, max_size=count))


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _raw(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in values:
            b = v.encode("utf-8", "surrogatepass")
            parts += [len(b).to_bytes(4, "little"), b]
        return b"".join(parts)
    return np.asarray(values, dtype=WIRE_DTYPE[datatype]).tobytes()


def _expected(datatype: str, values: list[Any], shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        return np.asarray(values, dtype=object).reshape(shape)
    return np.asarray(values, dtype=OIP_TO_NUMPY[datatype]).reshape(shape)


@st.composite
def json_cases(draw: Any, binary: bool = False, datatypes: list[str] = DATATYPES) -> Case:
    """A v2 request for one echo model, JSON data or (``binary``) Triton binary tensors."""
    datatype = draw(st.sampled_from(datatypes))
    batch = draw(st.integers(min_value=0, max_value=3))
    shape: Any = [batch, 3]
    values = _values(datatype, batch * 3, draw)
    faults: set[str] = set(draw(fault_lists(JSON_FAULTS)))
    name = "x"
    if "name" in faults:
        name = draw(st.text(max_size=6).filter(lambda s: s != "x"))
    wire_type: Any = datatype
    if "datatype" in faults:
        wire_type = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5), odd_scalars))
    if "shape" in faults:
        shape = draw(
            st.one_of(
                st.lists(shape_dims, max_size=4),
                st.lists(odd_scalars, max_size=3),
                odd_scalars,
                st.lists(st.lists(st.integers(0, 3), max_size=2), max_size=2),
            )
        )
    if "huge" in faults:
        # Declared sizes far past the body: must be refused, never allocated.
        shape = [draw(st.sampled_from([10**6, 10**9, 10**11, 2**40, INT64_MAX])), 3]
    if "count" in faults:
        values = _values(datatype, draw(st.integers(0, 10).filter(lambda n: n != batch * 3)), draw)
    tensor: dict[str, Any] = {"name": name, "datatype": wire_type, "shape": shape}
    data: Any = values if draw(st.booleans()) else _nest(values, [batch, 3])
    if "nesting" in faults:
        data = draw(
            st.one_of(
                st.just([values]),
                st.just([[v] for v in values]),
                st.recursive(odd_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=8),
            )
        )
    if "data" in faults:
        data = draw(st.lists(odd_scalars, min_size=len(values), max_size=len(values) + 1))
    if "scalar" in faults:
        data = draw(odd_scalars)
    body = b""
    header_length: str | None = None
    if binary and "data" not in faults and "nesting" not in faults:
        body = _raw(datatype, values) if "datatype" not in faults else draw(st.binary(max_size=40))
        size: Any = len(body)
        cut = draw(st.sampled_from(["none", "none", "short", "long", "declared", "odd"]))
        if cut == "short":
            body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
        elif cut == "long":
            body += draw(st.binary(min_size=1, max_size=9))
        elif cut == "declared":
            size = draw(st.sampled_from([len(body) + 1, 2**31, 2**63, INT64_MAX * 4]))
        elif cut == "odd":
            size = draw(st.one_of(st.integers(-5, -1), st.floats(), st.text(max_size=3)))
        if cut != "none":
            faults.add("binary")
        tensor["parameters"] = {"binary_data_size": size}
    else:
        tensor["data"] = data
    doc: Any = {"inputs": [tensor]}
    if "outputs" in faults:
        doc["outputs"] = draw(
            st.one_of(
                st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}), max_size=3),
                odd_scalars,
                st.just([{"name": "y"}, {"name": "y"}]),
            )
        )
    if "params" in faults:
        doc["parameters"] = draw(odd_scalars)
    if "structure" in faults:
        doc = draw(
            st.one_of(
                odd_scalars,
                st.just({"inputs": []}),
                st.just({"inputs": [tensor, tensor]}),
                st.just({"inputs": tensor}),
                st.just({"inputs": [{"shape": shape}]}),
                st.lists(st.just(tensor), max_size=2),
            )
        )
    if body or binary:
        header = json.dumps(doc, allow_nan=True).encode()
        header_length = str(len(header))
        if draw(st.integers(0, 9)) == 0:
            header_length = draw(st.sampled_from(["-1", "abc", str(len(header) + 10**6), "0"]))
            faults.add("header")
    # Faults may happen to leave the request valid (a datatype drawn equal to the right
    # one, say): those may be answered 200 or 400. A request with no fault must be 200.
    valid = not faults
    return Case(
        datatype=datatype,
        doc=doc,
        binary=body,
        header_length=header_length,
        valid=valid,
        expect=_expected(datatype, values, [batch, 3]) if valid else None,
        names=[name],
    )


CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
# The range each typed field can hold on the wire (protobuf refuses anything else).
FIELD_RANGE = {
    "int_contents": (-(2**31), 2**31 - 1),
    "int64_contents": (-(2**63), 2**63 - 1),
    "uint_contents": (0, 2**32 - 1),
    "uint64_contents": (0, 2**64 - 1),
}


@dataclass
class GrpcCase:
    datatype: str
    request: Any  # oip_pb2.ModelInferRequest
    valid: bool
    expect: np.ndarray | None


@st.composite
def grpc_cases(draw: Any, datatypes: list[str] = DATATYPES) -> GrpcCase:
    """A ModelInferRequest for the echo model of one datatype, typed or raw contents."""
    from onnxship.serve.proto import oip_pb2 as pb

    datatype = draw(st.sampled_from(datatypes))
    batch = draw(st.integers(0, 3))
    values = _values(datatype, batch * 3, draw)
    faults = set(draw(fault_lists(GRPC_FAULTS)))
    req = pb.ModelInferRequest(model_name=f"echo_{datatype}")
    t = req.inputs.add()
    t.name = draw(st.text(max_size=4)) if "name" in faults else "x"
    t.datatype = (
        draw(st.sampled_from([*DATATYPES, "", "FP8", "fp32"])) if "datatype" in faults else datatype
    )
    shape = [batch, 3]
    if "shape" in faults:
        shape = draw(st.lists(st.integers(-(2**63), 2**63 - 1) | shape_dims, max_size=4))
    if "huge" in faults:
        shape = [draw(st.sampled_from([10**9, 10**11, 2**40, INT64_MAX])), 3]
    t.shape.extend(shape)
    if "count" in faults:
        values = _values(datatype, draw(st.integers(0, 10).filter(lambda n: n != batch * 3)), draw)
    use_raw = datatype == "FP16" or draw(st.booleans())
    if "raw" in faults:
        use_raw = True
    if use_raw:
        raw = _raw(datatype, values)
        if "raw" in faults:
            raw = draw(
                st.one_of(
                    st.binary(max_size=40),
                    st.just(raw[: len(raw) // 2]),
                    st.just(raw + b"\x00"),
                    st.just(b"\xff\xff\xff\x7f" + raw),
                )
            )
        req.raw_input_contents.append(raw)
        if "extra" in faults:
            req.raw_input_contents.append(b"\x00" * 4)
    else:
        field_name = CONTENTS[datatype]
        if "field" in faults:
            field_name = draw(st.sampled_from(sorted(set(CONTENTS.values()))))
        items: list[Any] = values
        if field_name == "bytes_contents":
            items = [str(v).encode("utf-8", "surrogatepass") for v in values]
        elif field_name in FIELD_RANGE:
            lo, hi = FIELD_RANGE[field_name]
            if "field" in faults:
                items = [min(max(_as_int(v), lo), hi) for v in values]
        elif field_name == "bool_contents":
            items = [
                bool(v) if not isinstance(v, float) or np.isfinite(v) else True for v in values
            ]
        elif field_name in ("fp32_contents", "fp64_contents") and "field" in faults:
            items = [0.0 if isinstance(v, str) else float(v) for v in values]
        if "typed" in faults:
            items = items + items[:1] if items and draw(st.booleans()) else items[1:]
        getattr(t.contents, field_name).extend(items)
    if "outputs" in faults:
        for n in draw(st.lists(st.sampled_from(["y", "z", ""]), max_size=3)):
            req.outputs.add(name=n)
    valid = not faults
    expect = _expected(datatype, values, [batch, 3]) if valid else None
    return GrpcCase(datatype, req, valid, expect)


def _as_int(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    return int(v) if np.isfinite(float(v)) else 0
