#!/usr/bin/env python
# ruff: noqa: E501  (a script: long report lines and embedded peer servers read better unwrapped)
"""Benchmark `onnxship serve` on all-MiniLM-L6-v2 (seq 128) against its anchors and its peers.

A script, not a test. It measures, in one run and on one machine:

- the floor: raw ``session.run`` at batch 1 in this process, with the server's thread settings;
- the ceiling: the best rows/s raw ``session.run`` reaches at any batch size;
- ``onnxship serve`` (started through the CLI, as a pod does) at batch 1 over HTTP JSON,
  HTTP binary tensors and gRPC, and with 32 concurrent clients, dynamic batching off and on;
- the peers a user would pick instead, when their Python is given: a plain FastAPI/uvicorn
  endpoint that calls ``session.run`` (``--fastapi-python``), and KServe's Python model server
  (``--kserve-python``). Each runs from its own virtualenv so that their pins (KServe
  downgrades protobuf) stay out of the project's.

Batch-1 rounds interleave raw and served runs, because on a shared 2-vCPU VM the speed of the
same session drifts by tens of percent over minutes; ratios are taken within a round.

    .venv/bin/python bench/serve_bench.py [--fastapi-python /tmp/peer-venv/bin/python]
        [--kserve-python /tmp/kserve-venv/bin/python] [--out-json bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT.parent / "shared" / "models" / "minilm"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
NAME = "minilm"


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


class Proc:
    """A server subprocess, stopped by its own PID."""

    def __init__(
        self, cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        try:
            wait_ready(ready_url, self.proc)
        except Exception:
            self.stop()
            sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------- requests


def json_body(row: dict[str, np.ndarray]) -> bytes:
    return json.dumps({
        "inputs": [{"name": n, "datatype": "INT64", "shape": list(row[n].shape), "data": row[n].ravel().tolist()}
                   for n in INPUTS],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": False}}],
    }).encode()  # fmt: skip


def binary_body(row: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": n, "datatype": "INT64", "shape": list(row[n].shape),
                    "parameters": {"binary_data_size": row[n].nbytes}} for n in INPUTS],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    body = header + b"".join(np.ascontiguousarray(row[n], "<i8").tobytes() for n in INPUTS)
    return body, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def check_json(data: bytes) -> None:
    out = json.loads(data)["outputs"][0]
    assert len(out["data"]) == 384 * out["shape"][0], out["shape"]


def check_binary(data: bytes, headers: Any) -> None:
    n = int(headers["Inference-Header-Content-Length"])
    emb = np.frombuffer(data[n:], dtype="<f4")
    assert emb.size % 384 == 0


def tiny_model(path: Path, seq: int) -> None:
    """MiniLM's signature around almost no arithmetic: what a server costs per request shows
    when inference costs next to nothing."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((seq, 384)).astype(np.float32), "w")
    nodes = [helper.make_node("Cast", [n], [f"{n}_f"], to=TensorProto.FLOAT) for n in INPUTS]
    nodes += [
        helper.make_node("Sum", [f"{n}_f" for n in INPUTS], ["s"]),
        helper.make_node("MatMul", ["s", "w"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", seq]) for n in INPUTS],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 384])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants, from /proc."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


# ---------------------------------------------------------------------------- batch-1 latency


def http_latency(
    port: int, bodies: list[tuple[bytes, dict[str, str]]], n: int, path: str, binary: bool
) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times: list[float] = []
    for i in range(n):
        body, headers = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if binary:
            check_binary(data, resp.headers)
        else:
            check_json(data)
        times.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise RuntimeError(data[:300])
    conn.close()
    return times


def grpc_requests(rows: list[dict[str, np.ndarray]]) -> list[Any]:
    from onnxship.serve.proto import oip_pb2 as pb

    requests = []
    for row in rows:
        req = pb.ModelInferRequest(model_name=NAME)
        for n in INPUTS:
            req.inputs.add(name=n, datatype="INT64", shape=row[n].shape)
            req.raw_input_contents.append(np.ascontiguousarray(row[n], "<i8").tobytes())
        req.outputs.add(name=OUTPUT)
        requests.append(req)
    return requests


def grpc_latency(port: int, requests: list[Any], n: int) -> list[float]:
    import grpc

    from onnxship.serve.proto import oip_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(requests[0])
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            resp = stub.ModelInfer(requests[i % len(requests)])
            np.frombuffer(resp.raw_output_contents[0], dtype="<f4")
            times.append(time.perf_counter() - t0)
    return times


def raw_latency(
    session: ort.InferenceSession, rows: list[dict[str, np.ndarray]], n: int
) -> list[float]:
    times = []
    for i in range(n):
        feeds = rows[i % len(rows)]
        t0 = time.perf_counter()
        session.run([OUTPUT], feeds)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------- throughput


async def http_load(port: int, bodies: list[tuple[bytes, dict[str, str]]], path: str, clients: int,
                    seconds: float, binary: bool) -> tuple[float, int]:  # fmt: skip
    import aiohttp

    url = f"http://127.0.0.1:{port}{path}"
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        deadline = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.perf_counter() < deadline:
                body, headers = bodies[i % len(bodies)]
                i += clients
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
                    if binary:
                        check_binary(data, resp.headers)
                    else:
                        check_json(data)
                    done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return done / elapsed, errors


async def grpc_load(
    port: int, requests: list[Any], clients: int, seconds: float
) -> tuple[float, int]:
    import grpc

    from onnxship.serve.proto import oip_pb2_grpc as pb_grpc

    done = errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.perf_counter() < deadline:
                try:
                    resp = await stub.ModelInfer(requests[i % len(requests)])
                    np.frombuffer(resp.raw_output_contents[0], dtype="<f4")
                    done += 1
                except grpc.aio.AioRpcError:
                    errors += 1
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return done / elapsed, errors


def raw_throughput(
    session: ort.InferenceSession, data: dict[str, np.ndarray], batch: int, seconds: float
) -> float:
    rows = 0
    start = time.perf_counter()
    i = 0
    total = data[INPUTS[0]].shape[0]
    while time.perf_counter() - start < seconds or rows == 0:
        lo = (i * batch) % (total - batch + 1)
        session.run([OUTPUT], {n: data[n][lo : lo + batch] for n in INPUTS})
        rows += batch
        i += 1
    return rows / (time.perf_counter() - start)


def raw_parallel_throughput(
    session: ort.InferenceSession,
    data: dict[str, np.ndarray],
    batch: int,
    seconds: float,
    callers: int,
) -> float:
    """Rows/s of ``callers`` threads calling one session at once (ORT releases the GIL): the
    ceiling of a server running several single-threaded runs side by side."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(callers) as pool:
        rates = list(
            pool.map(lambda _: raw_throughput(session, data, batch, seconds), range(callers))
        )
    return sum(rates)


# ---------------------------------------------------------------------------- peers

FASTAPI_PEER = """
import sys, numpy as np, onnxruntime as ort, uvicorn
from fastapi import FastAPI, Request
model, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as onnxship and the raw anchor
session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
app = FastAPI()

@app.get("/v2/health/ready")
def ready():
    return {"ready": True}

@app.post("/v2/models/minilm/infer")
def infer(body: dict):  # a plain sync endpoint: FastAPI runs it on its thread pool
    feeds = {t["name"]: np.asarray(t["data"], dtype=np.int64).reshape(t["shape"]) for t in body["inputs"]}
    emb = session.run(["sentence_embedding"], feeds)[0]
    return {"model_name": "minilm", "outputs": [{"name": "sentence_embedding", "datatype": "FP32",
            "shape": list(emb.shape), "data": emb.ravel().tolist()}]}

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""

KSERVE_PEER = """
import sys
model_path, port, grpc_port, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sys.argv = [sys.argv[0], "--http_port", str(port), "--grpc_port", grpc_port, "--workers", "1"]
import numpy as np, onnxruntime as ort, kserve
from kserve import InferRequest, InferResponse, InferOutput

class MiniLM(kserve.Model):
    def load(self):
        so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        emb = self.session.run(["sentence_embedding"], feeds)[0]
        out = InferOutput(name="sentence_embedding", shape=list(emb.shape), datatype="FP32")
        out.set_data_from_numpy(emb, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "0")

m = MiniLM("minilm"); m.load()
kserve.ModelServer().start([m])
"""


def overhead_phase(
    args: argparse.Namespace, tmp: Path, rows: list[dict[str, np.ndarray]], path: str
) -> dict[str, Any]:
    """Server CPU per request and req/s on a model that costs almost nothing: the part of a
    request the server itself spends, ours against each peer. CPU time is counted from /proc,
    so it holds on a busy machine where wall-clock throughput does not."""
    seq = int(rows[0][INPUTS[0]].shape[1])
    model = tmp / "tiny.onnx"
    tiny_model(model, seq)
    json_bodies = [(json_body(r), {"Content-Type": "application/json"}) for r in rows]
    bin_bodies = [binary_body(r) for r in rows]
    servers: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    try:
        port = free_port()
        servers["onnxship"] = Proc(
            [sys.executable, "-c", "from onnxship.cli.main import main; main()", "--log-format", "json",
             "serve", "--model", str(model), "--name", NAME, "--http-port", str(port),
             "--grpc-port", str(free_port()), "--threads", "1", "--max-queue-size", "256"],
            f"http://127.0.0.1:{port}/v2/health/ready", tmp / "tiny-onnxship.log")  # fmt: skip
        ports["onnxship"] = port
        for peer, script_text, extra in (
            ("fastapi", FASTAPI_PEER, []),
            ("kserve", KSERVE_PEER, [str(free_port())]),
        ):
            python = getattr(args, f"{peer}_python")
            if not python:
                continue
            port = free_port()
            script = tmp / f"tiny_{peer}.py"
            script.write_text(textwrap.dedent(script_text))
            servers[peer] = Proc([python, str(script), str(model), str(port), *extra, "1"],
                                 f"http://127.0.0.1:{port}/v2/health/ready", tmp / f"tiny-{peer}.log")  # fmt: skip
            ports[peer] = port
        loads = {f"{k}_json": (v, json_bodies, False) for k, v in ports.items()}
        loads["onnxship_binary"] = (ports["onnxship"], bin_bodies, True)
        for port, bodies, binary in loads.values():
            asyncio.run(http_load(port, bodies, path, args.clients, 0.5, binary))  # warm-up
        rate: dict[str, list[float]] = {k: [] for k in loads}
        cpu_us: dict[str, list[float]] = {k: [] for k in loads}
        shuffle = random.Random(args.seed + 1)
        print(f"server overhead, tiny model, {args.overhead_rounds} rounds, {args.clients} clients x "
              f"{args.overhead_seconds:.0f} s ...", flush=True)  # fmt: skip
        for r in range(args.overhead_rounds):
            order = list(loads)
            shuffle.shuffle(order)
            for tag in order:
                port, bodies, binary = loads[tag]
                pid = servers[tag.split("_")[0]].proc.pid
                before = cpu_seconds(pid)
                t0 = time.perf_counter()
                r_s, _ = asyncio.run(
                    http_load(port, bodies, path, args.clients, args.overhead_seconds, binary)
                )
                wall = time.perf_counter() - t0
                rate[tag].append(r_s)
                cpu_us[tag].append((cpu_seconds(pid) - before) / max(1.0, r_s * wall) * 1e6)
            print(f"  round {r + 1}: " + ", ".join(
                f"{k} {rate[k][-1]:.0f} req/s {cpu_us[k][-1]:.0f} us CPU/req" for k in loads), flush=True)  # fmt: skip
    finally:
        for p in servers.values():
            p.stop()
    return {"rate": rate, "cpu_us_per_request": cpu_us}


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="batch-1 latency rounds")
    ap.add_argument("--tput-rounds", type=int, default=2, help="throughput rounds")
    ap.add_argument("--b1-requests", type=int, default=150, help="per protocol and round")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0, help="per throughput measurement")
    ap.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="batching on; 0: the best batch size of a raw probe",
    )
    ap.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    ap.add_argument(
        "--fastapi-python", help="python of a virtualenv with fastapi, uvicorn, onnxruntime"
    )
    ap.add_argument("--kserve-python", help="python of a virtualenv with kserve and onnxruntime")
    ap.add_argument("--seed", type=int, default=1, help="of the throughput rounds' order")
    ap.add_argument("--overhead-rounds", type=int, default=3, help="tiny-model rounds; 0: none")
    ap.add_argument("--overhead-seconds", type=float, default=3.0)
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()

    model = args.model_dir / "model.onnx"
    z = np.load(args.model_dir / "inputs.npz")
    data = {n: z[n] for n in INPUTS}
    rows = [{n: data[n][i : i + 1] for n in INPUTS} for i in range(64)]
    json_bodies = [(json_body(r), {"Content-Type": "application/json"}) for r in rows]
    bin_bodies = [binary_body(r) for r in rows]
    grpc_reqs = grpc_requests(rows)
    path = f"/v2/models/{NAME}/infer"
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results: dict[str, Any] = {
        "threads": args.threads,
        "seq": int(data[INPUTS[0]].shape[1]),
        "clients": args.clients,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }

    # The raw anchors: the server's session options, and ORT's defaults (spinning) for reference.
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    raw = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    so_default = ort.SessionOptions()
    so_default.intra_op_num_threads = args.threads
    so_default.inter_op_num_threads = 1
    raw_default = ort.InferenceSession(str(model), so_default, providers=["CPUExecutionProvider"])
    so_one = ort.SessionOptions()
    so_one.intra_op_num_threads = 1
    so_one.inter_op_num_threads = 1
    so_one.add_session_config_entry("session.intra_op.allow_spinning", "0")
    raw_one = ort.InferenceSession(str(model), so_one, providers=["CPUExecutionProvider"])
    cpus = os.cpu_count() or 1
    for s in (raw, raw_default, raw_one):
        raw_latency(s, rows, 10)

    batch_sizes = (1, 2, 4, 8, 16, 32)
    max_batch = args.max_batch_size
    if not max_batch:
        probe = {b: raw_throughput(raw, data, b, 3.0) for b in batch_sizes}
        max_batch = max(probe, key=probe.__getitem__)
        print(f"raw probe {probe}: batching on uses --max-batch-size {max_batch}", flush=True)
    results["max_batch_size"] = max_batch

    # Every server up at once (idle ones cost nothing: no spinning), so that rounds interleave.
    servers: list[Proc] = []
    ports: dict[str, tuple[int, int]] = {}

    def onnxship(tag: str, *extra: str) -> None:
        http_port, grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-c", "from onnxship.cli.main import main; main()", "--log-format", "json",
               "serve", "--model", str(model), "--name", NAME, "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--threads", str(args.threads), "--max-queue-size", "256", *extra]  # fmt: skip
        servers.append(
            Proc(cmd, f"http://127.0.0.1:{http_port}/v2/health/ready", tmp / f"{tag}.log")
        )
        ports[tag] = (http_port, grpc_port)

    batching = [
        "--max-batch-size",
        str(max_batch),
        "--max-batch-delay-ms",
        str(args.max_batch_delay_ms),
    ]
    try:
        onnxship("off")
        onnxship("on", *batching)
        onnxship("on_x2", *batching, "--instances", "2")
        onnxship("spin", "--spin")  # ORT's default spinning, against raw_ort_defaults
        # The throughput setting (serving.instances = CPUs, threads 1): one run per core.
        onnxship("tput", "--threads", "1", "--instances", str(cpus),
                 "--max-batch-size", str(min(4, max_batch)), "--max-batch-delay-ms", str(args.max_batch_delay_ms))  # fmt: skip
        if args.fastapi_python:
            port = free_port()
            script = tmp / "fastapi_peer.py"
            script.write_text(textwrap.dedent(FASTAPI_PEER))
            servers.append(Proc([args.fastapi_python, str(script), str(model), str(port), str(args.threads)],
                                f"http://127.0.0.1:{port}/v2/health/ready", tmp / "fastapi.log"))  # fmt: skip
            ports["fastapi"] = (port, 0)
            # The same peer with one intra-op thread: its thread pool then runs one request
            # per core side by side, its own best setting for throughput.
            port = free_port()
            servers.append(Proc([args.fastapi_python, str(script), str(model), str(port), "1"],
                                f"http://127.0.0.1:{port}/v2/health/ready", tmp / "fastapi_t1.log"))  # fmt: skip
            ports["fastapi_t1"] = (port, 0)
        if args.kserve_python:
            port = free_port()
            script = tmp / "kserve_peer.py"
            script.write_text(textwrap.dedent(KSERVE_PEER))
            servers.append(Proc([args.kserve_python, str(script), str(model), str(port), str(free_port()), str(args.threads)],
                                f"http://127.0.0.1:{port}/v2/health/ready", tmp / "kserve.log"))  # fmt: skip
            ports["kserve"] = (port, 0)
        for hp, _ in ports.values():
            http_latency(hp, json_bodies, 5, path, False)

        off_http, off_grpc = ports["off"]
        on_http, on_grpc = ports["on"]
        b1_measures: dict[str, Callable[[], list[float]]] = {
            "raw": lambda: raw_latency(raw, rows, args.b1_requests),
            "raw_ort_defaults": lambda: raw_latency(raw_default, rows, args.b1_requests),
            "onnxship_json": lambda: http_latency(
                off_http, json_bodies, args.b1_requests, path, False
            ),
            "onnxship_binary": lambda: http_latency(
                off_http, bin_bodies, args.b1_requests, path, True
            ),
            "onnxship_grpc": lambda: grpc_latency(off_grpc, grpc_reqs, args.b1_requests),
            "onnxship_binary_spin": lambda: http_latency(
                ports["spin"][0], bin_bodies, args.b1_requests, path, True
            ),
        }
        for peer in ("fastapi", "kserve"):
            if peer in ports:
                b1_measures[f"{peer}_json"] = lambda p=ports[peer][0]: http_latency(
                    p, json_bodies, args.b1_requests, path, False
                )
        b1: dict[str, list[dict[str, float]]] = {k: [] for k in b1_measures}
        b1_last: dict[str, list[float]] = {}  # the last round's requests, for a latency plot
        print(
            f"batch-1 latency, {args.rounds} rounds x {args.b1_requests} requests each ...",
            flush=True,
        )
        for r in range(args.rounds):
            for key, measure in b1_measures.items():
                t = measure()
                b1[key].append({"p50": pct(t, 50), "p99": pct(t, 99)})
                b1_last[key] = [round(x * 1e3, 4) for x in t]
            print(
                f"  round {r + 1}: "
                + ", ".join(f"{k} {v[-1]['p50']:.1f}/{v[-1]['p99']:.1f}" for k, v in b1.items()),
                flush=True,
            )

        loads: dict[str, Callable[[], Any]] = {
            "onnxship_off_binary": lambda: http_load(
                off_http, bin_bodies, path, args.clients, args.seconds, True
            ),
            "onnxship_on_binary": lambda: http_load(
                on_http, bin_bodies, path, args.clients, args.seconds, True
            ),
            "onnxship_on_json": lambda: http_load(
                on_http, json_bodies, path, args.clients, args.seconds, False
            ),
            "onnxship_on_grpc": lambda: grpc_load(on_grpc, grpc_reqs, args.clients, args.seconds),
            "onnxship_on_x2_binary": lambda: http_load(
                ports["on_x2"][0], bin_bodies, path, args.clients, args.seconds, True
            ),
        }
        loads["onnxship_tput_binary"] = lambda: http_load(
            ports["tput"][0], bin_bodies, path, args.clients, args.seconds, True
        )
        loads["onnxship_tput_json"] = lambda: http_load(
            ports["tput"][0], json_bodies, path, args.clients, args.seconds, False
        )
        for peer in ("fastapi", "fastapi_t1", "kserve"):
            if peer in ports:
                loads[f"{peer}_json"] = lambda p=ports[peer][0]: http_load(
                    p, json_bodies, path, args.clients, args.seconds, False
                )
        tput: dict[str, list[float]] = {k: [] for k in loads}
        errors: dict[str, int] = dict.fromkeys(loads, 0)
        ceilings: list[dict[str, float]] = []
        print(
            f"throughput, {args.tput_rounds} rounds, {args.clients} clients x {args.seconds:.0f} s ...",
            flush=True,
        )
        # A new order every round (seeded): on a shared VM speed drifts within a round too, and
        # a fixed order would hand the same slot, fast or slow, to the same server each time.
        shuffle = random.Random(args.seed)
        for r in range(args.tput_rounds):
            order = [*loads, "raw"]
            shuffle.shuffle(order)
            line = []
            for tag in order:
                if tag == "raw":
                    t = max(2.0, args.seconds / 3)
                    ceilings.append(
                        {str(b): raw_throughput(raw, data, b, t) for b in batch_sizes}
                        | {
                            f"{b}x{cpus}t1": raw_parallel_throughput(raw_one, data, b, t, cpus)
                            for b in (1, 4)
                        }
                    )
                    c = ceilings[-1]
                    line.append(
                        f"raw best {max(c.values()):.1f} rows/s (b{max(c, key=c.__getitem__)})"
                    )
                    continue
                rate, errs = asyncio.run(loads[tag]())
                tput[tag].append(rate)
                errors[tag] += errs
                line.append(f"{tag} {rate:.1f}")
            print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    finally:
        for p in servers:
            p.stop()

    if args.overhead_rounds:
        results["overhead"] = overhead_phase(args, tmp, rows, path)

    # ---- report: ratios within each round, then their median.
    results["loadavg_end"] = os.getloadavg()
    med = statistics.median
    # Each served figure against the raw run with the same session options.
    anchor = {k: "raw_ort_defaults" if k.endswith("_spin") else "raw" for k in b1}
    b1_ratio = {
        k: med(b1[k][i]["p50"] / b1[anchor[k]][i]["p50"] for i in range(args.rounds)) for k in b1
    }
    best = [max(c.values()) for c in ceilings]
    t_ratio = {k: med(v[i] / best[i] for i in range(args.tput_rounds)) for k, v in tput.items()}
    results.update(b1_rounds=b1, b1_last_round_ms=b1_last, b1_p50_ratio_vs_raw=b1_ratio, raw_ceilings=ceilings, throughput_rounds=tput,
                   throughput_ratio_vs_ceiling=t_ratio, errors=errors)  # fmt: skip
    print("\n== summary (ratios are per round, then the median over rounds) ==")
    print(
        f"load average at start {results['loadavg_start'][0]:.1f}, at end {results['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"{'batch 1':24s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 / raw':>10s}  (_spin: / raw_ort_defaults)"
    )
    for k in b1:
        print(
            f"{k:24s} {med(x['p50'] for x in b1[k]):8.2f} {med(x['p99'] for x in b1[k]):8.2f} {b1_ratio[k]:10.3f}"
        )
    print(
        f"\n{'32 clients':24s} {'req/s':>8s} {'/ ceiling':>10s}  (ceiling: best raw session.run, median {med(best):.1f} rows/s)"
    )
    for k, v in tput.items():
        print(f"{k:24s} {med(v):8.1f} {t_ratio[k]:10.3f}  errors {errors[k]}")
    peers = [p for p in ("fastapi_json", "fastapi_t1_json", "kserve_json") if p in tput]
    if peers:
        print(
            f"\n{'32 clients, ours / peer':24s} "
            + " ".join(f"{p:>14s}" for p in peers)
            + "  (median of per-round ratios)"
        )
        for k in (k for k in tput if k.startswith("onnxship")):
            cells = (med(a / b for a, b in zip(tput[k], tput[p], strict=True)) for p in peers)
            print(f"{k:24s} " + " ".join(f"{c:14.3f}" for c in cells))
    if "overhead" in results:
        o = results["overhead"]
        print(f"\n{'tiny model, 32 clients':24s} {'req/s':>8s} {'us CPU/req':>11s}")
        for k in o["rate"]:
            print(f"{k:24s} {med(o['rate'][k]):8.0f} {med(o['cpu_us_per_request'][k]):11.0f}")
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
