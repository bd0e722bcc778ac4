"""Test models for the compression pipeline, built with onnx.helper (deterministic, small).

- ``encoder_block``: a transformer encoder block (MatMul, Add, Softmax, LayerNormalization,
  Gelu) over [batch, seq, dim] float input.
- ``cnn``: Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm classifier.
- ``save_external``: any model saved with its weights in a separate data file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20  # Gelu is in the standard domain from opset 20


def _w(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32)


def encoder_block(dim: int = 64, ff: int = 128, seed: int = 0) -> onnx.ModelProto:
    """Single-head self-attention + feed-forward, post-norm, x: float32[batch, seq, dim]."""
    rng = np.random.default_rng(seed)
    inits = {
        "wq": _w(rng, dim, dim),
        "wk": _w(rng, dim, dim),
        "wv": _w(rng, dim, dim),
        "wo": _w(rng, dim, dim),
        "w1": _w(rng, dim, ff),
        "w2": _w(rng, ff, dim),
        "b1": (rng.standard_normal(ff) * 0.1).astype(np.float32),
        "b2": (rng.standard_normal(dim) * 0.1).astype(np.float32),
        "g1": np.ones(dim, np.float32),
        "be1": np.zeros(dim, np.float32),
        "g2": np.ones(dim, np.float32),
        "be2": np.zeros(dim, np.float32),
        "scale": np.array(1 / np.sqrt(dim), np.float32),
    }
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "wq"], ["q"]),
        n("MatMul", ["x", "wk"], ["k"]),
        n("MatMul", ["x", "wv"], ["v"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s1"]),
        n("Softmax", ["s1"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["a0"]),
        n("MatMul", ["a0", "wo"], ["a1"]),
        n("Add", ["x", "a1"], ["r1"]),
        n("LayerNormalization", ["r1", "g1", "be1"], ["h1"], axis=-1),
        n("MatMul", ["h1", "w1"], ["f0"]),
        n("Add", ["f0", "b1"], ["f1"]),
        n("Gelu", ["f1"], ["f2"]),
        n("MatMul", ["f2", "w2"], ["f3"]),
        n("Add", ["f3", "b2"], ["f4"]),
        n("Add", ["h1", "f4"], ["r2"]),
        n("LayerNormalization", ["r2", "g2", "be2"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", dim])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _finish(graph)


def cnn(channels: int = 48, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """x: float32[batch, 3, 16, 16] -> logits float32[batch, classes]."""
    rng = np.random.default_rng(seed)
    inits = {
        "c1": _w(rng, channels, 3, 3, 3),
        "c1b": np.zeros(channels, np.float32),
        "c2": _w(rng, channels, channels, 3, 3),
        "c2b": np.zeros(channels, np.float32),
        "fc": _w(rng, channels, classes, scale=4.0),
        "fcb": np.zeros(classes, np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "c1", "c1b"], ["h0"], pads=[1, 1, 1, 1]),
        n("Relu", ["h0"], ["h1"]),
        n("Conv", ["h1", "c2", "c2b"], ["h2"], pads=[1, 1, 1, 1]),
        n("Relu", ["h2"], ["h3"]),
        n("GlobalAveragePool", ["h3"], ["h4"]),
        n("Flatten", ["h4"], ["h5"]),
        n("Gemm", ["h5", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxship-tests"
    )
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> Path:
    """Save with every initializer of 1 KB or more in ``location`` beside the model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    return path


def set_external_location(path: Path, location: str) -> None:
    """Point every external tensor of a saved model at ``location`` (to forge bad models)."""
    model = onnx.load_model(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, str(path))


