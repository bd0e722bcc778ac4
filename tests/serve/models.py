"""Models for the serve tests, built with onnx.helper: every datatype, tokens, BYTES."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from tests.helpers.models import OPSET

# OIP datatype -> ONNX element type, for every datatype the protocol and ORT share.
DTYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxship-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def echo_all_dtypes() -> onnx.ModelProto:
    """One input per datatype, ``in_<DT>: [batch, 3]``, each echoed to ``out_<DT>``."""
    nodes, inputs, outputs = [], [], []
    for name, elem in DTYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    return _model(helper.make_graph(nodes, "echo", inputs, outputs))


def tokens() -> onnx.ModelProto:
    """A toy encoder signature: int64 ``input_ids`` and ``attention_mask`` ``[batch, seq]``.

    Outputs: ``masked = input_ids * attention_mask`` ``[batch, seq]`` (per token, so padding
    must be cropped off) and ``length = sum(attention_mask, axis=1)`` ``[batch]`` (pooled).
    """
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    masked = helper.make_tensor_value_info("masked", TensorProto.INT64, ["batch", "sequence"])
    length = helper.make_tensor_value_info("length", TensorProto.INT64, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("ReduceSum", ["attention_mask", "axes"], ["length"], keepdims=0),
    ]
    return _model(helper.make_graph(nodes, "tokens", [ids, mask], [masked, length], [axes]))


def fixed_shape() -> onnx.ModelProto:
    """No batch dimension: ``x: FP32 [2, 2] -> y = x + x``; batching must stay off."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    return _model(
        helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "fixed", [x], [y])
    )


def lookup() -> onnx.ModelProto:
    """``ids: INT64 [batch] -> table[ids]``: an id past the table is the caller's mistake (400)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    table = helper.make_tensor("table", TensorProto.FLOAT, [5], [0.0, 1.0, 2.0, 3.0, 4.0])
    node = helper.make_node("Gather", ["table", "ids"], ["y"])
    return _model(helper.make_graph([node], "lookup", [ids], [y], [table]))


def add_three() -> onnx.ModelProto:
    """``x: FP32 [batch, n] + [1, 2, 3]``: warms up at n = 1, fails inside ORT at n = 2 (500)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    c = helper.make_tensor("c", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    return _model(
        helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "add3", [x], [y], [c])
    )
