"""The batching scheduler and the data plane's states, in-process with a stand-in session."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from onnxship.serve.batcher import Scheduler
from onnxship.serve.config import ServeConfig
from onnxship.serve.dataplane import DataPlane, InferRequest, RequestTensor
from onnxship.serve.errors import InvalidInput, NotReady, Overloaded
from onnxship.serve.session import cpu_limit


class FakeSession:
    """``y = x * 2`` per row and ``seq = the mask summed``; remembers each batch it ran."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        with self.lock:
            self.batches.append(x.shape[0])
        if self.fail_on is not None and (x == self.fail_on).any():
            raise InvalidInput("poisoned row")
        out = {"y": x * 2, "rowsum": x.sum(axis=1)}
        return {n: out[n] for n in outputs}


def scheduler(session: FakeSession, **kw: object) -> Scheduler:
    return Scheduler(
        session.run,
        ThreadPoolExecutor(1),
        output_order=["y", "rowsum"],
        batchable=True,
        **kw,  # type: ignore[arg-type]
    )


async def test_requests_are_stacked_and_split_back() -> None:
    session = FakeSession()
    s = scheduler(session, max_batch_size=16, max_delay_s=0.05)
    s.start()
    xs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(8)]
    results = await asyncio.gather(*(s.submit({"x": x}, ["y", "rowsum"]) for x in xs))
    await s.stop()
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r["y"], x * 2)
        np.testing.assert_array_equal(r["rowsum"], x.sum(axis=1))
    assert sum(session.batches) == sum(x.shape[0] for x in xs)
    assert len(session.batches) < len(xs)
    assert max(session.batches) <= 16


async def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    s = scheduler(FakeSession(), max_batch_size=4, max_delay_s=5.0)
    s.start()
    results = await asyncio.wait_for(
        asyncio.gather(*(s.submit({"x": np.ones((1, 2), np.float32)}, ["y"]) for _ in range(4))), 2
    )
    await s.stop()
    assert len(results) == 4


async def test_a_bad_request_fails_alone() -> None:
    session = FakeSession(fail_on=-1.0)
    s = scheduler(session, max_batch_size=8, max_delay_s=0.05)
    s.start()
    xs = [np.full((1, 2), v, np.float32) for v in (1.0, -1.0, 3.0)]
    results = await asyncio.gather(*(s.submit({"x": x}, ["y"]) for x in xs), return_exceptions=True)
    await s.stop()
    assert isinstance(results[1], InvalidInput)
    np.testing.assert_array_equal(results[0]["y"], [[2.0, 2.0]])  # type: ignore[index]
    np.testing.assert_array_equal(results[2]["y"], [[6.0, 6.0]])  # type: ignore[index]


async def test_queue_limit_refuses_at_once() -> None:
    s = scheduler(FakeSession(), max_batch_size=8, max_delay_s=0.3, max_queue_size=2)
    s.start()
    first = [
        asyncio.ensure_future(s.submit({"x": np.ones((1, 2), np.float32)}, ["y"])) for _ in range(2)
    ]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await s.submit({"x": np.ones((1, 2), np.float32)}, ["y"])
    assert len(await asyncio.gather(*first)) == 2
    await s.stop()
    assert s.depth == 0


async def test_inputs_that_disagree_on_batch_size_are_rejected() -> None:
    s = scheduler(FakeSession(), max_batch_size=8)
    s.start()
    with pytest.raises(InvalidInput, match="batch"):
        await s.submit({"x": np.ones((2, 2), np.float32), "m": np.ones((3, 2), np.float32)}, ["y"])
    await s.stop()


