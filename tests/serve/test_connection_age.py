"""`onnxship serve --max-connection-age S`: a client that keeps one connection open is made to
reconnect once it is S seconds old, on the httptools inference path and on aiohttp's routes.

kube-proxy picks a Service's endpoint per connection: when the operator moves a Service from
the stable revision's pods to the router (plan/front.py), a client holding a connection to
the stable's pods would never reach the router, and the canary's share would never apply to
it. The first answer after the age says ``Connection: close``; none is cut mid-request.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import StartServer
from .server import Server

X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": X.ravel().tolist()}]}
).encode()
AGE = 1.0


@pytest.fixture(scope="module")
def aging(start_server: StartServer, model_dir: Path) -> Server:
    return start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--workers", "1",
        "--threads", "1", "--max-connection-age", str(AGE),
    )  # fmt: skip


def _answers(server: Server, method: str, path: str, body: bytes | None) -> list[tuple[int, str]]:
    """(status, Connection header) of each answer on one connection until it is closed."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=20)
    seen: list[tuple[int, str]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < AGE * 4:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            seen.append((resp.status, (resp.getheader("Connection") or "").lower()))
            if resp.will_close:
                return seen
            time.sleep(AGE / 5)
        return seen
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/v2/models/mlp/infer", BODY), ("GET", "/v2/health/ready", None)],
    ids=["inference (httptools)", "health (aiohttp)"],
)
def test_a_connection_is_closed_by_its_first_answer_after_its_age(
    aging: Server, method: str, path: str, body: bytes | None
) -> None:
    seen = _answers(aging, method, path, body)
    assert all(status == 200 for status, _ in seen), seen
    assert len(seen) >= 3, "kept alive while young"
    assert seen[-1][1] == "close", f"never closed within {AGE * 4}s: {seen}"
    assert all(c != "close" for _, c in seen[:-1]), seen


def test_without_an_age_a_connection_stays_open(
    start_server: StartServer, model_dir: Path
) -> None:
    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--workers", "1",
        "--threads", "1",
    )  # fmt: skip
    seen = _answers(server, "POST", "/v2/models/mlp/infer", BODY)
    assert len(seen) >= 10 and all(c != "close" for _, c in seen), seen
