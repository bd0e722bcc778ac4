"""The decoder's graph with its logits cut to the rows read: the same numbers as the whole
graph's last row, one row of output instead of one per prompt token, and the graph as it is
when its tail or its data files are not what GenAI's builder writes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx

from onnxship.serve.config import ServeConfig
from onnxship.serve.llm.runtime import DecoderLayout, DecoderRuntime, last_rows_graph
from onnxship.serve.session import create_session


def runtime(folder: Path, cut: bool) -> DecoderRuntime:
    config = ServeConfig(model_path=folder, threads=1)
    graph = last_rows_graph(folder / "model.onnx", "logits") if cut else None
    assert graph is not None or not cut
    session = create_session(folder / "model.onnx", config, graph=graph)
    return DecoderRuntime(session, DecoderLayout.read(folder, session), 2, 128, last_rows=cut)


def mapped(path: Path) -> bool:
    """Whether this process maps the file (ORT memory-maps external data it loads from disk)."""
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(str(path.resolve())) for line in maps)


def test_the_cut_graph_maps_the_models_weights_rather_than_copying_them(
    tiny_llm: Path, tmp_path: Path
) -> None:
    # Its own copy of the folder, so that no other session in this process maps its data file.
    folder = tmp_path / "model"
    shutil.copytree(tiny_llm, folder)
    data = folder / "model.onnx.data"
    assert not mapped(data)
    cut = runtime(folder, True)
    # Handed over from memory, ORT copied the weights (2x the RSS at load on SmolLM2 int8).
    assert mapped(data)
    assert cut.prefill(0, [1, 9690, 198, 2683]).shape == (49152,)


def test_cut_logits_equal_the_whole_graphs_last_row(tiny_llm: Path) -> None:
    whole, cut = runtime(tiny_llm, False), runtime(tiny_llm, True)
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 28, 7018, 411]
    a, b = whole.prefill(0, prompt), cut.prefill(0, prompt)
    assert a.shape == b.shape == (49152,) and np.array_equal(a, b)
    # a later chunk and a decode step of two rows of different lengths
    a, b = whole.prefill(1, prompt[:5]), cut.prefill(1, prompt[:5])
    assert np.array_equal(a, b)
    a, b = whole.prefill(1, prompt[5:9], past=5), cut.prefill(1, prompt[5:9], past=5)
    assert np.array_equal(a, b)
    tokens, lengths = np.array([42, 7]), np.array([len(prompt), 9])
    assert np.array_equal(whole.decode(2, tokens, lengths), cut.decode(2, tokens, lengths))
    # what the cut graph computes: the asked rows only
    feed = {"input_ids": np.array([prompt]), "attention_mask": np.ones((1, len(prompt)), np.int64),
            "onnxship_last_rows": np.array([len(prompt) - 1])}  # fmt: skip
    for i in range(2):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, 2, 0, 16), np.float32)
    logits = cut.session.run(["logits"], feed)[0]
    assert logits.shape == (1, 49152)


def test_the_graph_stays_whole_when_its_tail_or_data_is_not_the_builders(
    tiny_llm: Path, tmp_path: Path
) -> None:
    # logits through a Cast: not the builder's tail
    folder = tmp_path / "cast"
    shutil.copytree(tiny_llm, folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    head = next(n for n in model.graph.node if "logits" in n.output)
    head.output[0] = "pre_logits"
    model.graph.node.append(onnx.helper.make_node("Identity", ["pre_logits"], ["logits"]))
    onnx.save(model, str(folder / "model.onnx"))
    assert last_rows_graph(folder / "model.onnx", "logits") is None
    # external data that points outside the folder (untrusted files): left to ORT to refuse
    folder = tmp_path / "escape"
    shutil.copytree(tiny_llm, folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../cast/model.onnx.data"
    onnx.save(model, str(folder / "model.onnx"))
    assert last_rows_graph(folder / "model.onnx", "logits") is None
    # a data file that is a link to a file outside the folder
    folder = tmp_path / "link"
    shutil.copytree(tiny_llm, folder)
    (folder / "model.onnx.data").unlink()
    os.symlink(tmp_path / "cast" / "model.onnx.data", folder / "model.onnx.data")
    assert last_rows_graph(folder / "model.onnx", "logits") is None