async def test_not_ready_before_load_and_while_draining(tmp_path: Path, mlp_model: Path) -> None:
    dp = DataPlane(ServeConfig(model_path=mlp_model, name="m"))
    request = InferRequest("m", None, [RequestTensor("x", "FP32", [1, 32], data=[0.0] * 32)])
    assert dp.live() and not dp.ready()
    with pytest.raises(NotReady) as err:
        await dp.infer(request)
    assert err.value.http_status == 503 and err.value.retry_after == 1
    await dp.load()
    assert dp.ready()
    assert (await dp.infer(request)).outputs[0][2].shape == (1, 16)
    assert await dp.drain(1.0)
    assert not dp.ready()
    with pytest.raises(NotReady, match="shutting down"):
        await dp.infer(request)
    await dp.close()


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"cpu.max": "max 100000"}, None),
        ({"cpu.max": "150000 100000"}, 2),
        ({"cpu.max": "50000 100000"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),
        ({}, None),
    ],
)
def test_threads_follow_the_container_cpu_limit(
    tmp_path: Path, files: dict[str, str], want: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    import os

    available = len(os.sched_getaffinity(0))
    assert cpu_limit(tmp_path) == (min(want, available) if want else available)


async def test_instances_run_batches_side_by_side() -> None:
    """With two instances, a second batch starts while the first is still running."""
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow_run(feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.1)
        with lock:
            active -= 1
        return {"y": feeds["x"] * 2}

    s = Scheduler(
        slow_run, ThreadPoolExecutor(2), output_order=["y"], batchable=True,
        max_batch_size=2, max_delay_s=0.0, instances=2,
    )  # fmt: skip
    s.start()
    results = await asyncio.gather(
        *(s.submit({"x": np.full((1, 1), i, np.float32)}, ["y"]) for i in range(4))
    )
    await s.stop()
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0]
    assert peak == 2


class TimedSession:
    """Sleeps ``per_row_s`` per row; remembers which thread ran each call."""

    def __init__(self, per_row_s: float) -> None:
        self.per_row_s = per_row_s
        self.threads: list[str] = []

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.per_row_s * feeds["x"].shape[0])
        return {"y": feeds["x"] * 2}


async def test_short_runs_stay_on_the_event_loop_thread() -> None:
    # The first run is measured on the executor; runs known to be short skip the thread hop.
    # A generous bound (50 ms): the machine running the tests may be busy.
    session = TimedSession(per_row_s=0.0)
    s = Scheduler(
        session.run,
        ThreadPoolExecutor(1, "infer"),
        output_order=["y"],
        batchable=True,
        inline_max_s=0.05,
    )
    loop_thread = threading.current_thread().name
    for i in range(4):
        out = await s.submit({"x": np.full((1, 2), i, np.float32)}, ["y"])
        np.testing.assert_array_equal(out["y"], [[2 * i, 2 * i]])
    assert session.threads[0].startswith("infer")
    assert session.threads[1:] == [loop_thread] * 3
    assert s.depth == 0


async def test_long_runs_and_large_requests_go_to_the_executor() -> None:
    # A run slower than INLINE_MAX_S would stall every other request (and health probes)
    # on the event loop: it runs on the executor, and the loop keeps turning meanwhile.
    slow = TimedSession(per_row_s=0.02)
    s = Scheduler(slow.run, ThreadPoolExecutor(1, "infer"), output_order=["y"], batchable=True)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    tick = asyncio.create_task(ticker())
    for _ in range(3):
        await s.submit({"x": np.ones((1, 2), np.float32)}, ["y"])
    tick.cancel()
    assert all(t.startswith("infer") for t in slow.threads)
    assert ticks >= 10

    # A model whose 1-row run is short still sends a request 10,000 times as large away.
    fast = TimedSession(per_row_s=0.00002)
    s = Scheduler(
        fast.run,
        ThreadPoolExecutor(1, "infer"),
        output_order=["y"],
        batchable=True,
        inline_max_s=0.05,
    )
    for _ in range(3):
        await s.submit({"x": np.ones((1, 2), np.float32)}, ["y"])
    await s.submit({"x": np.ones((10_000, 2), np.float32)}, ["y"])
    assert fast.threads[-2] == threading.current_thread().name
    assert fast.threads[-1].startswith("infer")