def inputs_for(name: str, n: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "encoder":
        return {"x": rng.standard_normal((n, 8, 64)).astype(np.float32)}
    if name == "cnn":
        return {"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}
    return {"x": rng.standard_normal((n, 32)).astype(np.float32)}


def stateful(dim: int = 8, hidden: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Like a voice-activity model: x float32[batch, dim], a state float32[2, batch, 4] whose
    batch axis is axis 1, and a 0-d int64 sample rate read through an If (16000 or not).
    Outputs: ``output`` [batch, 4] and ``stateN`` [2, batch, 4]."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _w(rng, dim, hidden),
        "w2": _w(rng, hidden, 4),
        "ws": _w(rng, dim, 4),
        "rate": np.array(16000, np.int64),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "axis0": np.array([0], np.int64),
    }
    n = helper.make_node
    branch = lambda name, value: helper.make_graph(  # noqa: E731
        [n("Identity", [value], [f"{name}_out"])],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])],
    )
    nodes = [
        n("Equal", ["sr", "rate"], ["is16k"]),
        n(
            "If",
            ["is16k"],
            ["scale"],
            then_branch=branch("then", "one"),
            else_branch=branch("else", "half"),
        ),
        n("MatMul", ["x", "w1"], ["h0"]),
        n("Relu", ["h0"], ["h1"]),
        n("MatMul", ["h1", "w2"], ["o0"]),
        n("Mul", ["o0", "scale"], ["output"]),
        n("MatMul", ["x", "ws"], ["s0"]),
        n("Unsqueeze", ["s0", "axis0"], ["s1"]),
        n("Add", ["state", "s1"], ["s2"]),
        n("Tanh", ["s2"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _finish(graph)


def fixed_batch_cnn(opset: int = 12, seed: int = 0) -> onnx.ModelProto:
    """The CNN with its batch fixed at 1 (x float32[1, 3, 16, 16]) on an older opset."""
    model = cnn(seed=seed)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    onnx.checker.check_model(model, full_check=True)
    return model


def byte_classifier(length: int = 32, classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    """Like a file-type classifier: int32 bytes [batch, length] in 0..255 -> an embedding
    table of 256 rows -> mean -> Softmax scores ``target_label`` [batch, classes]."""
    rng = np.random.default_rng(seed)
    inits = {
        "table": rng.standard_normal((256, 32)).astype(np.float32),
        "w": _w(rng, 32, classes, scale=4.0),
        "axes": np.array([1], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["table", "bytes"], ["e"]),
        n("ReduceMean", ["e", "axes"], ["m"], keepdims=0),
        n("MatMul", ["m", "w"], ["z"]),
        n("Softmax", ["z"], ["target_label"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "bytes",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", length])],
        [helper.make_tensor_value_info("target_label", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _finish(graph)


def pooled_encoder(seed: int = 0) -> onnx.ModelProto:
    """The encoder block with two outputs, like a sentence embedder: ``hidden`` [batch, seq,
    64] and ``pooled`` [batch, 64], the mean of ``hidden`` over the sequence."""
    model = encoder_block(seed=seed)
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "seq_axis"))
    model.graph.node[-1].output[0] = "hidden"  # the last LayerNormalization
    model.graph.node.append(
        helper.make_node("ReduceMean", ["hidden", "seq_axis"], ["pooled"], keepdims=0)
    )
    del model.graph.output[:]
    model.graph.output.extend(
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", 64]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 64]),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def reflect_padded(pad: int = 20, seed: int = 0) -> onnx.ModelProto:
    """x float32[batch, length] reflect-padded by ``pad`` on each side (ONNX Runtime refuses a
    length of ``pad`` or less), then a feed-forward layer on its mean and max."""
    rng = np.random.default_rng(seed)
    inits = {
        "pads": np.array([0, pad, 0, pad], np.int64),
        "axes": np.array([1], np.int64),
        "w": _w(rng, 2, 64),
    }
    n = helper.make_node
    nodes = [
        n("Pad", ["x", "pads"], ["p"], mode="reflect"),
        n("ReduceMean", ["p", "axes"], ["m"], keepdims=1),
        n("ReduceMax", ["p", "axes"], ["M"], keepdims=1),
        n("Concat", ["m", "M"], ["c"], axis=1),
        n("MatMul", ["c", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _finish(graph)
