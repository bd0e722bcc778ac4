"""`onnxship route --workers 2`: two router processes on one port that act as one router.

The router runs as a real process (the CLI); the backends are aiohttp stand-ins on this test's
event loop. Requests go over fresh connections, which the kernel spreads between the workers
(SO_REUSEPORT); `/healthz` says which worker answered, so each test first checks that both did.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from onnxship.router.metrics_source import counters_from_text

from .conftest import TOKEN, free_port, table

ROUTER = [str(Path(sys.executable).parent / "onnxship")]
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


class Pod:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, admin: str) -> None:
        self.proc, self.url, self.admin = proc, url, admin
        # a new connection per request: the kernel picks a worker for each
        self.fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def infer(self, **headers: str) -> tuple[int, str]:
        async with self.fresh.post(
            f"{self.url}/v2/models/m/infer", json=BODY, headers=headers
        ) as r:
            await r.read()
            return r.status, r.headers.get("x-backend", "")

    async def many(self, n: int, **headers: str) -> list[tuple[int, str]]:
        return list(await asyncio.gather(*(self.infer(**headers) for _ in range(n))))

    async def workers_seen(self, n: int = 40) -> set[int]:
        async def one() -> int:
            async with self.fresh.get(f"{self.url}/healthz") as r:
                return int((await r.json())["worker"])

        return set(await asyncio.gather(*(one() for _ in range(n))))

    async def put_routes(self, doc: dict[str, Any]) -> int:
        async with self.fresh.put(
            f"{self.admin}/onnxship/routes",
            data=json.dumps(doc),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as r:
            return r.status

    async def metrics(self, where: str = "") -> str:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with self.fresh.get(f"{where or self.url}/metrics", headers=auth) as r:
            assert r.status == 200, await r.text()
            return await r.text()


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Pod] = []

    async def start(routes: dict[str, Any], *args: str) -> Pod:
        file = tmp_path / "routes.json"
        file.write_text(json.dumps(routes))
        port, admin = free_port(), free_port()
        proc = subprocess.Popen(
            [*ROUTER, "route", "--workers", "2", "--port", str(port), "--routes", str(file),
             "--admin-port", str(admin), "--admin-token", TOKEN, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        p = Pod(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
        started.append(p)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(300):  # the admin port opens once every worker is up
            try:
                async with p.fresh.get(f"{p.admin}/onnxship/routes", headers=auth) as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        assert await p.workers_seen() == {0, 1}
        return p

    yield start
    for p in started:
        await p.fresh.close()
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, p.proc.wait, 15)


async def test_a_put_reaches_every_worker_before_it_answers(backends, pod) -> None:
    a, b = await backends("a"), await backends("b")
    p = await pod(table(("r1", a, 100)))
    assert {who for _, who in await p.many(20)} == {"a"}
    assert await p.put_routes(table(("r1", a, 0), ("r2", b, 100))) == 200
    # at once, on fresh connections that land on both workers: all on the new table
    results = await p.many(60)
    assert collections.Counter(results) == {(200, "b"): 60}
    assert await p.workers_seen() == {0, 1}
    # a split: each worker follows it exactly over its own requests
    assert await p.put_routes(table(("r1", a, 50), ("r2", b, 50))) == 200
    split = collections.Counter(who for _, who in await p.many(200))
    assert 80 <= split["a"] <= 120, split


async def test_metrics_count_each_request_once_whichever_worker_answers(backends, pod) -> None:
    a, b = await backends("a"), await backends("b", scale=1.0)
    p = await pod(table(("r1", a, 100), ("r2", b, 0), mirror=("r2", 100)))
    before = counters_from_text(await p.metrics(), "r1")
    assert {code for code, _ in await p.many(80)} == {200}
    assert a.hits >= 80 and await p.workers_seen() == {0, 1}
    # the mirrors finish after the users' answers: wait until all 80 are compared
    for _ in range(200):
        text = await p.metrics()
        mirrored = counters_from_text(text, "r2")
        if mirrored.comparisons >= 80:
            break
        await asyncio.sleep(0.05)
    after = counters_from_text(text, "r1")
    assert after.requests - before.requests == 80
    assert mirrored.comparisons == 80 and mirrored.mirrored == 80
    assert b.hits == 80  # one copy per request, not one per worker
    # the admin port and either worker say the same
    assert counters_from_text(await p.metrics(p.admin), "r1").requests == after.requests
    assert 'onnxship_router_mirror_agreement{baseline="r1",revision="r2"} 1.0' in text


async def test_sticky_sessions_stick_across_workers(backends, pod) -> None:
    a, b = await backends("a"), await backends("b")
    p = await pod(table(("r1", a, 50), ("r2", b, 50)), "--sticky-header", "x-session-id")
    for session in ("alice", "bob", "carol", "dave"):
        seen = {who for _, who in await p.many(16, **{"x-session-id": session})}
        assert len(seen) == 1, (session, seen)


async def test_sigterm_drains_every_worker(backends, pod) -> None:
    slow = await backends("slow", delay=0.6)
    p = await pod(table(("r1", slow, 100)))
    calls = asyncio.gather(*(p.infer() for _ in range(12)))
    for _ in range(100):  # all 12 reached the backend: in flight in both workers
        if slow.hits >= 12:
            break
        await asyncio.sleep(0.01)
    p.proc.send_signal(signal.SIGTERM)
    results = await calls
    assert results == [(200, "slow")] * 12
    code = await asyncio.get_running_loop().run_in_executor(None, p.proc.wait, 15)
    assert code == 0, p.proc.stdout.read().decode()[-2000:]  # type: ignore[union-attr]


def test_workers_zero_follows_the_cpu_limit(tmp_path: Path) -> None:
    from onnxship.router.workers import workers_for_quota

    assert workers_for_quota(tmp_path) == 1  # no cgroup files: no limit known
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert workers_for_quota(tmp_path) == 1  # no limit: not the node's core count
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert workers_for_quota(tmp_path) == min(2, len(os.sched_getaffinity(0)))


async def test_a_worker_that_dies_ends_the_pod(backends, pod) -> None:
    a = await backends("a")
    p = await pod(table(("r1", a, 100)))
    children = [
        int(c)
        for task in Path(f"/proc/{p.proc.pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)
    code = await asyncio.get_running_loop().run_in_executor(None, p.proc.wait, 15)
    out = p.proc.stdout.read().decode()  # type: ignore[union-attr]
    assert code != 0 and "stopping the pod" in out, out[-2000:]
    assert all(not Path(f"/proc/{c}").exists() for c in children[1:])  # no worker left behind


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            out = subprocess.run(
                [*ROUTER, "route", "--port", str(port), "--workers", workers],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert out.returncode == 1, out.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in out.stderr + out.stdout
            assert "Traceback" not in out.stderr + out.stdout
