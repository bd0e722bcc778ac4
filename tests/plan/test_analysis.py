"""The analysis verdict: table tests."""

from __future__ import annotations

from typing import Any

import pytest

from onnxship.api import Analysis
from onnxship.plan.analysis import GenerationFigures, Measurements, Result, evaluate

from .sim import T0

GATED = {"maxLatencyP99Ms": 100, "minOutputAgreement": {"metric": "cosine", "min": 0.98}}


@pytest.mark.parametrize(
    ("spec", "m", "mirroring", "result", "says"),
    [
        ({}, {"requests": 5}, False, Result.inconclusive, "fewer than 20"),
        ({}, {"requests": 5, "errors": 5}, False, Result.inconclusive, "5 canary requests"),
        ({}, {"requests": 100, "errors": 1}, False, Result.passed, "error rate 1.00%"),
        ({}, {"requests": 100, "errors": 2}, False, Result.failed, "error rate 2.00% above"),
        (GATED, {"requests": 100, "latency_p99_ms": 150.0}, False, Result.failed, "p99 latency"),
        (GATED, {"requests": 100, "latency_p99_ms": 50.0}, False, Result.passed, "p99 50.0"),
        (
            GATED,
            {"requests": 100, "comparisons": 100, "cosine": 0.9},
            True,
            Result.failed,
            "agreement (cosine) 0.9000 below 0.98",
        ),
        (
            GATED,
            {"requests": 100, "comparisons": 100, "cosine": 0.99},
            True,
            Result.passed,
            "cosine 0.9900",
        ),
        (GATED, {"requests": 100, "comparisons": 3}, True, Result.inconclusive, "3 mirrored"),
        (GATED, {"requests": 100, "comparisons": 3}, False, Result.passed, "100 requests"),
        (  # the GPU pool fails while the CPU pool dilutes the total to 1%
            {},
            {"requests": 1000, "errors": 10, "environments": (("cpu", 970, 0), ("gpu", 30, 10))},
            False,
            Result.failed,
            "environment gpu: error rate 33.33% above 1.00%",
        ),
        (  # a pool with too few requests to judge is not judged on its own
            {},
            {"requests": 1000, "errors": 10, "environments": (("cpu", 995, 5), ("gpu", 5, 5))},
            False,
            Result.passed,
            "error rate 1.00%",
        ),
        (
            {"minOutputAgreement": {"metric": "top1", "min": 0.95}},
            {"requests": 100, "comparisons": 100, "cosine": 0.999, "top1": 0.9},
            True,
            Result.failed,
            "top1",
        ),
    ],
)
def test_verdicts(
    spec: dict[str, Any], m: dict[str, Any], mirroring: bool, result: Result, says: str
) -> None:
    v = evaluate(Analysis.model_validate(spec), Measurements("r2", **m), T0, mirroring)
    assert v.result == result
    assert says in v.message
    assert v.revision == "r2" and v.measured_at == T0


# ------------------------------------------------------------------ causal LMs

LLM = {
    "maxTimeToFirstTokenP99Ms": 500,
    "maxInterTokenLatencyP99Ms": 80,
    "minOutputAgreement": {"metric": "tokens", "min": 0.9},
}
FAST = {"requests": 100, "generations": 100, "ttft_p99_ms": 300.0, "itl_p99_ms": 40.0}
AGREEING = {"token_comparisons": 50, "token_agreement": 0.97}


def pools(*figures: tuple[str, int, float, float]) -> tuple[GenerationFigures, ...]:
    return tuple(GenerationFigures(e, n, ttft, itl) for e, n, ttft, itl in figures)


@pytest.mark.parametrize(
    ("m", "mirroring", "serving", "result", "says"),
    [
        (  # a fast canary that agrees passes, and says what it measured
            {**FAST, **AGREEING},
            True,
            True,
            Result.passed,
            "time to first token p99 300.0 ms, inter-token p99 40.0 ms, token agreement 0.9700 "
            "over 50 generations",
        ),
        (
            {**FAST, "ttft_p99_ms": 900.0},
            False,
            True,
            Result.failed,
            "p99 time to first token 900.0 ms above 500 ms",
        ),
        (
            {**FAST, "itl_p99_ms": 120.0},
            False,
            True,
            Result.failed,
            "p99 inter-token latency 120.0 ms above 80 ms",
        ),
        (  # disagreeing tokens fail whatever the speed
            {**FAST, "token_comparisons": 50, "token_agreement": 0.31},
            True,
            True,
            Result.failed,
            "output agreement (tokens) 0.3100 below 0.9",
        ),
        (  # a good cosine says nothing about tokens: the gate reads token agreement
            {**FAST, "comparisons": 50, "cosine": 1.0, "token_comparisons": 5},
            True,
            True,
            Result.inconclusive,
            "5 mirrored generations compared in the interval, fewer than 20",
        ),
        (  # a slow first token on too few streams is not judged...
            {"requests": 100, "generations": 5, "ttft_p99_ms": 9000.0, **AGREEING},
            True,
            True,
            Result.inconclusive,
            "5 streamed canary answers reached a first token",
        ),
        (  # ...and never passes: requests answered whole are not timed
            {"requests": 100, **AGREEING},
            True,
            True,
            Result.inconclusive,
            "to judge the p99 time to first token and p99 inter-token latency",
        ),
        (  # mirror only (weight 0): the canary answers no user, so no stream to time
            {"requests": 100, **AGREEING},
            True,
            False,
            Result.passed,
            "token agreement 0.9700",
        ),
        (  # one slow pool fails the revision, even when the fast one dilutes the total
            {
                **FAST,
                "generation_environments": pools(("cpu", 80, 250.0, 30.0), ("gpu", 20, 1500, 30.0)),
            },
            False,
            True,
            Result.failed,
            "environment gpu: p99 time to first token 1500.0 ms above 500 ms",
        ),
        (  # a pool with too few streams to judge is not judged on its own
            {
                **FAST,
                "generation_environments": pools(("cpu", 95, 250.0, 30.0), ("gpu", 5, 1500, 30.0)),
            },
            False,
            True,
            Result.passed,
            "time to first token p99 300.0 ms",
        ),
    ],
)
def test_llm_verdicts(
    m: dict[str, Any], mirroring: bool, serving: bool, result: Result, says: str
) -> None:
    v = evaluate(Analysis.model_validate(LLM), Measurements("r2", **m), T0, mirroring, serving)
    assert v.result == result, v.message
    assert says in v.message


def test_token_limits_alone_leave_encoders_alone() -> None:
    """Without the LLM fields, an encoder canary is judged as before (no streams needed)."""
    v = evaluate(Analysis(), Measurements("r2", requests=100), T0, mirroring=False, serving=True)
    assert v.result == Result.passed
