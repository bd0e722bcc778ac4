"""examples/llm/ (`make demo-llm`): its specs are valid, and its builder writes what the story
needs: the same bytes every time, v2 the very weights of v1, v3 the same layers with shuffled
vocabulary rows. The whole demo (about 90 s) runs by hand: `make demo-llm`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper
from typer.testing import CliRunner

from onnxship.api import parse_model_deployment
from onnxship.cli.main import app

LLM = Path(__file__).resolve().parents[2] / "examples" / "llm"
SPECS = sorted(LLM.glob("*.yaml"))


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("llm_build_models", LLM / "build_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_llm_examples_validate() -> None:
    assert [p.stem for p in SPECS] == ["v1", "v2", "v3"]
    result = CliRunner().invoke(app, ["validate", *map(str, SPECS)])
    assert result.exit_code == 0, result.output
    for path in SPECS:
        md = parse_model_deployment(yaml.safe_load(path.read_text()))
        assert md.spec.rollout.analysis.min_output_agreement.metric == "tokens"
        assert md.spec.compression.quantize.bits == (8 if path.stem == "v1" else 4)


def _weights(folder: Path) -> dict[str, np.ndarray]:
    model = onnx.load(folder / "model.onnx")  # external data read from beside it
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_builder_writes_v1_v2_alike_and_v3_with_shuffled_vocabulary(tmp_path: Path) -> None:
    build = _builder().build
    try:
        made = build(tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(f"the demo borrows SmolLM2's tokenizer from ../shared: {exc}")
    data = made["v1"] / "model.onnx.data"
    first, mtime = data.read_bytes(), data.stat().st_mtime_ns
    build(tmp_path)
    assert data.read_bytes() == first and data.stat().st_mtime_ns == mtime  # not rewritten
    assert (made["v2"] / "model.onnx.data").read_bytes() == first
    v1, v3 = _weights(made["v1"]), _weights(made["v3"])
    differ = [name for name in v1 if not np.array_equal(v1[name], v3[name])]
    assert differ == ["lm_head.MatMul.weight"]
    a, b = v1[differ[0]], v3[differ[0]]  # [hidden, vocab]: the same columns, reordered
    order_a, order_b = np.lexsort(a[::-1]), np.lexsort(b[::-1])
    assert np.array_equal(a[:, order_a], b[:, order_b]) and not np.array_equal(a, b)
    # two levels per block of 32 inputs: 0 and the block's largest magnitude (int8/int4 exact)
    qkv = v1["model.layers.0.attn.qkv_proj.MatMul.weight"].reshape(2, 32, -1)
    for block in np.moveaxis(qkv, 2, 1).reshape(-1, 32):
        assert len(np.unique(block)) <= 2 and 0.0 in block
    assert len(made["prompts"].read_text().splitlines()) == 4
