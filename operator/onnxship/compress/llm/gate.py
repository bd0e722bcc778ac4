"""The generation gate: how closely a compressed causal LM follows the original on prompts.

Three figures, per prompt and over all (the method of ../shared/models/smollm2/measure.py):
- teacher-forced top-1: the original's own greedy continuation of each prompt is fed to both
  models in one forward pass (empty past, all-ones mask); at each position that predicts an
  answer token, do both argmaxes agree? Mean over positions (positions weigh equally);
- mean KL(p_original || p_candidate) per position, from float64 log-softmax of the logits;
- free-run token agreement: the candidate's own greedy answer against the original's, position
  by position over the original's length.
Greedy answers stop at EOS (kept) or after ``max_new`` tokens.

Memory: one model at a time. The original's answers and its log-probabilities at the answer
positions are computed first; the log-probabilities go to a scratch file (float32), and each
candidate then reads them back one prompt at a time. Never two models, never all logits in
memory, so a large model's gate stays within about one model's size.
Both passes run plain ONNX Runtime (CPU); greedy decoding is its KV-cache loop.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.compress.errors import InvalidModelError

MAX_NEW = 48


@dataclass
class GenerationAgreement:
    top1: float
    kl_mean: float
    token_agreement: float
    identical: int
    prompts: int
    positions: int
    per_prompt: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "kl_mean": self.kl_mean,
            "token_agreement": self.token_agreement,
            "identical": self.identical,
            "prompts": self.prompts,
            "positions": self.positions,
        }


@dataclass
class Reference:
    """The original's greedy answers and, on disk, its logits at their positions."""

    prompts: list[list[int]]
    answers: list[list[int]]
    logits: Path  # float32 [sum of answer lengths, vocab], prompt after prompt
    vocab: int
    workdir: Path
    owned: bool = False

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_reference(
    original_dir: Path,
    prompts: Sequence[Sequence[int]],
    workdir: Path | None = None,
    max_new: int = MAX_NEW,
) -> Reference:
    """Run the original once: greedy answers, and their logits spilled to ``workdir``."""
    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="onnxship-gate-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = _Decoder(original_dir, prepack=False)
    answers: list[list[int]] = []
    path = work / "reference-logits.f32"
    with path.open("wb") as out:
        for ids in prompts:
            answer = model.greedy(list(ids), max_new)
            answers.append(answer)
            model.answer_logits(list(ids), answer).tofile(out)  # float32 logits as they came
    vocab = model.vocab
    del model
    return Reference([list(p) for p in prompts], answers, path, vocab, work, owned)


def compare(
    reference: Reference, candidate_dir: Path, max_new: int = MAX_NEW
) -> GenerationAgreement:
    """The three figures of ``candidate_dir`` against a reference built from the original."""
    model = _Decoder(candidate_dir)
    if model.vocab != reference.vocab:
        raise InvalidModelError(
            f"{candidate_dir}: logits have {model.vocab} entries, the original {reference.vocab}"
        )
    top1 = positions = same = total = identical = 0
    kl_sum = 0.0
    per_prompt: list[dict[str, float]] = []
    with reference.logits.open("rb") as f:
        for ids, answer in zip(reference.prompts, reference.answers, strict=True):
            n = len(answer)
            ref = np.fromfile(f, dtype=np.float32, count=n * reference.vocab)
            ref = _log_softmax(ref.reshape(n, reference.vocab))
            cand = _log_softmax(model.answer_logits(ids, answer))
            agree = ref.argmax(-1) == cand.argmax(-1)
            kls = (np.exp(ref) * (ref - cand)).sum(-1)
            own = model.greedy(ids, max_new)
            match = sum(a == b for a, b in zip(answer, own, strict=False))
            top1 += int(agree.sum())
            positions += n
            kl_sum += float(kls.sum())
            same += match
            total += n
            identical += own == answer
            per_prompt.append(
                {
                    "top1": float(agree.mean()) if n else 1.0,
                    "kl": float(kls.mean()) if n else 0.0,
                    "tokens": match / n if n else 1.0,
                    "identical": float(own == answer),
                }
            )
    del model
    return GenerationAgreement(
        top1=top1 / positions if positions else 1.0,
        kl_mean=max(0.0, kl_sum / positions) if positions else 0.0,
        token_agreement=same / total if total else 1.0,
        identical=identical,
        prompts=len(reference.prompts),
        positions=positions,
        per_prompt=per_prompt,
    )


