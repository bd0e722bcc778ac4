"""Request metrics are counted in Python and written once per event-loop turn: same numbers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from onnxship.serve.config import ServeConfig
from onnxship.serve.dataplane import DataPlane
from onnxship.serve.metrics import LATENCY_BUCKETS, _observe_many


def samples(text: bytes, prefix: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith(prefix)
    }


def test_many_observations_at_once_equal_one_at_a_time() -> None:
    # On a bound, between bounds, under the first and past the last.
    values = [0.0, 0.001, 0.0010001, 0.005, 0.0049, 0.3, 10.0, 11.0, 0.001, 0.02]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d", "d", ["m"], buckets=LATENCY_BUCKETS, registry=one).labels("a")
    h2 = Histogram("d", "d", ["m"], buckets=LATENCY_BUCKETS, registry=many).labels("a")
    for v in values:
        h1.observe(v)
    _observe_many(h2, values)
    got_one = {k: v for k, v in samples(generate_latest(one), "d_").items() if "created" not in k}
    got_many = {k: v for k, v in samples(generate_latest(many), "d_").items() if "created" not in k}
    assert got_one == got_many
    assert samples(generate_latest(many), "d_")['d_count{m="a"}'] == len(values)


async def test_a_turns_requests_are_written_when_it_ends(tmp_path: Path) -> None:
    dp = DataPlane(ServeConfig(model_path=tmp_path / "unused.onnx", name="m", version="1"))
    codes = [200, 200, 400, 200, 503]
    outcomes = [dp.tracking() for _ in codes]
    for outcome in outcomes:
        outcome.__enter__()
    assert dp.in_flight == 5
    for outcome, code in zip(outcomes, codes, strict=True):
        outcome.code = code
        outcome.__exit__(None, None, None)
    before = samples(dp.metrics.exposition(), "onnxship_inference_requests_total")
    assert before == {}  # nothing written yet: this turn is not over
    await asyncio.sleep(0)
    text = dp.metrics.exposition()
    total = samples(text, "onnxship_inference_requests_total")
    assert total == {
        'onnxship_inference_requests_total{code="200",model="m",version="1"}': 3.0,
        'onnxship_inference_requests_total{code="400",model="m",version="1"}': 1.0,
        'onnxship_inference_requests_total{code="503",model="m",version="1"}': 1.0,
    }
    duration = 'onnxship_inference_request_duration_seconds_count{model="m",version="1"}'
    assert samples(text, "onnxship_inference_request_duration")[duration] == 3.0
    in_flight = samples(text, "onnxship_inference_in_flight")
    assert in_flight == {'onnxship_inference_in_flight{model="m",version="1"}': 0.0}

    # A request still running shows in the gauge after its turn; a scrape writes at once.
    with dp.tracking() as outcome:
        outcome.code = 200
        await asyncio.sleep(0)
        gauge = samples(dp.metrics.exposition(), "onnxship_inference_in_flight")
        assert list(gauge.values()) == [1.0]
    text = dp.metrics_text()
    assert samples(text, "onnxship_inference_requests_total")[
        'onnxship_inference_requests_total{code="200",model="m",version="1"}'
    ] == 4.0
    await dp.close()
