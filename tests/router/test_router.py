"""The builtin router, seen from its users: real backends and the router on 127.0.0.1."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from onnxship.router.metrics_source import counters_from_text, measurements_between

from .conftest import TOKEN, table


async def burst(r: Any, n: int, concurrency: int = 16, **headers: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            code, who, _ = await r.infer(**headers)
            out.append((code, who))

    await asyncio.gather(*(one() for _ in range(n)))
    return out


async def test_split_follows_the_weights_within_one_point(backends, router) -> None:
    stable, canary = await backends("stable"), await backends("canary")
    r = await router()
    assert await r.put_routes(table(("r1", stable, 90), ("r2", canary, 10))) == 200
    results = await burst(r, 2000)
    counts = collections.Counter(who for code, who in results if code == 200)
    assert sum(counts.values()) == 2000
    assert abs(counts["canary"] / 2000 - 0.10) <= 0.01, counts
    # and exact over each window of 100 consecutive requests (sequential client)
    window = [(await r.infer())[1] for _ in range(100)]
    assert window.count("canary") == 10


async def test_weights_change_under_load_without_losing_requests(backends, router) -> None:
    a, b = await backends("a", delay=0.005), await backends("b", delay=0.005)
    r = await router()
    await r.put_routes(table(("r1", a, 100)))

    async def shift() -> None:
        for w in (20, 50, 80, 100):
            await asyncio.sleep(0.1)
            await r.put_routes(table(("r1", a, 100 - w), ("r2", b, w)))

    results, _ = await asyncio.gather(burst(r, 600, concurrency=32), shift())
    assert [c for c, _ in results].count(200) == 600
    tail = [(await r.infer())[1] for _ in range(20)]
    assert set(tail) == {"b"}


async def test_environment_header_and_revision_pin(backends, router) -> None:
    cpu1, cpu2, gpu1, gpu2 = [await backends(n) for n in ("cpu-r1", "cpu-r2", "gpu-r1", "gpu-r2")]
    r = await router()
    doc = {
        "backends": [
            {"revision": "r1", "url": cpu1.url, "weight": 50, "environment": "cpu"},
            {"revision": "r2", "url": cpu2.url, "weight": 50, "environment": "cpu"},
            {"revision": "r1", "url": gpu1.url, "weight": 50, "environment": "gpu"},
            {"revision": "r2", "url": gpu2.url, "weight": 50, "environment": "gpu"},
        ],
        "environments": {"cpu": 75, "gpu": 25},
    }
    assert await r.put_routes(doc) == 200
    gpu = collections.Counter(w for _, w in await burst(r, 100, **{"onnxship-environment": "gpu"}))
    assert gpu == {"gpu-r1": 50, "gpu-r2": 50}
    anywhere = collections.Counter(w.split("-")[0] for _, w in await burst(r, 400))
    assert anywhere == {"cpu": 300, "gpu": 100}
    pinned = {
        w
        for _, w in await burst(r, 20, **{"onnxship-revision": "r2", "onnxship-environment": "cpu"})
    }
    assert pinned == {"cpu-r2"}
    code, _, body = await r.infer(**{"onnxship-environment": "tpu"})
    assert code == 503 and "tpu" in body["error"]


async def test_sticky_sessions_keep_a_client_on_one_revision(backends, router) -> None:
    a, b = await backends("a"), await backends("b")
    r = await router(sticky_header="x-session")
    await r.put_routes(table(("r1", a, 50), ("r2", b, 50)))
    seen = collections.defaultdict(set)
    for i in range(40):
        for _ in range(3):
            _, who, _ = await r.infer(**{"x-session": f"user-{i}"})
            seen[i].add(who)
    assert all(len(s) == 1 for s in seen.values())
    assert {next(iter(s)) for s in seen.values()} == {"a", "b"}


async def test_mirror_answers_from_stable_and_records_agreement(backends, router) -> None:
    stable, canary = await backends("stable"), await backends("canary", scale=-1.0)
    r = await router()
    await r.put_routes(table(("r1", stable, 100), ("r2", canary, 0), mirror=("r2", 50)))
    before = counters_from_text(await r.metrics(), "r2")
    answers = [await r.infer() for _ in range(100)]
    assert {who for _, who, _ in answers} == {"stable"}
    assert all(body["outputs"][0]["data"] == [1, 2, 3, 4] for _, _, body in answers)
    for _ in range(100):  # mirrors finish after the user's answer
        if canary.hits >= 50:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert canary.hits == 50
    text = await r.metrics()
    after = counters_from_text(text, "r2")
    m = measurements_between("r2", before, after, 1.0)
    assert m.requests == 50 and m.errors == 0 and m.comparisons == 50
    assert m.cosine is not None and m.cosine < -0.99  # y = -x: opposite direction
    assert m.top1 == 0.0
    assert m.max_abs_diff is not None and 1.0 < m.max_abs_diff <= 10.0  # |x - (-x)| up to 8
    assert (
        'onnxship_router_requests_total{code="200",environment="",revision="r2",role="mirror"} 50.0'
        in text
    )
    assert 'onnxship_router_mirror_agreement{baseline="r1",revision="r2"} -1.0' in text


async def test_metrics_count_codes_and_latency_per_revision(backends, router) -> None:
    good, bad = await backends("good"), await backends("bad", fail=True)
    r = await router()
    await r.put_routes(table(("r1", good, 75), ("r2", bad, 25)))
    before = {rev: counters_from_text(await r.metrics(), rev) for rev in ("r1", "r2")}
    results = await burst(r, 200)
    assert collections.Counter(c for c, _ in results) == {200: 150, 500: 50}
    text = await r.metrics()
    bad_m = measurements_between("r2", before["r2"], counters_from_text(text, "r2"), 1.0)
    good_m = measurements_between("r1", before["r1"], counters_from_text(text, "r1"), 1.0)
    assert (bad_m.requests, bad_m.errors, bad_m.error_rate) == (50, 50, 1.0)
    assert (good_m.requests, good_m.errors) == (150, 0)
    assert good_m.latency_p99_ms is not None and 0 < good_m.latency_p99_ms < 1000
    assert 'onnxship_router_backend_weight{environment="",revision="r2"} 25.0' in text


async def test_a_dead_backend_is_skipped_for_a_while(backends, router) -> None:
    alive = await backends("alive")
    dead = await backends("dead")
    assert dead.runner is not None
    await dead.runner.cleanup()
    r = await router()
    await r.put_routes(table(("r1", alive, 50), ("r2", dead, 50)))
    results = [(await r.infer())[:2] for _ in range(40)]
    failures = [c for c, _ in results if c != 200]
    assert failures and set(failures) == {502} and len(failures) == 3  # then ejected
    assert 'onnxship_router_backend_ejections_total{revision="r2"' in await r.metrics()


async def test_admin_needs_the_token_and_the_inference_port_cannot_set_routes(
    backends, router
) -> None:
    a = await backends("a")
    r = await router()
    assert await r.put_routes(table(("r1", a, 100)), token="wrong") == 401
    assert await r.put_routes({"backends": [{"revision": "r1", "url": a.url, "weight": 40}]}) == 400
    async with r.session.put(f"{r.url}/onnxship/routes", json=table(("r1", a, 100))) as resp:
        assert resp.status in (404, 405)
    code, _, body = await r.infer()
    assert code == 503 and "no backends" in body["error"]
    assert await r.put_routes(table(("r1", a, 100))) == 200
    async with r.session.get(
        f"{r.admin}/onnxship/routes", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        doc = await resp.json()
    assert doc["backends"][0]["url"] == a.url and doc["backends"][0]["weight"] == 100


async def test_a_backend_naming_its_revision_is_named_once(backends, router) -> None:
    """Model servers name their revision themselves (serve --revision: a Service may select
    their pods without a router); through the router a client still gets one header, the
    revision the router chose (found by e2e: "r1, r1" broke counting a traffic shift)."""
    b = await backends("ok", revision="r1")
    r = await router()
    await r.put_routes(table(("r1", b, 100)))
    async with r.session.post(
        f"{r.url}/v2/models/m/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]},
    ) as resp:
        await resp.read()
        assert resp.status == 200
        assert resp.headers.getall("onnxship-revision") == ["r1"]


async def test_answers_name_the_revision_that_gave_them(backends, router) -> None:
    """``onnxship-revision`` on every answer, a backend's failure included (found by e2e:
    counting a traffic shift through the router needs it)."""
    ok, dead = await backends("ok"), await backends("dead")
    assert dead.runner is not None
    await dead.runner.cleanup()
    r = await router()
    await r.put_routes(table(("r1", ok, 50), ("r2", dead, 50)))
    seen = set()
    for _ in range(20):
        async with r.session.post(
            f"{r.url}/v2/models/m/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]},
        ) as resp:
            await resp.read()
            seen.add((resp.status, resp.headers.get("onnxship-revision")))
    assert (200, "r1") in seen and (502, "r2") in seen, seen
