"""`onnxship route` as a process: it starts, follows its routes file, and stops cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import free_port, table

ROUTER = [str(Path(sys.executable).parent / "onnxship")]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read().decode()


def infer(url: str) -> str:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]})
    req = urllib.request.Request(
        f"{url}/v2/models/m/infer", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.headers.get("x-backend", "")


def wait_until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


async def test_route_command_reloads_its_file(backends, tmp_path: Path) -> None:
    import asyncio

    a, b = await backends("a"), await backends("b")
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(table(("r1", a, 100))))
    port = free_port()
    proc = subprocess.Popen(
        [*ROUTER, "route", "--port", str(port), "--routes", str(routes), "--watch-interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    try:
        # the backends live on this test's event loop: call the router from a thread
        await loop.run_in_executor(None, wait_until, lambda: get(f"{url}/healthz")[0] == 200)
        assert await loop.run_in_executor(None, infer, url) == "a"
        routes.write_text(json.dumps(table(("r1", a, 0), ("r2", b, 100))))
        await loop.run_in_executor(None, wait_until, lambda: infer(url) == "b")
        routes.write_text("{not json")  # a broken file keeps the last good table
        await asyncio.sleep(0.4)
        assert await loop.run_in_executor(None, infer, url) == "b"
        _, text = await loop.run_in_executor(None, get, f"{url}/metrics")
        assert 'onnxship_router_route_reloads_total{result="invalid",source="file"} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out.decode()[-2000:]
