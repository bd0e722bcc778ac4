"""Choosing the next token: greedy is argmax; top-k and top-p keep only the tokens they name;
a seed makes a sampled choice repeatable."""

from __future__ import annotations

import numpy as np

from onnxship.serve.llm.sampling import SamplingParams, pick

LOGITS = np.log(np.array([0.05, 0.5, 0.3, 0.1, 0.05], np.float32))


def draws(params: SamplingParams, n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([pick(LOGITS, params, rng) for _ in range(n)])


def test_greedy_is_argmax_whatever_the_rng() -> None:
    assert set(draws(SamplingParams(temperature=0.0), 50)) == {1}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1), 50)) == {1}


def test_top_k_and_top_p_keep_only_the_likeliest() -> None:
    assert set(draws(SamplingParams(temperature=1.0, top_k=2))) == {1, 2}
    # 0.5 + 0.3 reaches top_p 0.75: the nucleus is tokens 1 and 2
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.75))) == {1, 2}
    full = draws(SamplingParams(temperature=1.0))
    assert set(full) == {0, 1, 2, 3, 4}
    assert abs((full == 1).mean() - 0.5) < 0.05  # temperature 1 samples the model's own odds


def test_low_temperature_sharpens_and_a_seed_repeats() -> None:
    cold = draws(SamplingParams(temperature=0.2))
    assert (cold == 1).mean() > 0.9
    params = SamplingParams(temperature=1.0, seed=3)
    assert list(draws(params, 20, seed=3)) == list(draws(params, 20, seed=3))
