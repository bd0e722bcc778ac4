"""`onnxship serve --workers 2`: one pod, two processes on the same ports, seen from outside.

Every test starts the real CLI. Which worker answered comes from the ``onnxship-worker``
header (HTTP); new connections are spread by the kernel (SO_REUSEPORT), so 24 of them all
landing on one worker would happen once in 8 million runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from onnxship.serve.config import ServeConfig
from onnxship.serve.session import cpu_limit
from onnxship.serve.workers import worker_count, worker_threads
from tests.helpers import models as helper_models

from .conftest import StartServer
from .server import CLI, Server, free_port, start

X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": X.ravel().tolist()}]}
WORKERS = ["--workers", "2", "--threads", "1"]
T = TypeVar("T")


def reference(model: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": X})[0])


def one_connection(method: str, url: str, **kwargs: object) -> httpx.Response:
    with httpx.Client(timeout=20) as client:  # a client per request: a connection each
        return client.request(method, url, **kwargs)  # type: ignore[arg-type]


def counted(metrics: str, code: str = "200") -> float:
    pattern = rf'^onnxship_inference_requests_total\{{[^}}]*code="{code}"[^}}]*\}} (\S+)$'
    found = re.findall(pattern, metrics, re.M)
    return sum(float(v) for v in found)


def worker_pids(server: Server, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if '"started workers"' in line:
                return [int(p) for p in json.loads(line)["pids"].split(",")]
        time.sleep(0.05)
    raise AssertionError(f"no 'started workers' line:\n{server.output()}")


@pytest.fixture(scope="module")
def pod(start_server: StartServer, model_dir: Path) -> Server:
    return start_server("--model", str(model_dir / "mlp.onnx"), "--name", "mlp", *WORKERS)


def test_every_transport_answers_and_both_workers_serve(pod: Server, model_dir: Path) -> None:
    want = reference(model_dir / "mlp.onnx")
    url = f"{pod.url}/v2/models/mlp/infer"
    answers = [one_connection("POST", url, json=BODY) for _ in range(24)]
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["onnxship-worker"] for r in answers} == {"0", "1"}
    for r in answers:
        got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, want.ravel(), rtol=1e-5, atol=1e-6)

    # Binary tensors (tritonclient's default) and gRPC, each over connections of their own.
    for _ in range(4):
        client = httpclient.InferenceServerClient(pod.http_addr)
        inp = httpclient.InferInput("x", [1, 32], "FP32")
        inp.set_data_from_numpy(X)
        result = client.infer("mlp", [inp])
        client.close()
        np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5, atol=1e-6)
    for _ in range(4):
        gclient = grpcclient.InferenceServerClient(pod.grpc_addr)
        ginp = grpcclient.InferInput("x", [1, 32], "FP32")
        ginp.set_data_from_numpy(X)
        assert gclient.is_server_ready()
        np.testing.assert_allclose(
            gclient.infer("mlp", [ginp]).as_numpy("y"), want, rtol=1e-5, atol=1e-6
        )
        gclient.close()


def test_metrics_count_each_request_once_for_the_pod(pod: Server) -> None:
    before = counted(one_connection("GET", f"{pod.url}/metrics").text)
    url = f"{pod.url}/v2/models/mlp/infer"
    workers = {one_connection("POST", url, json=BODY).headers["onnxship-worker"] for _ in range(20)}
    gclient = grpcclient.InferenceServerClient(pod.grpc_addr)
    ginp = grpcclient.InferInput("x", [1, 32], "FP32")
    ginp.set_data_from_numpy(X)
    for _ in range(5):
        gclient.infer("mlp", [ginp])
    gclient.close()
    bad = one_connection("POST", url, json={"inputs": [{**BODY["inputs"][0], "name": "nope"}]})
    assert workers == {"0", "1"} and bad.status_code == 400

    # Whichever worker answers /metrics, it reads the pod: the same totals, same labels.
    scrapes = [one_connection("GET", f"{pod.url}/metrics") for _ in range(8)]
    assert {s.headers["onnxship-worker"] for s in scrapes} == {"0", "1"}
    for scrape in scrapes:
        text = scrape.text
        assert counted(text) - before == 25
        assert counted(text, "400") >= 1
        assert 'onnxship_model_ready{model="mlp",version="1"} 1.0' in text
        assert 'onnxship_inference_in_flight{model="mlp",version="1"} 0.0' in text
        assert "pid=" not in text  # one pod, not a series per process


def slow_warmup(iterations: int = 1200, size: int = 512) -> onnx.ModelProto:
    """``y = x + mean(tanh(... tanh(I @ W) ... @ W))``: a Loop of ``iterations`` 512x512
    MatMuls on every run (3 s on a quiet core, more on a loaded one): a worker warms up
    that long, which leaves the test ample time to stop one mid-warm-up."""
    w = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32) / size**0.5
    square = [size, size]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "w"], ["m"]),
         helper.make_node("Tanh", ["m"], ["s_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, square)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, square)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "s0"], ["s"], body=body),
         helper.make_node("ReduceMean", ["s"], ["mean"], keepdims=0),
         helper.make_node("Add", ["x", "mean"], ["y"])],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(iterations, np.int64), "n"),
         numpy_helper.from_array(np.eye(size, dtype=np.float32), "s0"),
         numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def ready_workers(server: Server) -> set[int]:
    """The workers whose "model ready" line is in the pod's log."""
    lines = (json.loads(x) for x in server.output().splitlines() if '"model ready"' in x)
    return {line["worker"] for line in lines if line.get("message") == "model ready"}


