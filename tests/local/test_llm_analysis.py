"""`onnxship up`'s analysis of an LLM canary, on a real router streaming real server-sent events.

Language-model stand-ins (tests/router/sse_backend.py) answer behind `onnxship route`; the
local shell's ``RouterAnalysis`` scrapes the router over an interval and judges the canary as
`onnxship up` does: a canary whose greedy answers say something else fails on token
agreement in its mirror step, a slow one on its time to first token once it takes traffic,
and a good one passes. What the verdict names is what the rollback reason will say.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from onnxship.api import Analysis
from onnxship.local.analysis import RouterAnalysis
from onnxship.local.loadgen import LoadGenerator, chat_url
from onnxship.plan.analysis import AnalysisRequest, Result, Verdict
from tests.router.conftest import router, sse_backends  # noqa: F401  (fixture re-export)
from tests.router.test_streaming import samples

ANALYSIS = Analysis.model_validate(
    {
        "minRequests": 10,
        "maxTimeToFirstTokenP99Ms": 200,
        "maxInterTokenLatencyP99Ms": 100,
        "minOutputAgreement": {"metric": "tokens", "min": 0.9},
    }
)
GREEDY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "temperature": 0,
    "max_tokens": 5,
}
INTERVAL = 0.5


async def users(r: Any, n: int = 12, headers: dict[str, str] | None = None) -> None:
    """``n`` users streaming a greedy chat answer at once, each read to its end."""

    async def one() -> None:
        url = f"{r.url}/v1/chat/completions"
        async with r.session.post(url, json=GREEDY, headers=headers or {}) as resp:
            assert resp.status == 200
            assert b"data: [DONE]" in await resp.read()

    await asyncio.gather(*(one() for _ in range(n)))


async def judged(r: Any, request: AnalysisRequest) -> Verdict:
    """One analysis interval around the users' traffic, as `onnxship up` runs it."""
    analysis = RouterAnalysis(r.url)
    now = datetime.now(UTC)
    # the local shell scrapes with a blocking GET: off the loop that runs the router
    await asyncio.to_thread(analysis.measure, request, ANALYSIS, now)  # opens the window
    await users(r)
    for _ in range(200):  # mirrored copies are compared after the users' answers
        compared = samples(await r.metrics(), "onnxship_router_mirror_generation_comparisons_total")
        if not request.mirroring or compared >= 12:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(INTERVAL)
    await asyncio.to_thread(analysis.measure, request, ANALYSIS, now)  # closes it, judged
    assert analysis.verdict is not None
    return analysis.verdict


def routes(stable: Any, canary: Any, weight: int, mirror: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "backends": [
            {"revision": "r1", "url": stable.url, "weight": 100 - weight},
            {"revision": "r2", "url": canary.url, "weight": weight},
        ]
    }
    if mirror:
        doc["mirror"] = {"revision": "r2", "percent": mirror}
    return doc


async def test_a_good_llm_canary_passes(sse_backends, router) -> None:  # noqa: F811
    stable, canary = await sse_backends("stable", gap=0.01), await sse_backends("canary", gap=0.01)
    r = await router()
    await r.put_routes(routes(stable, canary, 0, 100))  # the mirror step
    v = await judged(r, AnalysisRequest("r2", True, INTERVAL, serving=False))
    assert v.result == Result.passed, v.message
    assert "token agreement 1.0000 over 12 generations" in v.message
    await r.put_routes(routes(stable, canary, 100, 0))  # then it takes the users' streams
    v = await judged(r, AnalysisRequest("r2", False, INTERVAL, serving=True))
    assert v.result == Result.passed, v.message
    assert "time to first token p99" in v.message and "inter-token p99" in v.message


async def test_disagreeing_tokens_fail_the_mirror_step(sse_backends, router) -> None:  # noqa: F811
    stable = await sse_backends("stable", gap=0.01)
    canary = await sse_backends("canary", gap=0.01, tokens=["Hello", ",", " broken", " again"])
    r = await router()
    await r.put_routes(routes(stable, canary, 0, 100))
    v = await judged(r, AnalysisRequest("r2", True, INTERVAL, serving=False))
    assert v.result == Result.failed
    # words: stable [Hello, streaming world!], canary [Hello, broken again]: 1 of 3
    assert "output agreement (tokens) 0.3333 below 0.9" in v.message, v.message


async def test_a_slow_first_token_fails_once_the_canary_takes_traffic(
    sse_backends,  # noqa: F811
    router,  # noqa: F811
) -> None:
    stable = await sse_backends("stable", gap=0.01)
    canary = await sse_backends("canary", gap=0.01, first_delay=0.4)
    r = await router()
    await r.put_routes(routes(stable, canary, 100, 0))
    v = await judged(r, AnalysisRequest("r2", False, INTERVAL, serving=True))
    assert v.result == Result.failed
    assert "p99 time to first token" in v.message and "above 200 ms" in v.message, v.message
    assert v.measurements.ttft_p99_ms is not None and v.measurements.ttft_p99_ms >= 400


async def test_demo_traffic_for_an_llm_streams_chat_and_times_first_tokens(
    sse_backends,  # noqa: F811
    router,  # noqa: F811
) -> None:
    """`onnxship load --chat`: streamed greedy chat completions through the router, each
    timed to its first token, the router counting them as the canary's streams."""
    backend = await sse_backends("only", gap=0.01, first_delay=0.05)
    r = await router()
    await r.put_routes({"backends": [{"revision": "r1", "url": backend.url, "weight": 100}]})
    gen = LoadGenerator(chat_url(r.url), rate=40, concurrency=4, chat_model="m")
    await asyncio.to_thread(gen.start)
    for _ in range(200):
        if gen.stats.ok >= 10:
            break
        await asyncio.sleep(0.05)
    stats = await asyncio.to_thread(gen.stop)
    assert stats.ok >= 10 and stats.error_rate == 0.0
    assert len(stats.ttft_ms) == stats.ok  # every answer streamed a first token
    # each answer counted for the revision the router's onnxship-revision header names
    assert stats.by_revision == {"r1": stats.ok} and len(stats.ttft_by_revision["r1"]) == stats.ok
    p50 = stats.percentile(0.5, ttft=True)
    assert p50 is not None and 50 <= p50 < (stats.percentile(0.5) or 0)  # before the whole answer
    body = backend.requests[0]
    assert body["stream"] is True and body["temperature"] == 0 and body["messages"][0]["content"]
    streams = samples(await r.metrics(), "onnxship_router_streams_total", revision="r1")
    assert streams >= stats.ok
