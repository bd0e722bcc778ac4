"""Build the demo models: a small transformer sentence encoder, in three versions.

Nothing is downloaded. The weights are deterministic (seeded), so every machine builds the
same bytes and a second `onnxship up` finds its artifacts in the store.

- v1: the model in service.
- v2: a fine-tune of v1 (the same architecture, weights nudged by ~1%): it answers almost
  like v1 and its canary goes to 100%.
- v3: a broken export. It was traced on one unpadded sentence, so its position ids come
  from the number of real tokens in the first sentence of a batch instead of the sequence
  length, and its weights come from another training run. Padded requests fail inside ONNX
  Runtime (HTTP 500) and the others answer with embeddings unrelated to v1's. Its own
  accuracy gate passes (compressed v3 answers like original v3 on the unpadded samples):
  only the canary analysis, comparing it with the stable revision on live traffic, sees it.

Inputs: ``input_ids`` and ``attention_mask``, int64 [batch, sequence]; output ``embedding``,
float32 [batch, hidden]: the mean of the last layer's states over unmasked tokens, L2
normalized. Also writes ``samples.npz`` (token batches for calibration and the accuracy gate).

Usage: python examples/demo/build_model.py [OUT_DIR]   (default: examples/demo/models)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
VOCAB = 8192


@dataclass(frozen=True)
class Shape:
    vocab: int = VOCAB
    hidden: int = 128
    heads: int = 4
    ffn: int = 512
    layers: int = 4
    max_len: int = 128


def weights(shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """Deterministic initializers for ``shape``, scaled so activations stay near unit size."""
    rng = np.random.default_rng(seed)
    h, f = shape.hidden, shape.ffn

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    def vec(n: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(n) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "tok_emb": (rng.standard_normal((shape.vocab, h)) * 0.5).astype(np.float32),
        "pos_emb": (rng.standard_normal((shape.max_len, h)) * 0.1).astype(np.float32),
        "emb_ln_g": np.ones(h, np.float32),
        "emb_ln_b": np.zeros(h, np.float32),
    }
    for i in range(shape.layers):
        p = f"l{i}_"
        for name in ("q", "k", "v", "o"):
            w[p + name + "_w"] = mat(h, h)
            w[p + name + "_b"] = vec(h)
        w[p + "ff1_w"], w[p + "ff1_b"] = mat(h, f), vec(f)
        w[p + "ff2_w"], w[p + "ff2_b"] = mat(f, h), vec(h)
        for ln in ("ln1", "ln2"):
            w[p + ln + "_g"] = (1.0 + vec(h, 0.05)).astype(np.float32)
            w[p + ln + "_b"] = vec(h)
    return w


def nudge(w: dict[str, np.ndarray], seed: int, relative: float) -> dict[str, np.ndarray]:
    """A "fine-tune": every weight moved by ``relative`` of its own spread."""
    rng = np.random.default_rng(seed)
    return {
        k: (v + rng.standard_normal(v.shape) * relative * (float(v.std()) or 1.0)).astype(
            np.float32
        )
        for k, v in w.items()
    }


def encoder(
    shape: Shape, w: dict[str, np.ndarray], name: str, broken_positions: bool = False
) -> onnx.ModelProto:
    """The ONNX graph of a post-LN transformer encoder with masked mean pooling.

    ``broken_positions`` reproduces the v3 export bug: positions 0..n-1 where n counts the
    real tokens of the first sentence, which only matches unpadded batches.
    """
    h, heads = shape.hidden, shape.heads
    hd = h // heads
    nodes: list[onnx.NodeProto] = []
    consts: dict[str, np.ndarray] = {
        "c_axis0": np.array([0], np.int64),
        "c_axis1": np.array([1], np.int64),
        "c_axis2": np.array([2], np.int64),
        "c_axes12": np.array([1, 2], np.int64),
        "c_split_heads": np.array([0, 0, heads, hd], np.int64),
        "c_merge_heads": np.array([0, 0, h], np.int64),
        "c_zero": np.array(0, np.int64),
        "c_one": np.array(1, np.int64),
        "c_scale": np.array(1.0 / np.sqrt(hd), np.float32),
        "c_neg": np.array(-10000.0, np.float32),
        "c_onef": np.array(1.0, np.float32),
        "c_half": np.array(0.5, np.float32),
        "c_rsqrt2": np.array(1.0 / np.sqrt(2.0), np.float32),
        "c_eps": np.array(1e-6, np.float32),
    }

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def layer_norm(x: str, g: str, b: str, out: str) -> str:
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=1e-5)

    def dense(x: str, wname: str, bname: str, out: str) -> str:
        return node("Add", [node("MatMul", [x, wname], out + "_mm"), bname], out)

    # Embeddings: token + position (positions 0..seq-1).
    tok = node("Gather", ["tok_emb", "input_ids"], "tok")
    if broken_positions:
        first = node("Gather", ["attention_mask", "c_zero"], "first_mask", axis=0)
        seq_len = node("ReduceSum", [first, "c_axis0"], "seq_len", keepdims=0)
    else:
        seq_shape = node("Shape", ["input_ids"], "ids_shape")
        seq_len = node("Gather", [seq_shape, "c_one"], "seq_len", axis=0)
    positions = node("Range", ["c_zero", seq_len, "c_one"], "positions")
    pos = node("Gather", ["pos_emb", positions], "pos")
    x = layer_norm(node("Add", [tok, pos], "emb_sum"), "emb_ln_g", "emb_ln_b", "x0")

    # Attention bias: 0 where attended, -1e4 on padding, shaped [batch, 1, 1, seq].
    maskf = node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
    inv = node("Sub", ["c_onef", maskf], "mask_inv")
    bias = node("Unsqueeze", [node("Mul", [inv, "c_neg"], "mask_neg"), "c_axes12"], "mask_bias")

    for i in range(shape.layers):
        p = f"l{i}_"

        def heads_of(t: str, transpose: list[int], p: str = p) -> str:
            r = node("Reshape", [t, "c_split_heads"], t + "_r")
            return node("Transpose", [r], t + "_t", perm=transpose)

        q = heads_of(dense(x, p + "q_w", p + "q_b", p + "q"), [0, 2, 1, 3])
        k = heads_of(dense(x, p + "k_w", p + "k_b", p + "k"), [0, 2, 3, 1])
        v = heads_of(dense(x, p + "v_w", p + "v_b", p + "v"), [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], p + "qk"), "c_scale"], p + "scores")
        probs = node("Softmax", [node("Add", [scores, bias], p + "masked")], p + "probs", axis=-1)
        ctx = node(
            "Transpose", [node("MatMul", [probs, v], p + "ctx_h")], p + "ctx_t", perm=[0, 2, 1, 3]
        )
        ctx = node("Reshape", [ctx, "c_merge_heads"], p + "ctx")
        attn = dense(ctx, p + "o_w", p + "o_b", p + "attn")
        x = layer_norm(node("Add", [x, attn], p + "res1"), p + "ln1_g", p + "ln1_b", p + "x1")
        # GELU (erf form): 0.5 * u * (1 + erf(u / sqrt(2))).
        u = dense(x, p + "ff1_w", p + "ff1_b", p + "ff1")
        erf = node("Erf", [node("Mul", [u, "c_rsqrt2"], p + "u_scaled")], p + "erf")
        gelu = node(
            "Mul",
            [node("Mul", [u, "c_half"], p + "u_half"), node("Add", [erf, "c_onef"], p + "erf1")],
            p + "gelu",
        )
        ff = dense(gelu, p + "ff2_w", p + "ff2_b", p + "ff2")
        x = layer_norm(node("Add", [x, ff], p + "res2"), p + "ln2_g", p + "ln2_b", p + "x2")

    # Masked mean pooling, then L2 normalization.
    mask3 = node("Unsqueeze", [maskf, "c_axis2"], "mask3")
    summed = node(
        "ReduceSum", [node("Mul", [x, mask3], "masked_x"), "c_axis1"], "summed", keepdims=0
    )
    count = node(
        "Max", [node("ReduceSum", [mask3, "c_axis1"], "count0", keepdims=0), "c_onef"], "count"
    )
    mean = node("Div", [summed, count], "mean")
    norm = node(
        "Sqrt",
        [
            node(
                "Add",
                [
                    node(
                        "ReduceSum",
                        [node("Mul", [mean, mean], "sq"), "c_axis1"],
                        "sumsq",
                        keepdims=1,
                    ),
                    "c_eps",
                ],
                "sumsq_eps",
            )
        ],
        "norm",
    )
    node("Div", [mean, norm], "embedding")

    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", h])],
        initializer=[
            numpy_helper.from_array(a, n) for n, a in {**w, **consts}.items() if n in used
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxship-demo"
    )
    model.ir_version = 8
    model.doc_string = f"onnxship demo encoder ({name})"
    onnx.checker.check_model(model, full_check=True)
    return model


def versions() -> dict[str, onnx.ModelProto]:
    shape = Shape()
    v1 = weights(shape, seed=1)
    return {
        "v1": encoder(shape, v1, "demo-encoder-v1"),
        "v2": encoder(shape, nudge(v1, seed=2, relative=0.01), "demo-encoder-v2"),
        "v3": encoder(shape, weights(shape, seed=3), "demo-encoder-v3", broken_positions=True),
    }


def samples(n: int = 32, seq: int = 16, seed: int = 7) -> dict[str, np.ndarray]:
    """Unpadded token batches (calibration and the accuracy gate of every version)."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1, VOCAB, size=(n, seq), dtype=np.int64),
        "attention_mask": np.ones((n, seq), np.int64),
    }


def _same_arrays(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    if not path.exists():
        return False
    with np.load(path) as old:
        return set(old.files) == set(arrays) and all(
            np.array_equal(old[k], v) for k, v in arrays.items()
        )


def build(out_dir: Path) -> dict[str, Path]:
    """Write ``<out_dir>/<version>/model.onnx`` and ``<out_dir>/samples.npz``; skip what exists."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for version, model in versions().items():
        path = out_dir / version / "model.onnx"
        data = model.SerializeToString()
        if not path.exists() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        paths[version] = path
    sample_path = out_dir / "samples.npz"
    wanted = samples()
    if not _same_arrays(sample_path, wanted):
        with sample_path.open("wb") as fh:
            np.savez(fh, **wanted)
    paths["samples"] = sample_path
    return paths


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "models"
    for name, path in build(out_dir).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