def answers_from_running_workers(probe: Callable[[], T], want: int = 3) -> list[T]:
    """``want`` answers of ``probe`` (a new connection each), skipping the connections that
    hung on a stopped worker: a stopped process in the port's SO_REUSEPORT group holds the
    connections the kernel gives it."""
    answers: list[T] = []
    for _ in range(12 * want):
        try:
            answers.append(probe())
        except (httpx.TimeoutException, InferenceServerException):
            continue
        if len(answers) == want:
            return answers
    raise AssertionError(f"only {len(answers)} of {12 * want} connections were answered")


def grpc_ready(server: Server) -> bool:
    # A connection of its own: channels to one address otherwise share the process's
    # subchannel, so after one probe lands on the stopped worker the rest would wait there too.
    client = grpcclient.InferenceServerClient(
        server.grpc_addr, channel_args=[("grpc.use_local_subchannel_pool", 1)]
    )
    try:
        return bool(client.is_server_ready(client_timeout=1))
    finally:
        client.close()


def test_not_ready_until_every_worker_is(start_server: StartServer, tmp_path: Path) -> None:
    model = helper_models.save(slow_warmup(), tmp_path / "slow.onnx")
    server = start_server("--model", str(model), *WORKERS, wait_ready=False)
    _, second = worker_pids(server)
    os.kill(second, signal.SIGSTOP)  # within its warm-up: not ready yet
    try:
        assert ready_workers(server) == set()
        deadline = time.monotonic() + 60
        while not ready_workers(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready_workers(server) == {0}  # worker 0 loaded and warmed up; 1 is stopped
        # Every answer comes from worker 0 and speaks for the pod, not for itself.
        for route in ("/v2/health/ready", "/v2/models/model/ready"):
            url = f"{server.url}{route}"
            for r in answers_from_running_workers(lambda: httpx.get(url, timeout=1)):  # noqa: B023
                assert r.status_code == 503 and r.headers["onnxship-worker"] == "0"
        assert answers_from_running_workers(lambda: grpc_ready(server)) == [False] * 3
    finally:
        os.kill(second, signal.SIGCONT)
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while seen != {"0", "1"} and time.monotonic() < deadline:
        r = one_connection("GET", f"{server.url}/v2/health/ready")
        if r.status_code == 200:
            seen.add(r.headers["onnxship-worker"])
        time.sleep(0.02)
    assert seen == {"0", "1"}
    assert server.terminate() == 0


def test_sigterm_drains_both_workers_then_exits_0(
    start_server: StartServer, model_dir: Path
) -> None:
    # Requests wait up to 5 s for a batch to fill: SIGTERM lands while they are in flight.
    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", *WORKERS,
        "--max-batch-size", "64", "--max-batch-delay-ms", "5000",
    )  # fmt: skip
    url = f"{server.url}/v2/models/mlp/infer"
    gauge = 'onnxship_inference_in_flight{model="mlp",version="1"} '
    with ThreadPoolExecutor(12) as pool:
        in_flight = [pool.submit(one_connection, "POST", url, json=BODY) for _ in range(12)]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # the pod's gauge: both workers' requests
            if f"{gauge}12.0" in one_connection("GET", f"{server.url}/metrics").text:
                break
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        answers = [f.result() for f in in_flight]
    assert [r.status_code for r in answers] == [200] * 12
    assert {r.headers["onnxship-worker"] for r in answers} == {"0", "1"}
    assert server.proc.wait(30) == 0
    out = server.output()
    assert out.count("draining in-flight requests") == 2
    assert '"stopped"' in out


