"""Build the LLM demo's models: a small decoder in ONNX Runtime GenAI's folder layout, three times.

Nothing is downloaded. The graph is the one onnxruntime-genai's model builder writes for a
Llama (as SmolLM2's), scaled down to 2 layers, hidden 64 (about 13 MB, mostly the 49,152-row
embedding), with SmolLM2's tokenizer files from ../shared/models/smollm2/ (the sibling checkout
of the shared assets). Weights are random but seeded: every machine builds the same bytes, so
a second run finds its artifacts in the store.

The layers' weights take two values per block of 32 inputs (0 and the block's largest
magnitude), as a binary-weight training leaves them: int4 weight-only quantization holds them
exactly and int8 to a float rounding, so the demo's int4 canary answers much like its int8
stable. (A random decoder is chaotic, one rounding difference changes the rest of a greedy
answer: with tiny_llm.py's weights int8 and int4 agree on 13% of the gate's greedy tokens,
which would fail any honest canary; these on 88%, and on 65-84% of the demo's live mirrored
answers, batched differently.)

- v1: the model in service (compressed to int8 weight-only by v1.yaml);
- v2: the same weights, shipped as int4 (v2.yaml): half the bytes, same answers;
- v3: a broken export: the vocabulary rows of the tied embedding / lm_head were shuffled. It
  loads, streams fluent-looking tokens and passes its own accuracy gate (compressed v3 answers
  like original v3), but its answers have nothing to do with v2's: only the canary analysis,
  comparing mirrored greedy answers token by token, sees it.

Also writes ``prompts.jsonl`` (the accuracy gate's prompts).

The graph code is tests/helpers/tiny_llm.py's (the demo may not import from tests/).
Usage: python examples/llm/build_models.py [OUT_DIR]   (default: examples/llm/models)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT.parent / "shared" / "models" / "smollm2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
VOCAB = 49152
CONTEXT = 2048  # rows of the rotary tables, and genai's default max_length
ROPE_THETA = 100000.0
EPS = 9.999999747378752e-06  # the builder's float32 1e-5
MASK = "/model/attn_mask_reformat/attn_mask_subgraph"
DATA = "model.onnx.data"
LAYERS, HIDDEN, HEADS, KV_HEADS = 2, 64, 4, 2
# Layer weights at 0.45x tests/helpers/tiny_llm.py's: calm enough that int8 and int4 answer
# alike (at 1x one rounding difference changes the rest of a greedy answer), lively enough that
# the answers do not repeat one token.
GAIN = 0.45
GRID_BLOCK = 32  # MatMulNBits' block along the input axis
PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three colours of the rainbow.",
    "Say hello in Spanish.",
)


def build(out_dir: Path) -> dict[str, Path]:
    """v1, v2, v3 folders and prompts.jsonl under ``out_dir``; unchanged files are not rewritten
    (same seed, same bytes)."""
    missing = [f for f in (*TOKENIZER_FILES, "genai_config.json") if not (SMOLLM2 / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{SMOLLM2} lacks {missing}: the demo decoder borrows SmolLM2's tokenizer files "
            "(check out the shared assets beside this repository as ../shared)"
        )
    out_dir = Path(out_dir)
    good = _weights(LAYERS, HIDDEN, HEADS, KV_HEADS, seed=0)
    broken = dict(good)
    perm = np.random.default_rng(3).permutation(VOCAB)
    broken["lm_head.MatMul.weight"] = good["lm_head.MatMul.weight"][:, perm]
    made = {
        "v1": _write(out_dir / "v1", good),
        "v2": _write(out_dir / "v2", good),
        "v3": _write(out_dir / "v3", broken),
    }
    prompts = out_dir / "prompts.jsonl"
    text = "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n"
                   for p in PROMPTS)
    if not prompts.is_file() or prompts.read_text() != text:
        prompts.write_text(text)
    made["prompts"] = prompts
    return made


def _write(out_dir: Path, w: dict[str, np.ndarray]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _model(w, LAYERS, HEADS, KV_HEADS, HIDDEN // HEADS)
    scratch = out_dir / ".new"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    onnx.save_model(
        model, scratch / "model.onnx", save_as_external_data=True,
        all_tensors_to_one_file=True, location=DATA, size_threshold=0,
    )  # fmt: skip
    for name in TOKENIZER_FILES:
        shutil.copyfile(SMOLLM2 / name, scratch / name)
    config = json.loads((SMOLLM2 / "genai_config.json").read_text())
    config["model"]["context_length"] = CONTEXT
    config["model"]["decoder"].update(
        head_size=HIDDEN // HEADS, hidden_size=HIDDEN, num_attention_heads=HEADS,
        num_hidden_layers=LAYERS, num_key_value_heads=KV_HEADS,
    )  # fmt: skip
    config["search"]["max_length"] = CONTEXT
    (scratch / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    for new in scratch.iterdir():
        old = out_dir / new.name
        if not old.is_file() or old.read_bytes() != new.read_bytes():
            new.replace(old)  # keep the old file's mtime when nothing changed
    shutil.rmtree(scratch)
    return out_dir


def _on_grid(a: np.ndarray) -> np.ndarray:
    """``a`` [K, N] made two-level per column and block of GRID_BLOCK rows: the values that
    share the sign of the block's largest magnitude m become that signed m, the others 0. ONNX
    Runtime's symmetric int4 (scale m / -8) holds such a block exactly, symmetric int8 (scale
    m / 127) to a float rounding, so v1 (int8) and v2 (int4) compute nearly the same layers."""
    k = a.shape[0]
    blocks = a.reshape(k // GRID_BLOCK, GRID_BLOCK, -1)
    top = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None, :], axis=1)
    return np.where(blocks * top > 0, top, 0).reshape(a.shape).astype(np.float32)


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
            (hidden, (heads + 2 * kv_heads) * head), GAIN * 2.0 / np.sqrt(hidden))
        if i == 0:
            w["cos_cache"] = np.cos(angles).astype(np.float32)
            w["sin_cache"] = np.sin(angles).astype(np.float32)
        w[f"{p}.attn.o_proj.MatMul.weight"] = normal((hidden, hidden), GAIN * 3.0 / np.sqrt(hidden))
        w[f"{p}.post_attention_layernorm.weight"] = 1.0 + normal((hidden,), 0.1)
        w[f"{p}.mlp.gate_proj.MatMul.weight"] = normal((hidden, mlp), GAIN * 2.0 / np.sqrt(hidden))
        w[f"{p}.mlp.up_proj.MatMul.weight"] = normal((hidden, mlp), GAIN * 2.0 / np.sqrt(hidden))
        w[f"{p}.mlp.down_proj.MatMul.weight"] = normal((mlp, hidden), GAIN * 3.0 / np.sqrt(mlp))
    w[f"model.layers.{layers}.final_norm_layernorm.weight"] = 1.0 + normal((hidden,), 0.1)
    w["lm_head.MatMul.weight"] = normal((hidden, VOCAB), 1.0)
    for name in w:
        if name.startswith("model.layers.") and name.endswith("MatMul.weight"):
            w[name] = _on_grid(w[name])
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


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "models"
    for name, path in build(out).items():
        print(f"{name}: {path}")
