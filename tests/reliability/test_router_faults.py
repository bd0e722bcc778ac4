"""`onnxship route` under backend faults and route churn (issue 12): a real router process.

The router runs as its own process (`onnxship route`, admin port with a token); the backends
are real servers on this test's event loop: aiohttp v2 stand-ins (tests/router/conftest.py)
and raw sockets that misbehave on purpose: one accepts and never answers, one never accepts
(its backlog is full, so connecting hangs), one accepts and resets the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from onnxship.router.metrics_source import counters_from_text
from tests.router import conftest as router_fixtures
from tests.router.conftest import free_port, table

# real aiohttp v2 servers that say who they are (x-backend), as in tests/router
backends = router_fixtures.backends

TOKEN = "t0ken"
TIMEOUT = 1.0  # the router's --timeout in these tests
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@dataclass
class RouteProcess:
    proc: subprocess.Popen[bytes]
    url: str
    admin: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Result:
    status: int
    seconds: float
    backend: str  # x-backend of the answer ("" for the router's own errors)
    error: str


@pytest.fixture
def route(tmp_path: Path) -> Iterator[Callable[..., Awaitable[RouteProcess]]]:
    """``await route(timeout=...)``: a running `onnxship route` process, stopped at the end."""
    started: list[RouteProcess] = []

    async def start(timeout: float = TIMEOUT) -> RouteProcess:
        port, admin_port = free_port(), free_port()
        log = tmp_path / f"route-{len(started)}.log"
        cmd = [sys.executable, "-c", "from onnxship.cli.main import main; main()",
               "route", "--port", str(port), "--admin-port", str(admin_port),
               "--admin-token", TOKEN, "--timeout", str(timeout)]  # fmt: skip
        with log.open("wb") as out:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        r = RouteProcess(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", log)
        started.append(r)
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                assert proc.poll() is None, r.output()
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{r.url}/healthz") as resp:
                        if resp.status == 200:
                            return r
                await asyncio.sleep(0.05)
        raise AssertionError(f"router not up:\n{r.output()}")

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
        try:
            r.proc.wait(20)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
            raise
        assert "Traceback" not in r.output(), r.output()[-3000:]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
        yield s


async def put_routes(s: aiohttp.ClientSession, r: RouteProcess, doc: dict[str, Any]) -> None:
    async with s.put(
        f"{r.admin}/onnxship/routes",
        data=json.dumps(doc),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def infer(s: aiohttp.ClientSession, r: RouteProcess, **headers: str) -> Result:
    started = time.perf_counter()
    async with s.post(
        f"{r.url}/v2/models/m/infer",
        json=BODY,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as resp:
        body = await resp.read()
        who = resp.headers.get("x-backend", "")
        status = resp.status
    error = "" if status == 200 else json.loads(body).get("error", "")
    return Result(status, time.perf_counter() - started, who, error)


async def metrics(s: aiohttp.ClientSession, r: RouteProcess) -> str:
    async with s.get(f"{r.url}/metrics") as resp:
        return await resp.text()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def baseline(s: aiohttp.ClientSession, r: RouteProcess, n: int = 150) -> list[float]:
    """Latencies of healthy requests through the router, one at a time, after a warm-up."""
    for _ in range(20):
        assert (await infer(s, r)).status == 200
    out = []
    for _ in range(n):
        res = await infer(s, r)
        assert res.status == 200, res
        out.append(res.seconds)
    return out


# ------------------------------------------------------------------ misbehaving backends


@contextlib.asynccontextmanager
async def silent_backend() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts connections, reads what comes, never answers; counts connections still open."""
    held: list[asyncio.StreamWriter] = []
    open_now = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        open_now[0] += 1
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        open_now[0] -= 1  # the router hung up

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", open_now
    finally:
        server.close()
        for w in held:
            w.close()


@contextlib.contextmanager
def unaccepting_backend() -> Iterator[tuple[str, None]]:
    """Listens and never accepts: once its backlog is full, connecting hangs (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue so that the router's own connect cannot complete.
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", None
    finally:
        for c in fillers:
            c.close()
        listener.close()


@contextlib.asynccontextmanager
async def resetting_backend(mode: str) -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts each connection, then ``rst``: resets it at once (SO_LINGER 0), or
    ``close``: reads the request head and closes without a word (FIN)."""
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        if mode == "close":
            with contextlib.suppress(Exception):
                await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()


def doc_with(*entries: tuple[str, str, int]) -> dict[str, Any]:
    return {"backends": [{"revision": r, "url": u, "weight": w} for r, u, w in entries]}


