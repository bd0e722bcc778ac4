"""bench/loadgen.py: the scaling benchmark's load generator reads answers right and never counts
an error as throughput."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from aiohttp import web

from bench import loadgen


def test_parser_reads_answers_split_anywhere_and_back_to_back() -> None:
    a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    b = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno"
    stream = a + b
    for cut in range(1, len(stream)):
        p = loadgen.ResponseParser()
        got = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert [(r.status, r.body) for r in got] == [(200, b"hello"), (503, b"no")]
        assert got[0].headers["content-type"] == "text/plain"
        assert not p.buf


def test_parser_reads_chunked_bodies() -> None:
    stream = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    for cut in (10, 50, 60, 75, len(stream) - 3):
        p = loadgen.ResponseParser()
        got = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert [r.body for r in got] == [b"Wikipedia ", b""]


def test_parser_refuses_what_is_not_http() -> None:
    with pytest.raises(ValueError, match="status line"):
        loadgen.ResponseParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_request_bytes_carry_the_body_length() -> None:
    req = loadgen.http_request("/v2/models/m/infer", b'{"a":1}', {"X-Y": "z"})
    head, body = req.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 7" in head and b"\r\nX-Y: z" in head
    assert body == b'{"a":1}'


def test_check_reads_json_and_binary_outputs() -> None:
    want = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    check = loadgen.Check("json", "y", [want])
    y = {"name": "y", "data": [0.5, -1.25, 3.0]}
    good = json.dumps({"outputs": [{"name": "z", "data": [9]}, y]})
    assert loadgen.mismatch(check, 0, good.encode(), {}) is None
    bad = json.dumps({"outputs": [{"name": "y", "data": [0.5, -1.25, 3.5]}]})
    assert "differs" in (loadgen.mismatch(check, 0, bad.encode(), {}) or "")
    assert "unreadable" in (loadgen.mismatch(check, 0, b"<html>", {}) or "")

    header = json.dumps({"outputs": [
        {"name": "z", "parameters": {"binary_data_size": 4}},
        {"name": "y", "parameters": {"binary_data_size": 12}},
    ]}).encode()  # fmt: skip
    body = header + b"\0\0\0\0" + want.tobytes()
    hdrs = {"inference-header-content-length": str(len(header))}
    assert loadgen.mismatch(loadgen.Check("binary", "y", [want]), 0, body, hdrs) is None
    short = loadgen.mismatch(loadgen.Check("binary", "y", [np.zeros(4, np.float32)]), 0, body, hdrs)
    assert "3 values, expected 4" in (short or "")


def test_split_spreads_connections_over_processes() -> None:
    assert loadgen.split(96, 5) == [20, 19, 19, 19, 19]
    assert loadgen.split(3, 8) == [1, 1, 1]
    assert sum(loadgen.split(97, 12)) == 97


@pytest.fixture
def flaky_server() -> Iterator[tuple[int, dict[str, int]]]:
    """An OIP-shaped endpoint that answers y = [2 * x] and fails every fifth request with 500
    (or answers a wrong value when x is 7)."""
    seen = {"n": 0}

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        x = body["inputs"][0]["data"][0]
        seen["n"] += 1
        if seen["n"] % 5 == 0:
            return web.json_response({"error": "boom"}, status=500)
        y = 0.0 if x == 7 else 2.0 * x
        return web.json_response({"outputs": [{"name": "y", "shape": [1], "data": [y]}]})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/infer", infer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = None

    def run() -> None:
        nonlocal runner
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(10)
    yield port, seen
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)  # type: ignore[union-attr]
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def test_errors_and_wrong_outputs_are_counted_never_as_throughput(
    flaky_server: tuple[int, dict[str, int]],
) -> None:
    port, seen = flaky_server
    xs = [1.0, 2.0, 3.0, 7.0]
    bodies = [json.dumps({"inputs": [{"name": "x", "data": [x]}]}).encode() for x in xs]
    reqs = [loadgen.http_request("/infer", b) for b in bodies]
    check = loadgen.Check("json", "y", [np.array([2 * x], np.float32) for x in xs])
    target = loadgen.Target("http", "127.0.0.1", port, reqs, check, check_every=1)
    r = loadgen.run(target, connections=4, processes=2, warmup=0.2, seconds=1.0)
    assert r["processes"] == 2 and r["connections"] == 4
    assert r["ok"] > 20, r
    # a fifth of the answers are 500 and a quarter of the rest carry x=7's wrong value: both
    # are errors, and what counts as throughput is only the right answers inside the window
    assert r["errors"] > 0.3 * r["ok"], r
    assert any("HTTP 500" in s for s in r["error_samples"]) or any(
        "differs" in s for s in r["error_samples"]
    )
    assert r["ok"] + r["errors"] <= seen["n"]
    assert r["rps"] == pytest.approx(r["ok"] / 1.0)
    assert r["p50_ms"] is not None and r["p50_ms"] > 0
