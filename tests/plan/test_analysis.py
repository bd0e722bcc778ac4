"""The analysis verdict: table tests."""

from __future__ import annotations

from typing import Any

import pytest

from onnxship.api import Analysis
from onnxship.plan.analysis import Measurements, Result, evaluate

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
