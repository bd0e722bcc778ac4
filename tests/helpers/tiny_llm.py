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

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx

SMOLLM2 = Path(__file__).resolve().parents[3] / "shared" / "models" / "smollm2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
VOCAB = 49152
CONTEXT = 2048  # rows of the rotary tables, and genai's default max_length
ROPE_THETA = 100000.0
EPS = 9.999999747378752e-06  # the builder's float32 1e-5
MASK = "/model/attn_mask_reformat/attn_mask_subgraph"
DATA = "model.onnx.data"


def _demo_graph() -> object:
    """The graph code of the LLM demo (examples/llm/build_models.py): one copy, there, because
    the demo may not import from tests/; the tests differ from it only in the weights."""
    name = "onnxship_llm_demo_models"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "examples" / "llm" / "build_models.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_model = _demo_graph()._model  # type: ignore[attr-defined]


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
