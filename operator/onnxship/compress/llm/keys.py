"""The settings a causal LM is compressed with, and the cache key of its artifact.

Apart from the pipeline because the operator computes the same key for its store lookup of a
pinned model (controller/artifacts.py) and must not import onnx, onnxruntime or numpy to do
so (issue 21): this module needs only the API types and package metadata.
"""

from __future__ import annotations

from onnxship.api import AccuracyGate, Compression, ModelKind, Prune, Quantize, QuantizeMode
from onnxship.plan.revision import cache_key

from ..errors import InvalidSettingsError
from ..versions import tool_versions

# The gate of a causal LM when the spec kept the encoder's (cosine means nothing for logits
# over a vocabulary): the compressed model's next token agrees with the original's on at
# least 90% of the positions of the original's own answers.
LLM_GATE = AccuracyGate(metric="top1", min=0.90)
KL_MAX = 0.10  # metric kl without a max
MODES = (QuantizeMode.weight_only, QuantizeMode.auto, QuantizeMode.none)


def llm_settings(compression: Compression) -> tuple[Compression, list[str]]:
    """The settings a causal LM is compressed with, and notes on what was changed and why.

    Raises InvalidSettingsError naming the field when a setting cannot apply to a causal LM.
    """
    notes: list[str] = []
    q = compression.quantize
    if q.mode == QuantizeMode.auto:
        notes.append(
            "quantize auto: for a causal LM, weight-only candidates cheapest first; the first "
            "that passes the gate is published"
        )
    elif q.mode not in MODES:
        raise InvalidSettingsError(
            f"spec.compression.quantize.mode (--quantize) {q.mode} does not apply to a causal "
            f"LM; use {', '.join(m.value for m in MODES)}"
        )
    if compression.prune.sparsity > 0:
        raise InvalidSettingsError(
            "spec.compression.prune.sparsity (--sparsity): pruning does not apply to a causal "
            "LM; set it to 0 and use quantize.mode weightOnly or auto"
        )
    if compression.optimize != "none":
        notes.append(
            f"optimize: {compression.optimize} not applied; ONNX Runtime (GenAI) optimizes the "
            "graph when it loads it"
        )
    g = compression.accuracy_gate
    if g.metric == "cosine":
        if g.model_copy(update={"outputs": []}) != AccuracyGate():
            raise InvalidSettingsError(
                "spec.compression.accuracyGate.metric (--gate-metric) cosine does not apply to "
                "a causal LM; use top1 (min), kl (max) or tokens (min)"
            )
        g = LLM_GATE
        notes.append(
            f"accuracy gate: cosine (the encoder default) means nothing for a causal LM; used "
            f"teacher-forced top-1 >= {LLM_GATE.min}"
        )
    elif g.metric == "kl" and g.max is None:
        g = g.model_copy(update={"max": KL_MAX})
        notes.append(f"accuracy gate: kl without a max; used mean KL <= {KL_MAX}")
    return (
        Compression(optimize="none", prune=Prune(), quantize=q, accuracy_gate=g),
        notes,
    )


def llm_cache_key(
    digest: str, compression: Compression, execution_provider: str, prompts_sha256: str = ""
) -> str:
    """cache_key over the effective settings (``llm_settings``; auto: the gate too). The
    prompts count only where they change the bytes: auto (the gate picks) and gptq
    (calibration); ``prompts_sha256`` is empty for the built-in prompts."""
    tools = {**tool_versions(execution_provider), "kind": ModelKind.causal_lm.value}
    prompts = prompts_sha256 if prompts_in_key(compression.quantize) else ""
    return cache_key(digest, compression, tools, samples_sha256=prompts)


def prompts_in_key(q: Quantize) -> bool:
    """Whether the prompts change the published bytes: auto (the gate picks the variant) and
    gptq (they calibrate it)."""
    return q.mode == QuantizeMode.auto or q.algorithm == "gptq"