def test_a_killed_worker_ends_the_pod_non_zero(start_server: StartServer, model_dir: Path) -> None:
    server = start_server("--model", str(model_dir / "mlp.onnx"), *WORKERS)
    _, second = worker_pids(server)
    os.kill(second, signal.SIGKILL)
    assert server.proc.wait(30) == 128 + signal.SIGKILL
    assert f"worker 1 (pid {second}) was killed by SIGKILL: stopping the pod" in server.output()
    with pytest.raises(httpx.ConnectError):  # nothing left on the port
        httpx.get(f"{server.url}/v2/health/live")


def test_startup_errors_are_reported_once(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    bad = subprocess.run(
        [*CLI, "serve", "--model", str(tmp_path), "--http-port", "0", "--grpc-port", "0",
         "--workers", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 4, bad.stderr
    assert bad.stderr.count("cannot load the model") == 1 and "Traceback" not in bad.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [*CLI, "serve", "--model", str(model_dir / "mlp.onnx"), "--workers", "2",
             "--http-port", str(port), "--grpc-port", "-1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert busy.returncode == 1, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "Traceback" not in busy.stderr


def test_another_pod_cannot_share_a_pods_port(tmp_path: Path, model_dir: Path) -> None:
    """SO_REUSEPORT lets the kernel spread connections: it must not let a second server in."""
    http_port = free_port()
    first = start(
        ["--model", str(model_dir / "mlp.onnx"), *WORKERS], http_port, free_port(),
        tmp_path / "first.log",
    )  # fmt: skip
    try:
        second = subprocess.run(
            [*CLI, "serve", "--model", str(model_dir / "mlp.onnx"), *WORKERS,
             "--http-port", str(http_port), "--grpc-port", "-1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert f"cannot listen on 127.0.0.1:{http_port}" in second.stderr
    finally:
        assert first.terminate() == 0


@pytest.mark.skipif(cpu_limit() < 2, reason="with one CPU every model gets one worker")
def test_by_default_a_causal_lm_gets_one_process_and_an_encoder_one_per_cpu(
    start_server: StartServer, model_dir: Path, tiny_llm: Path
) -> None:
    llm = start_server("--model", str(tiny_llm), "--name", "tiny")
    encoder = start_server("--model", str(model_dir / "mlp.onnx"))
    assert "onnxship-worker" not in one_connection("GET", f"{llm.url}/v2/health/ready").headers
    assert '"started workers"' not in llm.output()
    assert f'"workers": {cpu_limit()}' in encoder.output()
    assert '"threads_each": 1' in encoder.output()  # the CPUs split between the workers
    assert encoder.output().count('"threads": 1,') == cpu_limit()  # each session's own


@pytest.mark.parametrize(
    ("workers", "threads", "cpus", "causal_lm", "want"),
    [
        (0, 0, 8, False, (8, 1)),  # default: a worker per CPU, one thread each
        (0, 0, 8, True, (1, 8)),  # a causal LM: one copy of its weights
        (2, 0, 8, False, (2, 4)),  # the CPUs split between the workers
        (4, 0, 2, False, (4, 1)),  # at least one thread each
        (3, 2, 8, False, (3, 2)),  # --threads is per worker
    ],
)
def test_workers_and_threads_from_the_cpu_limit(
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    threads: int,
    cpus: int,
    causal_lm: bool,
    want: tuple[int, int],
) -> None:
    monkeypatch.setattr("onnxship.serve.workers.cpu_limit", lambda: cpus)
    config = ServeConfig(model_path=Path("m.onnx"), workers=workers, threads=threads)
    n = worker_count(config, causal_lm)
    assert (n, worker_threads(config, n) if n > 1 else config.threads or cpus) == want
