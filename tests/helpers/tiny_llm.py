"""A tiny decoder LLM in ONNX Runtime GenAI's folder layout, built by the tests themselves.

Same graph structure, node names, initializer names and IO signature as the fp32 CPU model that
onnxruntime-genai 0.18.0's model builder writes for a Llama (../shared/models/smollm2/model.onnx):
Gather through a Transpose of the tied ``lm_head.MatMul.weight``, SimplifiedLayerNormalization,
GroupQueryAttention (com.microsoft) over packed QKV with rotary inside (``cos_cache`` /
``sin_cache``), SkipSimplifiedLayerNormalization, SiLU-gated MLP; inputs ``input_ids``,
``attention_mask``, ``past_key_values.N.key/value``; outputs ``logits``, ``present.N.key/value``.
Only the sizes are scaled down (2 layers, hidden 64, 4/2 heads, head size 16, MLP 128); the
vocabulary stays 49,152 so the SmolLM2 tokenizer files work unchanged. About 13 MB, mostly the
embedding. Weights are random but deterministic per ``seed``, scaled so greedy output varies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SMOLLM2 = Path(__file__).resolve().parents[3] / "shared" / "models" / "smollm2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
VOCAB = 49152
CONTEXT = 2048  # rows of the rotary tables, and genai's default max_length
ROPE_THETA = 100000.0
EPS = 9.999999747378752e-06  # the builder's float32 1e-5
MASK = "/model/attn_mask_reformat/attn_mask_subgraph"
DATA = "model.onnx.data"


def build_tiny_llm(
    out_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    external_data: bool = True,
) -> Path:
    """Write model.onnx (+ model.onnx.data), genai_config.json and the tokenizer files into
    ``out_dir``; return it. The same arguments give the same bytes."""
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden} must divide by heads {heads}, heads by kv_heads")
    missing = [f for f in (*TOKENIZER_FILES, "genai_config.json") if not (SMOLLM2 / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{SMOLLM2} lacks {missing}: the tiny LLM borrows SmolLM2's files")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = hidden // heads
    model = _model(_weights(layers, hidden, heads, kv_heads, seed), layers, heads, kv_heads, head)
    (out_dir / DATA).unlink(missing_ok=True)
    if external_data:
        onnx.save_model(
            model, out_dir / "model.onnx", save_as_external_data=True,
            all_tensors_to_one_file=True, location=DATA, size_threshold=0,
        )
    else:
        onnx.save_model(model, out_dir / "model.onnx")
    for name in TOKENIZER_FILES:
        shutil.copyfile(SMOLLM2 / name, out_dir / name)
    config = json.loads((SMOLLM2 / "genai_config.json").read_text())
    config["model"]["context_length"] = CONTEXT
    config["model"]["decoder"].update(
        head_size=head, hidden_size=hidden, num_attention_heads=heads,
        num_hidden_layers=layers, num_key_value_heads=kv_heads,
    )
    config["search"]["max_length"] = CONTEXT
    (out_dir / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    return out_dir


def _weights(
    layers: int, hidden: int, heads: int, kv_heads: int, seed: int
) -> dict[str, np.ndarray]:
    """Initializers by the builder's names, in its order. Scales: the attention and MLP outputs
    are larger than the embedding they are added to, so the tied lm_head does not simply echo
    the input token back (which makes greedy decoding repeat one token forever)."""
    rng = np.random.default_rng(seed)
    head, mlp = hidden // heads, 2 * hidden

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    inv_freq = 1.0 / ROPE_THETA ** (np.arange(0, head, 2, dtype=np.float64) / head)
    angles = np.outer(np.arange(CONTEXT, dtype=np.float64), inv_freq)
    w: dict[str, np.ndarray] = {}
    for i in range(layers):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = 1.0 + normal((hidden,), 0.1)
        w[f"{p}.attn.qkv_proj.MatMul.weight"] = normal(
            (hidden, (heads + 2 * kv_heads) * head), 2.0 / np.sqrt(hidden))
        if i == 0:
            w["cos_cache"] = np.cos(angles).astype(np.float32)
            w["sin_cache"] = np.sin(angles).astype(np.float32)
        w[f"{p}.attn.o_proj.MatMul.weight"] = normal((hidden, hidden), 3.0 / np.sqrt(hidden))
        w[f"{p}.post_attention_layernorm.weight"] = 1.0 + normal((hidden,), 0.1)
        w[f"{p}.mlp.gate_proj.MatMul.weight"] = normal((hidden, mlp), 2.0 / np.sqrt(hidden))
        w[f"{p}.mlp.up_proj.MatMul.weight"] = normal((hidden, mlp), 2.0 / np.sqrt(hidden))
        w[f"{p}.mlp.down_proj.MatMul.weight"] = normal((mlp, hidden), 3.0 / np.sqrt(mlp))
    w[f"model.layers.{layers}.final_norm_layernorm.weight"] = 1.0 + normal((hidden,), 0.1)
    w["lm_head.MatMul.weight"] = normal((hidden, VOCAB), 1.0)
    return w


def _model(
    w: dict[str, np.ndarray], layers: int, heads: int, kv_heads: int, head: int
) -> onnx.ModelProto:
    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [f"/model/constants/INT64/{name}"],
            name=f"/model/constant_nodes/INT64/{name}",
            value=numpy_helper.from_array(value, f"/model/constants/INT64/{name}"),
        )

    one_1d, one = "/model/constants/INT64/[1]", "/model/constants/INT64/1"
    seqlens, total = f"{MASK}/Sub/Cast/output_0", f"{MASK}/Gather/Cast/output_0"
    nodes = [
        const("[1]", np.array([1], np.int64)),
        helper.make_node("ReduceSum", ["attention_mask", one_1d], [f"{MASK}/ReduceSum/output_0"],
                         name=f"{MASK}/ReduceSum", keepdims=0),
        helper.make_node("Sub", [f"{MASK}/ReduceSum/output_0", one_1d], [f"{MASK}/Sub/output_0"],
                         name=f"{MASK}/Sub"),
        helper.make_node("Cast", [f"{MASK}/Sub/output_0"], [seqlens], name=f"{MASK}/Sub/Cast",
                         to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], [f"{MASK}/Shape/output_0"],
                         name=f"{MASK}/Shape"),
        const("1", np.array(1, np.int64)),
        helper.make_node("Gather", [f"{MASK}/Shape/output_0", one], [f"{MASK}/Gather/output_0"],
                         name=f"{MASK}/Gather", axis=0),
        helper.make_node("Cast", [f"{MASK}/Gather/output_0"], [total], name=f"{MASK}/Gather/Cast",
                         to=TensorProto.INT32),
        helper.make_node("Transpose", ["lm_head.MatMul.weight"],
                         ["/model/embed_tokens/Transpose/output_0"],
                         name="/model/embed_tokens/Transpose", perm=[1, 0]),
        helper.make_node("Gather", ["/model/embed_tokens/Transpose/output_0", "input_ids"],
                         ["/model/embed_tokens/Gather/output_0"],
                         name="/model/embed_tokens/Gather"),
    ]
    skip = "/model/embed_tokens/Gather/output_0"  # the residual stream entering the layer
    for i in range(layers):
        p, n = f"/model/layers.{i}", f"model.layers.{i}"
        if i == 0:
            nodes.append(helper.make_node(
                "SimplifiedLayerNormalization", [skip, f"{n}.input_layernorm.weight"],
                [f"{p}/input_layernorm/output_0"], name=f"{p}/input_layernorm/LayerNorm",
                epsilon=EPS, axis=-1, stash_type=1))
        # for i > 0 the previous layer's closing SkipSimplifiedLayerNormalization made it
        nodes += [
            _matmul(f"{p}/attn/qkv_proj", f"{p}/input_layernorm/output_0", n),
            helper.make_node(
                "GroupQueryAttention",
                [f"{p}/attn/qkv_proj/MatMul/output_0", "", "", f"past_key_values.{i}.key",
                 f"past_key_values.{i}.value", seqlens, total, "cos_cache", "sin_cache",
                 "", "", ""],
                [f"{p}/attn/GroupQueryAttention/output_0", f"present.{i}.key",
                 f"present.{i}.value"],
                name=f"{p}/attn/GroupQueryAttention", domain="com.microsoft",
                num_heads=heads, kv_num_heads=kv_heads, scale=float(1 / np.sqrt(head)),
                local_window_size=-1, softcap=0.0, do_rotary=1, rotary_interleaved=0),
            _matmul(f"{p}/attn/o_proj", f"{p}/attn/GroupQueryAttention/output_0", n),
            _skip_norm(f"{p}/post_attention_layernorm", skip, f"{p}/attn/o_proj/MatMul/output_0",
                       f"{n}.post_attention_layernorm.weight"),
            _matmul(f"{p}/mlp/gate_proj", f"{p}/post_attention_layernorm/output_0", n),
            _matmul(f"{p}/mlp/up_proj", f"{p}/post_attention_layernorm/output_0", n),
            helper.make_node("Sigmoid", [f"{p}/mlp/gate_proj/MatMul/output_0"],
                             [f"{p}/mlp/act_fn/Sigmoid/output_0"], name=f"{p}/mlp/act_fn/Sigmoid"),
            helper.make_node("Mul", [f"{p}/mlp/gate_proj/MatMul/output_0",
                                     f"{p}/mlp/act_fn/Sigmoid/output_0"],
                             [f"{p}/mlp/act_fn/Mul/output_0"], name=f"{p}/mlp/act_fn/Mul"),
            helper.make_node("Mul", [f"{p}/mlp/act_fn/Mul/output_0",
                                     f"{p}/mlp/up_proj/MatMul/output_0"],
                             [f"{p}/mlp/Mul/output_0"], name=f"{p}/mlp/Mul"),
            _matmul(f"{p}/mlp/down_proj", f"{p}/mlp/Mul/output_0", n),
        ]
        skip = f"{p}/post_attention_layernorm/output_3"
        down = f"{p}/mlp/down_proj/MatMul/output_0"
        if i + 1 < layers:
            q = f"/model/layers.{i + 1}"
            nodes.append(_skip_norm(f"{q}/input_layernorm", skip, down,
                                    f"model.layers.{i + 1}.input_layernorm.weight"))
            skip = f"{q}/input_layernorm/output_3"
        else:
            f = f"/model/layers.{layers}/final_norm_layernorm"
            nodes.append(helper.make_node(
                "SkipSimplifiedLayerNormalization",
                [skip, down, f"model.layers.{layers}.final_norm_layernorm.weight"],
                [f"{f}/output_0"], name=f"{f}/SkipLayerNorm", domain="com.microsoft", epsilon=EPS))
            nodes.append(helper.make_node("MatMul", [f"{f}/output_0", "lm_head.MatMul.weight"],
                                          ["logits"], name="/lm_head/MatMul"))

    def kv(name: str, seq: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(
            name, TensorProto.FLOAT, ["batch_size", kv_heads, seq, "kv_cache_dim"])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                      ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                      ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch_size", "sequence_length", VOCAB])]
    for i in range(layers):
        for part in ("key", "value"):
            inputs.append(kv(f"past_key_values.{i}.{part}", "past_sequence_length"))
            outputs.append(kv(f"present.{i}.{part}", "total_sequence_length"))
    graph = helper.make_graph(
        nodes, "main_graph", inputs, outputs,
        initializer=[numpy_helper.from_array(a, name) for name, a in w.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 22), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10, producer_name="onnxruntime-genai",
    )
    return model


def _matmul(prefix: str, x: str, layer: str) -> onnx.NodeProto:
    weight = f"{layer}.{prefix.split('/', 3)[-1].replace('/', '.')}.MatMul.weight"
    return helper.make_node("MatMul", [x, weight], [f"{prefix}/MatMul/output_0"],
                            name=f"{prefix}/MatMul")


def _skip_norm(prefix: str, skip: str, x: str, weight: str) -> onnx.NodeProto:
    return helper.make_node(
        "SkipSimplifiedLayerNormalization", [skip, x, weight],
        [f"{prefix}/output_0", "", "", f"{prefix}/output_3"], name=f"{prefix}/SkipLayerNorm",
        domain="com.microsoft", epsilon=EPS)
