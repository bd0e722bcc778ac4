"""The engine, the analysis and the router together: a bad canary is caught and rolled back.

The rollout engine runs in the simulated world of tests/plan (workloads are pre-started
servers); its traffic decisions go to a real router, and its verdicts come from the router's
real metrics through the builtin metrics source.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxship.api import Phase, Reason
from onnxship.plan.analysis import Result, evaluate
from onnxship.plan.rollout import step
from onnxship.plan.traffic import route_table
from onnxship.router.metrics_source import RouterMetricsSource
from tests.helpers import models
from tests.plan.sim import World, desired, make_spec
from tests.serve.server import Server, free_port, start

from .conftest import RunningRouter


async def sync(w: World, r: RunningRouter, urls: dict[str, str], pushed: list[Any]) -> None:
    """Settle the engine, then push its traffic split to the router when it changed."""
    w.settle()
    if w.traffic is not None and (not pushed or pushed[-1] != w.traffic):
        table = route_table(w.traffic, {(rev, ""): urls[rev] for rev, _ in w.traffic.weights})
        assert await r.put_routes(table) == 200
        pushed.append(w.traffic)


async def judge(w: World, source: RouterMetricsSource, send: Any) -> Result:
    """One analysis interval: scrape, let traffic flow, scrape, evaluate, hand to the engine."""
    request = step(w.spec, w.status, w.observed(), w.now).analysis
    assert request is not None
    if request.revision not in source.last:
        assert await source.measure(request) is None  # the first scrape opens the interval
    await send()
    m = await source.measure(request)
    assert m is not None
    verdict = evaluate(w.spec.rollout.analysis, m, w.now, request.mirroring)
    w.verdict = verdict
    return verdict.result


async def test_a_canary_that_starts_failing_is_rolled_back(backends, router) -> None:
    stable, canary = await backends("stable"), await backends("canary")
    urls = {"r1": stable.url, "r2": canary.url}
    r = await router()
    spec = make_spec([{"setWeight": 50}, {"pause": {}}], failureLimit=1, minRequests=10)
    w, pushed = World(spec, desired("r1")), []
    await sync(w, r, urls, pushed)
    w.desired = desired("r2")
    await sync(w, r, urls, pushed)
    assert w.weights() == {"r1": 50, "r2": 50} and w.status.phase == Phase.paused
    source = RouterMetricsSource(f"{r.url}/metrics", r.session, time.monotonic)

    async def send() -> None:
        for _ in range(40):
            await r.infer()

    assert await judge(w, source, send) == Result.passed
    w.advance(30)
    canary.fail = True  # the new version starts answering 500
    for _ in range(2):
        assert await judge(w, source, send) == Result.failed
        w.advance(30)
        await sync(w, r, urls, pushed)
    assert w.status.aborted and w.status.phase == Phase.degraded
    assert Reason.analysis_failed in w.reasons()
    assert w.weights() == {"r1": 100} and pushed[-1].weights == (("r1", 100),)
    results = [await r.infer() for _ in range(30)]
    assert {(code, who) for code, who, _ in results} == {(200, "stable")}


# ------------------------------------------------------------ with real `onnxship serve`

X = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)


def body(i: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": X[i % 64].tolist()}]
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two revisions of a model: r2's weights differ from r1's (a silently broken export)."""
    folder: Path = tmp_path_factory.mktemp("router-serve")
    servers: dict[str, Server] = {}
    try:
        for rev, seed in (("r1", 0), ("r2", 9)):
            path = models.save(models.mlp(seed=seed), folder / f"{rev}.onnx")
            servers[rev] = start(
                ["--model", str(path), "--name", "m", "--threads", "1"],
                free_port(),
                -1,
                folder / f"{rev}.log",
            )
        yield servers
    finally:
        for s in servers.values():
            s.terminate()