async def drive(
    s: aiohttp.ClientSession, r: RouteProcess, workers: int, seconds: float
) -> list[Result]:
    """``workers`` clients, each sending one request after another, for ``seconds``."""
    out: list[Result] = []
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            out.append(await infer(s, r))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return out


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["silent", "unaccepting"])
async def test_a_hanging_backend_times_out_and_does_not_slow_the_healthy_one(
    backends: Any, route: Any, session: aiohttp.ClientSession, kind: str
) -> None:
    healthy = await backends("healthy")
    r = await route()
    await put_routes(session, r, doc_with(("r1", healthy.url, 100)))
    normal = await baseline(session, r)

    hang_cm = silent_backend() if kind == "silent" else _async(unaccepting_backend())
    async with hang_cm as (hang_url, still_open):
        await put_routes(session, r, doc_with(("r1", healthy.url, 50), ("r2", hang_url, 50)))
        t0 = time.perf_counter()
        probes: list[tuple[float, Result]] = []

        async def probe() -> None:
            """One client pinned to the healthy revision while the others hang."""
            while time.perf_counter() - t0 < 2 * TIMEOUT:
                sent = time.perf_counter() - t0
                probes.append((sent, await infer(session, r, **{"onnxship-revision": "r1"})))

        results, _ = await asyncio.gather(
            drive(session, r, workers=8, seconds=2.5 * TIMEOUT), probe()
        )
        if still_open is not None:
            # every connection to the hung backend was closed by the router when it gave up
            for _ in range(50):
                if still_open[0] == 0:
                    break
                await asyncio.sleep(0.02)
            assert still_open[0] == 0, still_open

    hung = [x for x in results if x.backend != "healthy"]
    served = [x for x in results if x.backend == "healthy"]
    assert hung and served, collections.Counter(x.status for x in results)
    # Each request the hanging revision got: the router's 504, with a message, on time.
    for x in hung:
        assert x.status == 504 and "r2" in x.error and "timed out" in x.error, x
        assert 0.9 * TIMEOUT <= x.seconds <= TIMEOUT + 0.75, x
    # Passive ejection: 3 timeouts in a row, then the revision is skipped (8 were in flight).
    assert len(hung) <= 3 + 8, len(hung)
    assert all(x.status == 200 for x in served)
    # The healthy revision is not slowed while requests hang on the other one: a blocked
    # event loop would hold the probes until the timeout. Slack for a shared 2-core machine.
    during = [x.seconds for sent, x in probes if sent < 0.9 * TIMEOUT]
    assert len(during) >= 5 and all(x.status == 200 for _, x in probes), probes
    p50, p99 = quantile(during, 0.5), quantile(normal, 0.99)
    assert p50 <= max(3 * quantile(normal, 0.5), p99) + 0.02, (p50, p99)
    assert max(during) < TIMEOUT / 2, during
    text = await metrics(session, r)
    assert counters_from_text(text, "r2").errors == len(hung)
    assert 'code="504",environment="",revision="r2",role="primary"' in text
    assert 'onnxship_router_backend_ejections_total{revision="r2"' in text
    # and the router still answers on the healthy revision afterwards
    assert (await infer(session, r)).status == 200


@pytest.mark.parametrize("mode", ["rst", "close"])
async def test_a_resetting_backend_is_ejected_and_traffic_lands_on_the_healthy_one(
    backends: Any, route: Any, session: aiohttp.ClientSession, mode: str
) -> None:
    healthy = await backends("healthy")
    r = await route()
    async with resetting_backend(mode) as (bad_url, accepted):
        await put_routes(session, r, doc_with(("r1", healthy.url, 50), ("r2", bad_url, 50)))
        results = await drive(session, r, workers=8, seconds=1.5)
        counts = collections.Counter((x.status, x.backend) for x in results)
        failed = [x for x in results if x.status != 200]
        # A reset (or a close without an answer) is the router's 502 naming the revision,
        # never a 500 or a hang.
        assert failed and all(x.status == 502 and "r2" in x.error for x in failed), counts
        assert all(x.seconds < TIMEOUT for x in failed), max(x.seconds for x in failed)
        # then skipped: at most a threshold's worth (plus what was in flight) fail; the rest
        # of the traffic lands on the healthy revision
        assert len(failed) <= 3 + 8, counts
        assert counts[(200, "healthy")] >= 10 * len(failed), counts
        tail = [await infer(session, r) for _ in range(50)]
        assert {(x.status, x.backend) for x in tail} == {(200, "healthy")}
        # each failure is one connection: nothing was retried behind the client's back
        assert accepted[0] == len(failed), (accepted[0], len(failed))
        text = await metrics(session, r)
    assert counters_from_text(text, "r2").errors == len(failed)
    assert f'code="502",environment="",revision="r2",role="primary"}} {len(failed)}.0' in text
    assert 'onnxship_router_backend_ejections_total{revision="r2"' in text
    served = counts[(200, "healthy")] + len(tail)
    assert f'code="200",environment="",revision="r1",role="primary"}} {served}.0' in text


async def test_a_hundred_weight_changes_under_load_lose_no_request(
    backends: Any, route: Any, session: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", delay=0.002), await backends("b", delay=0.002)
    r = await route()
    await put_routes(session, r, table(("r1", a, 100), ("r2", b, 0)))
    rng = random.Random(12)
    weights = [rng.randint(0, 100) for _ in range(99)] + [30]
    stop = asyncio.Event()
    results: list[Result] = []

    async def client() -> None:
        while not stop.is_set():
            results.append(await infer(session, r))

    async def churn() -> None:
        for w in weights:
            await put_routes(session, r, table(("r1", a, w), ("r2", b, 100 - w)))
            await asyncio.sleep(0.02)
        stop.set()

    clients = [asyncio.create_task(client()) for _ in range(32)]
    await churn()
    await asyncio.gather(*clients)
    codes = collections.Counter(x.status for x in results)
    assert codes == {200: len(results)}, codes
    assert len(results) >= 500, len(results)  # the churn really happened under load

    # the final split follows the final weights (30/70), exactly per hundred requests
    sem = asyncio.Semaphore(32)

    async def one() -> Result:
        async with sem:
            return await infer(session, r)

    final = await asyncio.gather(*(one() for _ in range(1000)))
    split = collections.Counter(x.backend for x in final if x.status == 200)
    assert split == {"a": 300, "b": 700}, split
    text = await metrics(session, r)
    assert 'onnxship_router_backend_weight{environment="",revision="r1"} 30.0' in text
    # every request is counted, and only as a 200
    total = sum(counters_from_text(text, rev).requests for rev in ("r1", "r2"))
    assert total == len(results) + 1000, (total, len(results))
    assert 'onnxship_router_route_reloads_total{result="ok",source="admin"} 101.0' in text


@contextlib.asynccontextmanager
async def _async(cm: contextlib.AbstractContextManager[Any]) -> AsyncIterator[Any]:
    with cm as value:
        yield value
