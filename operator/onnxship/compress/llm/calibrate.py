"""GPTQ's calibration: the Hessian (2/T * sum of x x^T) of each MatMul's input over the prompts.

The original graph runs in plain ONNX Runtime with the MatMul inputs added as outputs; the graph
is passed as bytes and its external data read from the model's own folder (nothing is written
beside the source). The Hessians are float64 [K, K], one per distinct MatMul input: small for
small models (SmolLM2: about 100 MB), but they grow with the square of the width, so GPTQ is
the one algorithm whose memory is not bounded by one weight at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxship.store import Progress


def hessians_for(
    src_model: Path,
    graph: onnx.GraphProto,
    matmul_bits: dict[str, int],
    calibration: Sequence[Sequence[int]],
    progress: Progress,
) -> dict[str, np.ndarray]:
    """The Hessian of the input of the MatMul(s) reading each weight in ``matmul_bits``."""
    import onnxruntime as ort

    weight_input = {
        n.input[1]: n.input[0]
        for n in graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in matmul_bits
    }
    activations = sorted(set(weight_input.values()))
    model = onnx.load_model(str(src_model), load_external_data=False)
    present = {o.name for o in model.graph.output}
    for name in activations:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(src_model.parent)
    )
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    del model
    try:  # the KV shapes a GenAI folder's graph leaves symbolic
        config = json.loads((src_model.parent / "genai_config.json").read_text())
        decoder = dict(config["model"]["decoder"])
    except (OSError, ValueError, KeyError, TypeError):
        decoder = {}
    feeds_spec = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    sums: dict[str, np.ndarray] = {}
    rows = 0
    task = "calibrate gptq"
    for done, ids in enumerate(calibration):
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.array([list(ids)], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        for i in feeds_spec:
            heads = i.shape[1] if isinstance(i.shape[1], int) else decoder["num_key_value_heads"]
            size = i.shape[3] if isinstance(i.shape[3], int) else decoder["head_size"]
            dtype = np.float16 if "float16" in i.type else np.float32
            feeds[i.name] = np.zeros((1, int(heads), 0, int(size)), dtype=dtype)
        outputs = session.run(activations, feeds)
        rows += len(ids)
        for name, x in zip(activations, outputs, strict=True):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            h = sums.get(name)
            sums[name] = x.T @ x if h is None else h + x.T @ x
        progress(task, done + 1, len(calibration))
    del session
    return {w: sums[x] * (2.0 / max(rows, 1)) for w, x in weight_input.items()}
