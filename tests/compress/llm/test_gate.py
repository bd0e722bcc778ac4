"""The generation gate (compress/llm/gate.py) on the tiny decoder: a copy of the model agrees
1.0 / 0.0 / 1.0, a damaged one does not, per prompt too; its memory holds one model at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxship.compress.errors import InvalidModelError
from onnxship.compress.llm import gate

PROMPTS = [[1, 9690, 198, 2683, 359], [1, 4093, 198, 1780, 314, 260, 3575], [504, 3575, 282]]


def damaged(src: Path, dst: Path, noise: float) -> Path:
    """A copy whose lm_head weight (tied to the embedding) has Gaussian noise added."""
    shutil.copytree(src, dst)
    graph = onnx.load(dst / "model.onnx", load_external_data=False)
    tensor = next(t for t in graph.graph.initializer if t.name == "lm_head.MatMul.weight")
    info = {e.key: e.value for e in tensor.external_data}
    data = np.memmap(
        dst / info["location"], dtype=np.float32, mode="r+", offset=int(info["offset"]),
        shape=tuple(tensor.dims),
    )
    rng = np.random.default_rng(1)
    data += (noise * data.std() * rng.standard_normal(data.shape)).astype(np.float32)
    data.flush()
    del data
    return dst


def test_a_copy_agrees_fully(tiny_llm: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_llm, tmp_path / "copy")
    found = gate.generation_agreement(tiny_llm, tmp_path / "copy", PROMPTS)
    assert found.top1 == 1.0
    assert found.kl_mean < 1e-6
    assert found.token_agreement == 1.0
    assert found.identical == found.prompts == 3
    assert found.positions >= found.prompts
    assert [p["top1"] for p in found.per_prompt] == [1.0, 1.0, 1.0]
    assert [p["tokens"] for p in found.per_prompt] == [1.0, 1.0, 1.0]


def test_a_damaged_lm_head_agrees_less_and_more_noise_less_still(
    tiny_llm: Path, tmp_path: Path
) -> None:
    with gate.build_reference(tiny_llm, PROMPTS, tmp_path / "ref") as reference:
        assert len(reference.answers) == 3 and all(reference.answers)
        little = gate.compare(reference, damaged(tiny_llm, tmp_path / "little", 0.3))
        much = gate.compare(reference, damaged(tiny_llm, tmp_path / "much", 3.0))
    assert much.top1 < 1.0 and much.token_agreement < 1.0
    assert 0.0 < little.kl_mean < much.kl_mean
    assert much.top1 <= little.top1
    assert len(much.per_prompt) == 3
    assert min(p["top1"] for p in much.per_prompt) < 1.0
    assert all(0.0 <= p["tokens"] <= 1.0 and p["kl"] >= 0.0 for p in much.per_prompt)


def test_the_reference_scratch_file_is_the_answer_logits(tiny_llm: Path, tmp_path: Path) -> None:
    reference = gate.build_reference(tiny_llm, PROMPTS, tmp_path / "ref")
    positions = sum(len(a) for a in reference.answers)
    assert reference.logits.stat().st_size == positions * reference.vocab * 4
    reference.close()  # a workdir given by the caller is the caller's to remove
    assert reference.logits.exists()
    owned = gate.build_reference(tiny_llm, PROMPTS[:1])
    owned.close()
    assert not owned.workdir.exists()


def test_the_greedy_answer_stops_at_the_length_limit(tiny_llm: Path) -> None:
    decoder = gate._Decoder(tiny_llm)
    assert len(decoder.greedy(PROMPTS[0], 5)) <= 5


def test_a_folder_without_genai_config_is_refused(tiny_llm: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_llm, tmp_path / "bad")
    (tmp_path / "bad" / "genai_config.json").unlink()
    with pytest.raises(InvalidModelError, match=r"genai_config\.json"):
        gate.generation_agreement(tiny_llm, tmp_path / "bad", PROMPTS[:1])
