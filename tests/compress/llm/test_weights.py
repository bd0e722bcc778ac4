"""Weight-only quantization of a decoder LLM (compress/llm/weights.py) on the tiny decoder:
every algorithm writes a folder that ONNX Runtime GenAI and plain ONNX Runtime load and run,
the embedding options do what they say, unsafe external data is refused, and the memory of the
step does not grow with the model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import pytest

from onnxship.api import Quantize
from onnxship.compress.errors import InvalidModelError, InvalidSettingsError
from onnxship.compress.llm import gate
from onnxship.compress.llm.weights import copy_companions, llm_candidates, quantize_weight_only
from tests.helpers.tiny_llm import build_tiny_llm

ROOT = Path(__file__).resolve().parents[3]


CALIBRATION = [[1, 9690, 198, 2683, 359], [1, 4093, 198, 1780, 314, 260]]


def quantized(src: Path, dst: Path, **settings: object) -> Path:
    q = Quantize(mode="weightOnly", **settings)  # type: ignore[arg-type]
    quantize_weight_only(src / "model.onnx", dst, q, calibration=CALIBRATION)
    copy_companions(src, dst)
    return dst


def genai_greedy(folder: Path, tokens: int = 8) -> list[int]:
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = tok.encode("Once upon a time")
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize(
    "settings",
    [
        {"algorithm": "rtn", "symmetric": True},
        {"algorithm": "rtn", "symmetric": False, "block_size": 16},
        {"algorithm": "kquant"},
        {"algorithm": "kquantMixed"},
        {"algorithm": "hqq", "accuracy_level": 0},
        {"algorithm": "rtn", "bits": 8},
        {"algorithm": "gptq", "symmetric": False},
    ],
    ids=["rtn-sym", "rtn-asym-b16", "kquant", "kquantMixed", "hqq", "int8", "gptq"],
)
def test_each_algorithm_writes_a_model_genai_and_plain_ort_run(
    tiny_llm: Path, tmp_path: Path, settings: dict[str, object]
) -> None:
    out = quantized(tiny_llm, tmp_path / "q", **settings)
    graph = onnx.load(out / "model.onnx", load_external_data=False)
    inits = {t.name for t in graph.graph.initializer}
    nodes = graph.graph.node
    assert sum(n.op_type == "MatMulNBits" for n in nodes) == 2 * 5 + 1  # 2 layers + lm_head
    assert not [n.name for n in nodes if n.op_type == "MatMul" and n.input[1] in inits]
    assert not [t for t in inits if t.endswith("MatMul.weight")], "no float weight left"
    assert folder_bytes(out) < folder_bytes(tiny_llm)
    answer = genai_greedy(out)
    assert len(answer) == 8
    # plain ONNX Runtime runs the same graph (prefill, then a KV-cache step)
    decoder = gate._Decoder(out)
    assert len(decoder.greedy([1, 9690, 198, 2683], 4)) == 4
    assert isinstance(ort.InferenceSession(str(out / "model.onnx")), ort.InferenceSession)


def test_int8_follows_the_original_more_closely_than_int4(tiny_llm: Path, tmp_path: Path) -> None:
    # random weights give near-ties everywhere: only the order of the figures is asserted
    prompts = [[1, 9690, 198, 2683, 359], [1, 4093, 198, 1780, 314, 260]]
    with gate.build_reference(tiny_llm, prompts, tmp_path / "ref") as reference:
        eight = gate.compare(reference, quantized(tiny_llm, tmp_path / "q8", bits=8))
        four = gate.compare(reference, quantized(tiny_llm, tmp_path / "q4", algorithm="rtn"))
    assert four.kl_mean > eight.kl_mean > 0.0
    assert eight.top1 >= four.top1


def test_embedding_options(tiny_llm: Path, tmp_path: Path) -> None:
    sizes = {}
    for embedding in ("keep", "int8", "int4"):
        out = quantized(tiny_llm, tmp_path / embedding, embedding=embedding)
        graph = onnx.load(out / "model.onnx", load_external_data=False)
        ops = [n.op_type for n in graph.graph.node]
        if embedding == "keep":
            assert "Gather" in ops and "GatherBlockQuantized" not in ops
            assert "lm_head.MatMul.weight" in {t.name for t in graph.graph.initializer}
        else:
            gbq = next(n for n in graph.graph.node if n.op_type == "GatherBlockQuantized")
            bits = next(a.i for a in gbq.attribute if a.name == "bits")
            assert bits == int(embedding[3:])
            # one quantized tensor serves the lm_head MatMulNBits and the embedding lookup
            lm_head = next(n for n in graph.graph.node if n.name.startswith("/lm_head"))
            reshape = next(n for n in graph.graph.node if n.output[0] == gbq.input[0])
            assert reshape.input[0] == lm_head.input[1]
        sizes[embedding] = folder_bytes(out)
        assert len(genai_greedy(out, 4)) == 4
    assert sizes["int4"] < sizes["int8"] < sizes["keep"]


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    src = build_tiny_llm(tmp_path / "src")
    outside = tmp_path / "secret.bin"
    shutil.copyfile(src / "model.onnx.data", outside)
    graph = onnx.load(src / "model.onnx", load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(graph, src / "model.onnx")
    with pytest.raises(InvalidModelError, match=r"\.\./secret\.bin.*inside the model's folder"):
        quantize_weight_only(src / "model.onnx", tmp_path / "out", Quantize(mode="weightOnly"))
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_gptq_without_prompts_is_refused(tiny_llm: Path, tmp_path: Path) -> None:
    q = Quantize(mode="weightOnly", algorithm="gptq")
    with pytest.raises(InvalidSettingsError, match="gptq calibrates on prompts"):
        quantize_weight_only(tiny_llm / "model.onnx", tmp_path / "out", q)


def test_a_model_without_matmul_weights_is_refused(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu" / "model.onnx"
    path.parent.mkdir()
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(InvalidSettingsError, match="no MatMul with a constant float weight"):
        quantize_weight_only(path, tmp_path / "out", Quantize(mode="weightOnly"))


def test_candidates_each_run(tiny_llm: Path, tmp_path: Path) -> None:
    names = [name for name, _ in llm_candidates()]
    assert len(names) == len(set(names)) >= 2
    for name, q in llm_candidates():
        assert len(genai_greedy(quantized(tiny_llm, tmp_path / name, **_fields(q)), 2)) == 2
    assert llm_candidates()[-1][1].bits == 8  # the safest, largest, last


def _fields(q: Quantize) -> dict[str, object]:
    return q.model_dump(include={"bits", "block_size", "symmetric", "accuracy_level",
                                 "algorithm", "embedding"})


PEAK = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from onnxship.api import Quantize
    import onnxruntime
    from onnxruntime.quantization.neural_compressor import weight_only
    from onnxship.compress.llm import weights
    if sys.argv[1] == "quantize":
        q = Quantize(mode="weightOnly", **json.loads(sys.argv[4]))
        weights.quantize_weight_only(Path(sys.argv[2]), Path(sys.argv[3]), q)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def peak_rss(*args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("algorithm", ["hqq", pytest.param("kquant", marks=pytest.mark.slow)])
def test_peak_memory_of_quantization_stays_within_the_model_size(
    tmp_path: Path, algorithm: str
) -> None:
    # ~27 MB of weights, mostly the tied embedding: large against the slices read at a time
    src = build_tiny_llm(tmp_path / "src", layers=3, hidden=128, heads=4, kv_heads=2)
    size = (src / "model.onnx.data").stat().st_size
    assert size > 20e6
    baseline = peak_rss("baseline")  # the interpreter with numpy, onnx and onnxruntime loaded
    peak = peak_rss("quantize", str(src / "model.onnx"), str(tmp_path / "out"),
                    json.dumps({"algorithm": algorithm, "embedding": "int8"}))
    assert peak - baseline <= 1.0 * size, (peak, baseline, size)
    assert (tmp_path / "out" / "model.onnx").exists()


def test_same_settings_give_the_same_bytes(tiny_llm: Path, tmp_path: Path) -> None:
    a = quantized(tiny_llm, tmp_path / "a", algorithm="hqq")
    b = quantized(tiny_llm, tmp_path / "b", algorithm="hqq")
    for name in ("model.onnx", "model.onnx.data"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert json.loads((a / "genai_config.json").read_text())["model"]["decoder"]["filename"] == (
        "model.onnx"
    )
    assert np.all(np.isfinite(gate._Decoder(a).answer_logits([1, 2, 3], [4, 5])))


def test_an_untied_embedding_table_is_quantized_on_its_own(tmp_path: Path) -> None:
    src = build_tiny_llm(tmp_path / "src")
    model = onnx.load(src / "model.onnx")  # 16 MB: fine in memory for a test
    lm_head = next(t for t in model.graph.initializer if t.name == "lm_head.MatMul.weight")
    table = onnx.numpy_helper.to_array(lm_head).T.copy()
    model.graph.initializer.append(onnx.numpy_helper.from_array(table, "embed_tokens.weight"))
    transpose = next(n for n in model.graph.node if n.op_type == "Transpose")
    gather = next(n for n in model.graph.node if transpose.output[0] in n.input[:1])
    gather.input[0] = "embed_tokens.weight"
    model.graph.node.remove(transpose)
    (src / "model.onnx.data").unlink()
    onnx.save(model, src / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data")  # fmt: skip
    before = genai_greedy(src, 6)

    out = quantized(src, tmp_path / "q", bits=8, embedding="int8")
    graph = onnx.load(out / "model.onnx", load_external_data=False)
    gbq = next(n for n in graph.graph.node if n.op_type == "GatherBlockQuantized")
    assert gbq.input[0] == "embed_tokens.weight_Q8"  # read directly, no Reshape
    assert not [t.name for t in graph.graph.initializer if t.name == "embed_tokens.weight"]
    assert folder_bytes(out) < folder_bytes(src) / 2  # both tables in 8 bits
    after = genai_greedy(out, 6)
    assert len(after) == 6 and after[:1] == before[:1]