def generation_agreement(
    original_dir: Path, candidate_dir: Path, prompts: Sequence[Sequence[int]]
) -> GenerationAgreement:
    """Build the reference from the original and compare one candidate (for several
    candidates, build the reference once and call ``compare`` for each)."""
    with build_reference(original_dir, prompts) as reference:
        return compare(reference, candidate_dir)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _gather_without_transpose(graph: Path) -> bytes | None:
    """The graph with an embedding read through a Transpose of the tied lm_head weight (the
    GenAI builder's fp32 layout) read by a Gather on the weight's axis 1 instead, then the rows
    transposed: the same numbers, but ONNX Runtime no longer folds the Transpose into a second,
    transposed copy of the whole embedding (0.21x SmolLM2's size). None when the pattern is
    absent."""
    import onnx

    model = onnx.load_model(str(graph), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    changed = False
    for node in list(model.graph.node):
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if node.op_type != "Transpose" or node.input[0] not in inits or perm != [1, 0]:
            continue
        users = readers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Gather" or users[0].input[0] != node.output[0]:
            continue
        gather = users[0]
        if any(a.name == "axis" and a.i != 0 for a in gather.attribute):
            continue
        columns = gather.output[0] + "/columns"
        new_gather = onnx.helper.make_node(
            "Gather", [node.input[0], gather.input[1]], [columns], name=gather.name, axis=1
        )
        rows = onnx.helper.make_node(
            "Transpose", [columns], list(gather.output), name=node.name, perm=[1, 2, 0]
        )
        at = list(model.graph.node).index(gather)
        model.graph.node.remove(gather)
        model.graph.node.insert(at, rows)
        model.graph.node.insert(at, new_gather)
        model.graph.node.remove(node)
        changed = True
    return model.SerializeToString() if changed else None


class _Decoder:
    """A GenAI folder's decoder graph in plain ONNX Runtime: forward passes and greedy decoding."""

    def __init__(self, folder: Path, prepack: bool = True) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        try:
            config = json.loads((folder / "genai_config.json").read_text())
            decoder = config["model"]["decoder"]
            filename = decoder["filename"]
            eos = config["model"].get("eos_token_id", [])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidModelError(f"{folder}/genai_config.json: unreadable ({exc})") from None
        graph = (folder / filename).resolve()
        if not graph.is_relative_to(folder.resolve()) or not graph.is_file():
            raise InvalidModelError(
                f"{folder}/genai_config.json names {filename!r}, not a file in the folder"
            )
        self.eos = set(eos if isinstance(eos, list) else [eos])
        options = ort.SessionOptions()
        if not prepack:
            # ORT keeps a packed copy of each float MatMul weight beside the one it maps from
            # the data file: 1.45x an fp32 model's size. The original runs without it.
            options.add_session_config_entry("session.disable_prepacking", "1")
        model: str | bytes = str(graph)
        rewritten = _gather_without_transpose(graph)
        if rewritten is not None:
            model = rewritten
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(graph.parent)
            )
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.past: list[tuple[str, np.dtype, int, int]] = []
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values"):
                dtype = np.dtype(np.float16 if "float16" in i.type else np.float32)
                heads, size = i.shape[1], i.shape[3]
                heads = heads if isinstance(heads, int) else decoder.get("num_key_value_heads")
                size = size if isinstance(size, int) else decoder.get("head_size")
                if not isinstance(heads, int) or not isinstance(size, int):
                    raise InvalidModelError(
                        f"{folder}/genai_config.json: decoder.num_key_value_heads and head_size "
                        f"are needed to feed {i.name}"
                    )
                self.past.append((i.name, dtype, heads, size))
        names = [o.name for o in self.session.get_outputs()]
        self.presents = [n.replace("past_key_values", "present") for n, *_ in self.past]
        missing = [n for n in ["logits", *self.presents] if n not in names]
        if missing:
            raise InvalidModelError(f"{graph.name}: no output {missing[0]!r}: not a decoder LLM")
        out = self.session.get_outputs()[names.index("logits")]
        self.vocab = int(out.shape[-1]) if isinstance(out.shape[-1], int) else 0
        self.inputs = {i.name for i in self.session.get_inputs()}

    def _feeds(
        self, ids: list[int], mask_len: int, past: list[np.ndarray] | None
    ) -> dict[str, Any]:
        feeds: dict[str, Any] = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, mask_len), dtype=np.int64),
        }
        if "position_ids" in self.inputs:
            start = mask_len - len(ids)
            feeds["position_ids"] = np.arange(start, mask_len, dtype=np.int64)[None]
        for k, (name, dtype, heads, size) in enumerate(self.past):
            feeds[name] = past[k] if past is not None else np.zeros((1, heads, 0, size), dtype)
        return feeds

    def answer_logits(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        """Logits [len(answer), vocab] at the positions that predict ``answer``'s tokens."""
        seq = prompt + answer
        logits = self.session.run(["logits"], self._feeds(seq, len(seq), None))[0][0]
        if not self.vocab:
            self.vocab = int(logits.shape[-1])
        start = len(prompt) - 1
        return np.array(logits[start : start + len(answer)], dtype=np.float32)

    def greedy(self, prompt: list[int], max_new: int) -> list[int]:
        outputs = ["logits", *self.presents]
        result = self.session.run(outputs, self._feeds(prompt, len(prompt), None))
        answer: list[int] = []
        length = len(prompt)
        while True:
            token = int(np.argmax(result[0][0, -1]))
            answer.append(token)
            if token in self.eos or len(answer) >= max_new:
                return answer
            length += 1
            result = self.session.run(outputs, self._feeds([token], length, result[1:]))
