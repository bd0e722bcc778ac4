"""Choosing the next token from a row of logits: greedy, or temperature / top-k / top-p.

Pure: a request's own ``numpy.random.Generator`` (seeded when the request gives ``seed``)
makes a sampled answer reproducible whatever else the batch holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy, as onnxruntime-genai's do_sample=False
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def pick(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scaled.size:
        keep = np.argpartition(scaled, -params.top_k)[-params.top_k :]
    else:
        keep = np.arange(scaled.size)
    probs = np.exp(scaled[keep] - scaled[keep].max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(probs)[::-1]
        cumulative = np.cumsum(probs[order])
        # The smallest set of most likely tokens whose mass reaches top_p (at least one).
        n = int(np.searchsorted(cumulative, params.top_p)) + 1
        order = order[:n]
        keep, probs = keep[order], probs[order] / probs[order].sum()
    return int(keep[rng.choice(probs.size, p=probs)])
