"""`onnxship serve` at twice its measured capacity (issue 12): it sheds, stays fast, recovers.

A real server process runs a model whose cost is known (three 512x512 MatMuls on an outer
product of the input: a few milliseconds on one ONNX Runtime thread, never constant-folded),
with ``--threads 1`` and a queue of ``QUEUE`` requests. The test measures its capacity
first, then offers twice that, open loop (requests leave on a clock, not when answers come
back), and checks what a user relies on:

- the excess is refused at once with 503 and Retry-After, nothing else goes wrong;
- the accepted requests wait for at most a full queue: by Little's law their time in the
  server is about ``QUEUE / goodput``, so their p99 is bounded by a multiple of it (an
  unbounded queue grows by the excess every second and fails this within seconds);
- its memory (VmRSS) in the last window of the run is where it was in the first;
- when the load stops, the next requests get 200 at the latency of an idle server.

Every bound is derived from figures measured in the same test, with slack for a shared
2-core machine. The 60 s run is ``slow``; the default run drives it for 15 s.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.models import OPSET
from tests.serve.server import Server, free_port, start

WIDTH, LAYERS = 512, 3
QUEUE = 32  # --max-queue-size
MODEL = "busy"


def busy_model(width: int = WIDTH, layers: int = LAYERS) -> onnx.ModelProto:
    """``x: float32[1, width]``; ``h = x^T x``, then ``layers`` times ``h = tanh(h @ W)``;
    ``y = mean(h, axis 0)``. The work depends on the input, so nothing folds away."""
    rng = np.random.default_rng(0)
    inits = []
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xt", "x"], ["h0"]),
    ]
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{layers}"], ["y"], axes=[0], keepdims=1))
    graph = helper.make_graph(
        nodes,
        "busy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


BODY = json.dumps(
    {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, WIDTH],
                "data": np.random.default_rng(1).random(WIDTH).round(4).tolist(),
            }
        ]
    }
).encode()


@dataclass
class Answer:
    sent: float  # seconds since the start of the phase
    status: int
    seconds: float
    retry_after: str | None = None


@dataclass
class Rss:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)

    def between(self, lo: float, hi: float) -> list[int]:
        return [b for t, b in self.samples if lo <= t < hi]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("overload")
    path = folder / "busy.onnx"
    onnx.save(busy_model(), path)
    args = ["--model", str(path), "--name", MODEL, "--threads", "1",
            "--max-queue-size", str(QUEUE), "--max-batch-size", "1"]  # fmt: skip
    s = start(args, free_port(), free_port(), folder / "serve.log")
    yield s
    assert s.terminate() == 0, s.output()[-3000:]
    assert "Traceback" not in s.output(), s.output()[-3000:]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=1024)
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


async def infer(s: aiohttp.ClientSession, server: Server, t0: float) -> Answer:
    sent = time.perf_counter()
    async with s.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        data=BODY,
        headers={"Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=120),
    ) as resp:
        await resp.read()
        return Answer(
            sent - t0, resp.status, time.perf_counter() - sent, resp.headers.get("Retry-After")
        )


async def closed_loop(
    s: aiohttp.ClientSession, server: Server, clients: int, seconds: float
) -> tuple[list[Answer], float]:
    """``clients`` clients, each waiting for its answer before the next request."""
    out: list[Answer] = []
    t0 = time.perf_counter()

    async def client() -> None:
        while time.perf_counter() - t0 < seconds:
            out.append(await infer(s, server, t0))

    await asyncio.gather(*(client() for _ in range(clients)))
    return out, time.perf_counter() - t0


async def open_loop(
    s: aiohttp.ClientSession, server: Server, rate: float, seconds: float, rss: Rss
) -> tuple[list[Answer], float]:
    """Requests sent at ``rate`` per second for ``seconds``, whatever the answers do;
    VmRSS of the server sampled every half second meanwhile."""
    loop = asyncio.get_running_loop()
    out: list[Answer] = []
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()

    async def one() -> None:
        out.append(await infer(s, server, t0))

    async def sample() -> None:
        while True:
            rss.samples.append((time.perf_counter() - t0, rss_bytes(server.proc.pid)))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    start_at, n = loop.time(), 0
    while n < rate * seconds:
        due = start_at + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    sent_for = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    sampler.cancel()
    return out, sent_for


def q(values: list[float], p: float) -> float:
    return float(np.quantile(values, p))


async def overload(server: Server, session: aiohttp.ClientSession, seconds: float) -> None:
    assert server.proc.poll() is None, server.output()[-2000:]
    # --- an idle server: latency of one request at a time (after a warm-up)
    await closed_loop(session, server, 1, 1.0)
    idle, _ = await closed_loop(session, server, 1, 2.0)
    assert {a.status for a in idle} == {200}
    idle_p50, idle_p99 = q([a.seconds for a in idle], 0.5), q([a.seconds for a in idle], 0.99)
    # --- capacity: a few clients keep it busy without filling the queue
    busy, elapsed = await closed_loop(session, server, 4, 4.0)
    assert {a.status for a in busy} == {200}
    capacity = len(busy) / elapsed
    # --- twice the capacity, open loop
    rss = Rss()
    rate = 2 * capacity
    answers, sent_for = await open_loop(session, server, rate, seconds, rss)
    # --- load drops (every answer is in): the next requests, one at a time
    after = [await infer(session, server, 0.0) for _ in range(20)]
    async with session.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    # capacity again, right after: the machine is shared, and its speed drifts over a minute
    again, elapsed = await closed_loop(session, server, 4, 3.0)
    assert {a.status for a in again} == {200}
    capacity_after = len(again) / elapsed
    codes = {c: sum(a.status == c for a in answers) for c in {a.status for a in answers}}
    accepted = [a for a in answers if a.status == 200]
    shed = [a for a in answers if a.status == 503]
    goodput = len(accepted) / sent_for
    lat = [a.seconds for a in accepted]
    p99 = q(lat, 0.99)
    # Little's law: at most QUEUE requests are in the server, served at `goodput` per second,
    # so an accepted request waits about `full` seconds. The p99 gets 4x for the machine's
    # noisy neighbours (a slow second stretches every wait in the queue), the median 1.75x
    # (1.5x failed once in CI-like runs at 1.57x): a queue twice as long as configured fails
    # the median's, an unbounded one fails both.
    full = (QUEUE + 1) / goodput
    bound, median_bound = 4 * full + 0.25, 1.75 * full + 0.1
    window = min(10.0, seconds / 3)
    late = [a.seconds for a in accepted if a.sent >= seconds - window]
    first_rss = statistics.median(rss.between(0, window))
    last_rss = statistics.median(rss.between(seconds - window, seconds + 1))
    report = {
        "seconds": seconds,
        "idle_p50_ms": round(idle_p50 * 1000, 2),
        "capacity_rps": round(capacity, 1),
        "capacity_after_rps": round(capacity_after, 1),
        "offered_rps": round(len(answers) / sent_for, 1),
        "goodput_rps": round(goodput, 1),
        "codes": codes,
        "shed_share": round(len(shed) / len(answers), 3),
        "p50_ms": round(q(lat, 0.5) * 1000, 1),
        "p50_bound_ms": round(median_bound * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "p99_last_window_ms": round(q(late, 0.99) * 1000, 1),
        "p99_bound_ms": round(bound * 1000, 1),
        "rss_first_mib": round(first_rss / 2**20, 1),
        "rss_last_mib": round(last_rss / 2**20, 1),
        "after_first_ms": round(after[0].seconds * 1000, 1),
        "after_p50_ms": round(q([a.seconds for a in after], 0.5) * 1000, 1),
    }
    print("overload:", json.dumps(report))  # the figures, with -s

    assert server.proc.poll() is None, server.output()[-3000:]
    # sheds: only 200s and 503s, a fair share of 503s, each with Retry-After
    assert set(codes) <= {200, 503}, report
    assert len(shed) >= 0.2 * len(answers), report
    assert all(a.retry_after is not None and int(a.retry_after) >= 1 for a in shed), report
    # and keeps serving meanwhile: shedding must not eat the capacity (a collapse, e.g.
    # refusals that cost as much as answers, fails this); slack for the neighbours' load
    assert goodput >= 0.4 * min(capacity, capacity_after), report
    # accepted requests wait for a full queue at most, all along
    assert p99 <= bound and q(late, 0.99) <= bound, report
    assert q(lat, 0.5) <= median_bound, report
    # refusals are cheap: answered without waiting in the queue
    assert q([a.seconds for a in shed], 0.5) <= max(0.1, idle_p99 * 2), report
    # memory does not grow under sustained overload
    assert last_rss <= first_rss * 1.02 + 4 * 2**20, report
    # recovered at once: 200s at idle latency, nothing left queued
    assert [a.status for a in after] == [200] * 20, [a.status for a in after]
    after_p50 = q([a.seconds for a in after], 0.5)
    assert after[0].seconds <= max(3 * idle_p99, 0.1), (after[0], report)
    assert after_p50 <= max(2 * idle_p50, idle_p99) + 0.01, (after_p50, report)
    depth = [ln for ln in text.splitlines() if ln.startswith("onnxship_inference_queue_depth")]
    assert depth and float(depth[0].split()[-1]) == 0.0, depth


async def test_twice_the_capacity_for_15s_sheds_and_recovers(
    server: Server, session: aiohttp.ClientSession
) -> None:
    await overload(server, session, 15.0)


@pytest.mark.slow
async def test_twice_the_capacity_for_60s_sheds_and_recovers(
    server: Server, session: aiohttp.ClientSession
) -> None:
    await overload(server, session, 60.0)
