"""Mirroring generations: the canary answers a greedy, unstreamed copy; the user gets stable's
stream; the router compares the two token sequences (first divergence, token agreement)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from onnxship.router.compare import compare_tokens
from onnxship.router.metrics_source import counters_from_text, generation_between, revision_stats
from onnxship.router.streams import greedy_copy

from .test_streaming import read_events, samples, token_times

GREEDY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0,
    "max_tokens": 5,
}


def mirrored(stable: Any, canary: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"revision": "r1", "url": stable.url, "weight": 100},
            {"revision": "r2", "url": canary.url, "weight": 0},
        ],
        "mirror": {"revision": "r2", "percent": 100},
    }


async def compared(r: Any, n: int = 1) -> str:
    """The router's metrics once ``n`` generations have been compared (mirrors run after)."""
    for _ in range(200):
        text = await r.metrics()
        if samples(text, "onnxship_router_mirror_generation_comparisons_total") >= n:
            return text
        await asyncio.sleep(0.02)
    raise AssertionError("no mirrored generation was compared")


async def stream(r: Any, body: dict[str, Any]) -> tuple[str, dict[str, str]]:
    async with r.session.post(f"{r.url}/v1/chat/completions", json=body) as resp:
        raw = await resp.read()
        headers = dict(resp.headers)
    text = ""
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for choice in json.loads(block[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text, headers


async def test_the_user_gets_stables_stream_and_the_canary_a_greedy_copy(
    sse_backends, router
) -> None:
    stable, canary = await sse_backends("stable", gap=0.03), await sse_backends("canary")
    r = await router()
    await r.put_routes(mirrored(stable, canary))
    before = counters_from_text(await r.metrics(), "r2")
    events, _, headers = await read_events(r.session, r.url)  # CHAT: sampled, streamed
    assert len(token_times(events)) == 5 and headers["x-backend"] == "stable"
    assert headers["onnxship-revision"] == "r1"
    text, headers = await stream(r, GREEDY)
    assert text == "Hello, streaming world!" and headers["x-backend"] == "stable"
    metrics = await compared(r, 2)
    # the canary's copies: greedy, not streamed, same max_tokens
    assert [(d["stream"], d["temperature"], d.get("max_tokens")) for d in canary.requests] == [
        (False, 0, None),
        (False, 0, 5),
    ]
    assert all("stream_options" not in d for d in canary.requests)
    # a sampled answer is no baseline: stable answered a greedy copy for the first request;
    # the greedy request's own stream was the baseline for the second
    assert [(d["stream"], d.get("temperature")) for d in stable.requests] == [
        (True, None),
        (False, 0),
        (True, 0),
    ]
    labels = {"revision": "r2", "baseline": "r1"}
    assert samples(metrics, "onnxship_router_mirror_generation_comparisons_total",
                   unit="words", **labels) == 2  # fmt: skip
    assert samples(metrics, "onnxship_router_mirror_identical_generations_total", **labels) == 2
    assert samples(metrics, "onnxship_router_mirror_token_agreement_mean", **labels) == 1.0
    g = generation_between("r2", before, counters_from_text(metrics, "r2"))
    assert (g.comparisons, g.token_agreement, g.identical) == (2, 1.0, 1.0)
    assert revision_stats(metrics)["r2"]["token_agreement"] == 1.0
    # the copies count as the canary's mirrored traffic, not as stable's
    stats = revision_stats(metrics)
    assert stats["r2"]["mirrored"] == 2 and stats["r1"]["requests"] == 2


async def test_a_canary_that_says_something_else_disagrees(sse_backends, router) -> None:
    stable = await sse_backends("stable")
    canary = await sse_backends("canary", tokens=["Hello", ",", " broken", " world", " again"])
    r = await router()
    await r.put_routes(mirrored(stable, canary))
    text, _ = await stream(r, GREEDY)
    assert text == "Hello, streaming world!"  # users keep getting stable's answer
    metrics = await compared(r)
    # words: stable [Hello, streaming world!], canary [Hello, broken world again]
    labels = {"revision": "r2", "baseline": "r1"}
    assert samples(metrics, "onnxship_router_mirror_token_agreement_sum", **labels) == 1 / 3
    assert samples(metrics, "onnxship_router_mirror_first_divergence_sum", **labels) == 1
    assert samples(metrics, "onnxship_router_mirror_identical_generations_total") == 0


async def test_token_ids_are_compared_when_both_servers_send_them(sse_backends, router) -> None:
    stable = await sse_backends("stable", ids=True)
    canary = await sse_backends("canary", ids=True, tokens=["Hello", ",", " streaming", "!"])
    r = await router()
    await r.put_routes(mirrored(stable, canary))
    async with r.session.post(
        f"{r.url}/v1/chat/completions", json={**GREEDY, "stream": False}
    ) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == "Hello, streaming world!"
    metrics = await compared(r)
    labels = {"revision": "r2", "baseline": "r1"}
    assert samples(metrics, "onnxship_router_mirror_generation_comparisons_total",
                   unit="token_ids", **labels) == 1  # fmt: skip
    # 5 stable tokens, the canary matched the first 3 and then differed
    assert samples(metrics, "onnxship_router_mirror_token_agreement_sum", **labels) == 3 / 5
    assert samples(metrics, "onnxship_router_mirror_first_divergence_sum", **labels) == 3


def test_the_greedy_copy_and_the_comparison() -> None:
    path, body, greedy = greedy_copy(
        "/v2/models/m/generate_stream?x=1",
        json.dumps(
            {"text_input": "hi", "parameters": {"max_tokens": 9, "temperature": 0.8, "top_p": 0.9}}
        ).encode(),
    ) or ("", b"", True)
    assert path == "/v2/models/m/generate?x=1" and not greedy
    doc = json.loads(body)
    assert doc["parameters"] == {"max_tokens": 9, "temperature": 0} and doc["temperature"] == 0
    path, body, greedy = greedy_copy("/v1/completions", b'{"prompt": "a", "top_k": 1}') or (
        "", b"", False
    )
    assert greedy and json.loads(body) == {"prompt": "a", "temperature": 0, "stream": False}
    assert greedy_copy("/v1/completions", b"[1]") is None
    assert greedy_copy("/v1/completions", b"\xff") is None
    c = compare_tokens([1, 2, 3, 4], [1, 2, 9])
    assert (c.agreement, c.first_divergence, c.identical) == (0.5, 2, False)
    c = compare_tokens([1, 2], [1, 2, 3])  # the canary went on past stable's end
    assert (c.agreement, c.first_divergence, c.identical) == (1.0, 2, False)
    assert compare_tokens([], []).agreement == 1.0 and compare_tokens([], [1]).agreement == 0.0
