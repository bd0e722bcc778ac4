"""The tiny test decoder: the builder's graph in miniature, loadable by ONNX Runtime GenAI and
plain ONNX Runtime, which agree on its greedy tokens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import pytest

from tests.helpers.tiny_llm import SMOLLM2, build_tiny_llm

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
LAYER = re.compile(r"/model/layers\.(\d+)/")


def _prompt_ids(tok: og.Tokenizer) -> list[int]:
    text = tok.apply_chat_template(json.dumps(MESSAGES), add_generation_prompt=True)
    return [int(t) for t in tok.encode(text)]


def _genai_greedy(folder: Path, new: int) -> list[int]:
    model = og.Model(str(folder))
    ids = _prompt_ids(og.Tokenizer(model))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + new)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)[len(ids):]]


def _nodes(model: onnx.ModelProto) -> list[tuple[object, ...]]:
    """Each node as (name, op, domain, inputs, outputs, attributes but the head counts)."""
    skip = {"num_heads", "kv_num_heads", "scale"}
    return [
        (n.name, n.op_type, n.domain, list(n.input), list(n.output),
         sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute
                if a.name not in skip))
        for n in model.graph.node
    ]


def test_graph_is_the_builders_graph_cut_to_two_layers(tiny_llm: Path) -> None:
    full = onnx.load(SMOLLM2 / "model.onnx", load_external_data=False)
    tiny = onnx.load(tiny_llm / "model.onnx", load_external_data=False)
    # SmolLM2's 30 layers minus layers 2..29; its final norm (layers.30) reads layer 29's output
    rename = {"layers.29/": "layers.1/", "layers.30": "layers.2"}
    expected = []
    for node in _nodes(full):
        match = LAYER.search(str(node[0]))
        if match and 2 <= int(match[1]) <= 29:
            continue
        text = json.dumps(node)
        for old, new in rename.items():
            text = text.replace(old, new)
        expected.append(tuple(json.loads(text)))
    assert [tuple(json.loads(json.dumps(n))) for n in _nodes(tiny)] == expected
    assert [i.name for i in tiny.graph.input] == [
        "input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value",
        "past_key_values.1.key", "past_key_values.1.value"]
    assert [o.name for o in tiny.graph.output] == [
        "logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert tiny.graph.output[0].type.tensor_type.shape.dim[2].dim_value == 49152
    # every initializer lives in model.onnx.data, as the builder writes them
    assert all(
        t.data_location == onnx.TensorProto.EXTERNAL
        and {e.key: e.value for e in t.external_data}["location"] == "model.onnx.data"
        for t in tiny.graph.initializer
    )
    assert sorted(p.name for p in tiny_llm.iterdir()) == [
        "chat_template.jinja", "genai_config.json", "model.onnx", "model.onnx.data",
        "tokenizer.json", "tokenizer_config.json"]


def test_genai_greedy_is_deterministic_and_varied(tiny_llm: Path) -> None:
    first = _genai_greedy(tiny_llm, 16)
    assert len(first) == 16
    assert _genai_greedy(tiny_llm, 16) == first
    assert len(set(first)) >= 8, f"greedy output degenerates: {first}"


def test_onnxruntime_kv_cache_loop_matches_genai(tiny_llm: Path) -> None:
    """Prefill, then three decode steps fed the present.* tensors, as in SmolLM2's README."""
    config = json.loads((tiny_llm / "genai_config.json").read_text())["model"]["decoder"]
    kv_heads, head, layers = (config["num_key_value_heads"], config["head_size"],
                              config["num_hidden_layers"])
    session = ort.InferenceSession(str(tiny_llm / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ids = _prompt_ids(og.Tokenizer(og.Model(str(tiny_llm))))
    feed: dict[str, np.ndarray] = {"input_ids": np.array([ids], np.int64)}
    for i in range(layers):
        for part in ("key", "value"):
            feed[f"past_key_values.{i}.{part}"] = np.zeros((1, kv_heads, 0, head), np.float32)
    names = [o.name for o in session.get_outputs()]
    total, tokens = len(ids), []
    for _ in range(4):
        feed["attention_mask"] = np.ones((1, total), np.int64)
        out = dict(zip(names, session.run(None, feed), strict=True))
        assert out["logits"].shape == (1, feed["input_ids"].shape[1], 49152)
        assert out["present.0.key"].shape == (1, kv_heads, total, head)
        tokens.append(int(out["logits"][0, -1].argmax()))
        feed["input_ids"] = np.array([[tokens[-1]]], np.int64)
        for i in range(layers):
            for part in ("key", "value"):
                feed[f"past_key_values.{i}.{part}"] = out[f"present.{i}.{part}"]
        total += 1
    assert tokens == _genai_greedy(tiny_llm, 4)


def test_same_seed_same_bytes_other_seed_other_model(tmp_path: Path) -> None:
    a = build_tiny_llm(tmp_path / "a", seed=3)
    b = build_tiny_llm(tmp_path / "b", seed=3)
    c = build_tiny_llm(tmp_path / "c", seed=4)
    for name in ("model.onnx", "model.onnx.data", "genai_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.onnx.data").read_bytes() != (c / "model.onnx.data").read_bytes()


def test_inline_weights_and_other_sizes_load_in_genai(tmp_path: Path) -> None:
    folder = build_tiny_llm(tmp_path / "inline", layers=3, hidden=96, heads=6, kv_heads=3,
                            external_data=False)
    assert not (folder / "model.onnx.data").exists()
    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["head_size"]) == (3, 96, 16)
    assert len(_genai_greedy(folder, 4)) == 4


def test_rejects_heads_that_do_not_divide(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heads"):
        build_tiny_llm(tmp_path, hidden=64, heads=5)