async def test_serve_backends_split_ten_ninety_within_one_point(served, router) -> None:
    r = await router()
    urls = {rev: s.url for rev, s in served.items()}
    doc = {"backends": [{"revision": "r1", "url": urls["r1"], "weight": 90},
                        {"revision": "r2", "url": urls["r2"], "weight": 10}]}  # fmt: skip
    assert await r.put_routes(doc) == 200
    sem = asyncio.Semaphore(16)
    reference: dict[str, list[float]] = {}
    async with r.session.post(f"{urls['r1']}/v2/models/m/infer", json=body(0)) as resp:
        reference["r1"] = (await resp.json())["outputs"][0]["data"]

    async def one(i: int) -> int:
        async with sem, r.session.post(f"{r.url}/v2/models/m/infer", json=body(i)) as resp:
            return resp.status

    codes = await asyncio.gather(*(one(i) for i in range(2000)))
    assert collections.Counter(codes) == {200: 2000}
    text = await r.metrics()
    r2 = float(text.split('revision="r2",role="primary"} ')[1].split()[0])
    assert abs(r2 / 2000 - 0.10) <= 0.01


async def test_serve_canary_with_different_outputs_fails_the_mirror_step(served, router) -> None:
    r = await router()
    urls = {rev: s.url for rev, s in served.items()}
    spec = make_spec(
        [{"mirror": {"percent": 50, "duration": "1m"}}, {"setWeight": 50}],
        minRequests=10,
        failureLimit=0,
        minOutputAgreement={"metric": "cosine", "min": 0.98},
    )
    w, pushed = World(spec, desired("r1")), []
    await sync(w, r, urls, pushed)
    w.desired = desired("r2")
    await sync(w, r, urls, pushed)
    assert w.traffic is not None and w.traffic.mirror_percent == 50
    source = RouterMetricsSource(f"{r.url}/metrics", r.session, time.monotonic)
    stable_answers = {}
    for i in range(64):
        async with r.session.post(f"{urls['r1']}/v2/models/m/infer", json=body(i)) as resp:
            stable_answers[i] = (await resp.json())["outputs"][0]["data"]
    user_answers: list[tuple[int, list[float]]] = []

    async def send() -> None:
        for i in range(60):
            async with r.session.post(f"{r.url}/v2/models/m/infer", json=body(i)) as resp:
                assert resp.status == 200
                user_answers.append((i % 64, (await resp.json())["outputs"][0]["data"]))
        await asyncio.sleep(0.5)  # let the last copies land

    assert await judge(w, source, send) == Result.failed
    assert w.verdict is not None and "agreement" in w.verdict.message
    assert w.verdict.measurements.comparisons >= 10
    await sync(w, r, urls, pushed)
    assert w.status.aborted and w.weights() == {"r1": 100}
    assert pushed[-1].mirror_percent == 0
    # users only ever got stable's answers
    assert all(np.allclose(a, stable_answers[i], atol=1e-5) for i, a in user_answers)


async def test_gateway_mode_reads_the_revisions_own_metrics(served, router) -> None:
    from aiohttp import ClientSession

    from onnxship.plan.analysis import AnalysisRequest
    from onnxship.router.metrics_source import ServeMetricsSource

    url = served["r2"].url
    async with ClientSession() as session:
        source = ServeMetricsSource(
            lambda rev: [f"{served[rev].url}/metrics"], session, time.monotonic
        )
        request = AnalysisRequest("r2", mirroring=False, interval_seconds=30)
        assert await source.measure(request) is None
        for i in range(25):
            async with session.post(f"{url}/v2/models/m/infer", json=body(i)) as resp:
                assert resp.status == 200
        async with session.post(f"{url}/v2/models/m/infer", json={"inputs": []}) as resp:
            assert resp.status == 400
        m = await source.measure(request)
    assert m is not None and m.requests == 26 and m.errors == 0
    assert m.latency_p99_ms is not None and m.latency_p99_ms > 0
