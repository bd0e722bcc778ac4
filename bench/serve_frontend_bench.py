#!/usr/bin/env python
# ruff: noqa: E501  (a script: long report lines read better unwrapped)
"""What one `onnxship serve` process costs per request, on a model too small to hide it.

The model is an MLP 384 -> 384 -> 8 (FP32, batch 1), built here with onnx.helper: its run
takes a few microseconds, so what is measured is the front end (HTTP or gRPC, decoding,
scheduling, metrics, encoding). Everything under test runs pinned to one core (``--server-core``,
default 0) and the load generator to another (``--client-core``, default 1):

- anchor 1, the floor of the work: raw ``session.run`` in a loop, one thread, on the server core;
- anchor 2, the ceiling of the HTTP stack: a trivial aiohttp handler that reads the body and
  answers a fixed response of the same size as ours, on the server core (the same aiohttp,
  default event loop, no access log);
- anchor 3, the ceiling of the gRPC stack: a trivial grpc.aio ModelInfer that answers a fixed
  response, the same on grpc's thread-pool server (``grpc.server``, 16 threads), and on
  ours (``grpc_service.CoreServer``, the loop over gRPC's core that `serve` runs);
- ours: ``onnxship serve --threads 1`` (the CLI, as a pod starts it) over HTTP JSON, HTTP
  binary tensors (Triton's extension) and gRPC (raw contents), from this tree;
- before (``--before-tree DIR``, e.g. ``git archive <commit> operator | tar -x -C DIR``): the
  same server from another checkout, interleaved in the same run.

The HTTP load generator is a small asyncio keep-alive client over raw sockets (one request in
flight per connection, ``--connections`` of them) that checks every status line; gRPC uses
grpc.aio with pre-serialised requests. Cells are interleaved round by round, and each reports
req/s and the server process's CPU time per request (from /proc), which a busy neighbour on a
shared machine disturbs less than req/s.

    .venv/bin/python bench/serve_frontend_bench.py [--rounds 3] [--seconds 4] \
        [--before-tree /tmp/onnxship-before] [--out-json bench/results/raw/serve_frontend.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = "mlp"
IN, HIDDEN, OUT = 384, 384, 8
INFER_PATH = f"/v2/models/{NAME}/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"

# ---------------------------------------------------------------------------- the model


def build_mlp(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.models import mlp, save

    save(mlp(hidden=HIDDEN, inputs=IN, outputs=OUT), path)


def sample() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, IN)).astype(np.float32)


# ---------------------------------------------------------------------------- requests


def http_request(body: bytes, extra: dict[str, str]) -> bytes:
    head = [f"POST {INFER_PATH} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def json_request() -> bytes:
    # What tritonclient and most clients write: Python's json over float32 values as doubles.
    doc = {"inputs": [{"name": "x", "shape": [1, IN], "datatype": "FP32", "data": sample().ravel().tolist()}]}
    return http_request(json.dumps(doc).encode(), {"Content-Type": "application/json"})


def binary_request() -> bytes:
    x = sample()
    header = json.dumps({
        "inputs": [{"name": "x", "shape": [1, IN], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()
    return http_request(header + x.tobytes(), {
        "Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header)),
    })


def grpc_request_bytes() -> bytes:
    from onnxship.serve.proto import oip_pb2 as pb

    x = sample()
    req = pb.ModelInferRequest(model_name=NAME)
    req.inputs.add(name="x", datatype="FP32", shape=[1, IN])
    req.raw_input_contents.append(x.tobytes())
    return bytes(req.SerializeToString())


# ---------------------------------------------------------------------------- load generators


class _Conn(asyncio.Protocol):
    """One keep-alive connection with one request in flight; counts complete 200 answers."""

    def __init__(self, request: bytes, stats: dict[str, int], running: list[bool]) -> None:
        self.request, self.stats, self.running = request, stats, running
        self.buf = b""
        self.need = -1
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower() + b"\r\n"
                i = head.find(b"\r\ncontent-length:") + 17  # not inference-header-content-length
                length = int(head[i : head.find(b"\r\n", i)])
                self.status = buf[9:12]
                self.need = end + 4 + length
            if len(buf) < self.need:
                break
            buf = buf[self.need :]
            self.need = -1
            if self.status == b"200":
                self.stats["ok"] += 1
            else:
                self.stats["bad"] += 1
            if self.running[0]:
                self.transport.write(self.request)  # type: ignore[union-attr]
            else:
                self.transport.close()  # type: ignore[union-attr]
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def http_load(port: int, request: bytes, connections: int, warm_s: float, seconds: float,
                    on_window: Callable[[bool], None]) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stats = {"ok": 0, "bad": 0}
    running = [True]
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _Conn(request, stats, running), "127.0.0.1", port)
        conns.append(proto)
    await asyncio.sleep(warm_s)
    ok0, bad0 = stats["ok"], stats["bad"]
    on_window(True)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    ok, bad = stats["ok"] - ok0, stats["bad"] - bad0
    on_window(False)
    running[0] = False
    await asyncio.wait([c.closed for c in conns], timeout=10)
    return {"req_s": ok / elapsed, "ok": ok, "errors": bad, "seconds": elapsed}


async def grpc_load(port: int, request: bytes, connections: int, warm_s: float, seconds: float,
                    on_window: Callable[[bool], None]) -> dict[str, float]:
    import grpc

    # Bytes in, bytes out: the client does not pay for protobuf either way.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        stats = {"ok": 0, "bad": 0}
        running = True

        async def worker() -> None:
            while running:
                try:
                    await call(request)
                    stats["ok"] += 1
                except grpc.aio.AioRpcError:
                    stats["bad"] += 1

        tasks = [asyncio.create_task(worker()) for _ in range(connections)]
        await asyncio.sleep(warm_s)
        ok0, bad0 = stats["ok"], stats["bad"]
        on_window(True)
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        ok, bad = stats["ok"] - ok0, stats["bad"] - bad0
        on_window(False)
        running = False
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"req_s": ok / elapsed, "ok": ok, "errors": bad, "seconds": elapsed}


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waiting_seconds(pid: int) -> float:
    """Seconds the process's threads were runnable but not running (a busy neighbour)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just ended
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


class Target:
    """A server process pinned to the server core, and what it answers on."""

    def __init__(self, label: str, cmd: list[str], env: dict[str, str], ready_url: str,
                 http_port: int | None, grpc_port: int | None, log: Path) -> None:
        self.label, self.http_port, self.grpc_port = label, http_port, grpc_port
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.log = log
        try:
            wait_ready(ready_url, self.proc)
        except Exception:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


UVLOOP = "import asyncio, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "


def start_ours(label: str, tree: Path, model: Path, core: int, tmp: Path, uvloop: bool = False) -> Target:
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(tree / "operator"), "PYTHONUNBUFFERED": "1"}
    # --uvloop: the same server on uvloop's event loop (what `serve` would gain from it).
    code = (UVLOOP if uvloop else "") + "from onnxship.cli.main import main; main()"
    cmd = ["taskset", "-c", str(core), sys.executable, "-c", code, "--log-format", "json", "serve",
           "--model", str(model), "--name", NAME, "--threads", "1", "--host", "127.0.0.1",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port)]  # fmt: skip
    return Target(label, cmd, env, f"http://127.0.0.1:{http_port}/v2/health/ready",
                  http_port, grpc_port, tmp / f"{label}.log")


def start_stack_anchor(model: Path, core: int, tmp: Path, json_body: bytes, uvloop: bool = False,
                       grpc_server: str = "aio") -> Target:
    http_port, grpc_port = free_port(), free_port()
    body_file = tmp / "anchor_response.json"
    body_file.write_bytes(json_body)
    cmd = ["taskset", "-c", str(core), sys.executable, __file__, "--role", "stack-anchor",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--response", str(body_file)]
    if uvloop:
        cmd.append("--uvloop")
    cmd += ["--grpc-server", grpc_server]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    label = ("stack+uvloop" if uvloop else "stack") + ("" if grpc_server == "aio" else f"+grpc-{grpc_server}")
    return Target(label, cmd, env, f"http://127.0.0.1:{http_port}/ready", http_port, grpc_port,
                  tmp / f"{label}.log")


def stack_anchor(http_port: int, grpc_port: int, response: Path, uvloop: bool, grpc_server: str = "aio") -> None:
    """The trivial servers: aiohttp reads the body and answers fixed bytes; grpc.aio the same
    (``grpc_server``: "sync", grpc's thread-pool server; "core", ours on gRPC's core)."""
    import grpc
    from aiohttp import web

    from onnxship.serve.proto import oip_pb2 as pb
    from onnxship.serve.proto import oip_pb2_grpc as pb_grpc

    body = response.read_bytes()
    fixed = pb.ModelInferResponse(model_name=NAME, model_version="1")
    fixed.outputs.add(name="y", datatype="FP32", shape=[1, OUT])
    fixed.raw_output_contents.append(np.zeros(OUT, np.float32).tobytes())

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return fixed

    class SyncServicer(pb_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request: Any, context: Any) -> Any:
            return fixed

    async def main() -> None:
        app = web.Application()
        app.router.add_post(INFER_PATH, infer)
        app.router.add_get("/ready", ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        if grpc_server == "core":
            from onnxship.serve.grpc_service import CoreServer, InferenceServicer

            fixed_bytes = fixed.SerializeToString()

            class CoreServicer(InferenceServicer):
                async def ModelInfer(self, request: bytes, context: Any) -> Any:
                    return fixed_bytes

            core_server = CoreServer(CoreServicer(None), asyncio.get_running_loop(), options=[])  # type: ignore[arg-type]
            core_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
            await core_server.start()
        elif grpc_server == "sync":
            from concurrent.futures import ThreadPoolExecutor

            sync_server = grpc.server(ThreadPoolExecutor(16))
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(SyncServicer(), sync_server)
            sync_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
            sync_server.start()
        else:
            server = grpc.aio.server()
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
            server.add_insecure_port(f"127.0.0.1:{grpc_port}")
            await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    if uvloop:
        import uvloop as uv

        asyncio.set_event_loop_policy(uv.EventLoopPolicy())
    asyncio.run(main())


def raw_anchor(model: Path, seconds: float) -> None:
    """session.run in a loop, one thread, no spinning (as the server's session): runs/s and CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feeds = {"x": sample()}
    for _ in range(2000):
        sess.run(None, feeds)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for _ in range(500):
            sess.run(None, feeds)
        n += 500
    cpu = time.process_time() - c0
    print(json.dumps({"req_s": n / elapsed, "cpu_us": cpu / n * 1e6, "ok": n, "errors": 0}))


def run_raw(model: Path, core: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", str(core), sys.executable, __file__, "--role", "raw", "--model", str(model),
         "--seconds", str(seconds)],
        check=True, capture_output=True, text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------- the run


def measure(target: Target, protocol: str, requests: dict[str, bytes], args: argparse.Namespace) -> dict[str, float]:
    pid = target.proc.pid
    mark: dict[str, float] = {}

    def on_window(start: bool) -> None:
        key = "0" if start else "1"
        mark["c" + key], mark["w" + key] = cpu_seconds(pid), waiting_seconds(pid)

    if protocol == "grpc":
        assert target.grpc_port is not None
        load = grpc_load(target.grpc_port, requests["grpc"], args.connections, args.warm, args.seconds, on_window)
    else:
        assert target.http_port is not None
        load = http_load(target.http_port, requests[protocol], args.connections, args.warm, args.seconds, on_window)
    result = asyncio.run(load)
    ok = result["ok"] or 1
    result["cpu_us"] = (mark["c1"] - mark["c0"]) / ok * 1e6
    result["server_cpu_share"] = (mark["c1"] - mark["c0"]) / result["seconds"]
    result["server_waiting_share"] = (mark["w1"] - mark["w0"]) / result["seconds"]
    if result["errors"]:
        print(f"  !! {target.label} {protocol}: {result['errors']} non-200 answers", file=sys.stderr)
    return result


def check_answers(target: Target, model: Path, requests: dict[str, bytes]) -> None:
    """Each protocol answers what raw session.run does (a bench of wrong answers is no bench)."""
    import http.client

    import grpc
    import onnxruntime as ort

    from onnxship.serve.proto import oip_pb2 as pb

    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": sample()})[0]
    for proto in ("json", "binary"):
        conn = http.client.HTTPConnection("127.0.0.1", target.http_port, timeout=10)
        head, body = requests[proto].split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        conn.request("POST", INFER_PATH, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        if proto == "json":
            got = np.asarray(json.loads(data)["outputs"][0]["data"], np.float32)
        else:
            got = np.frombuffer(data[int(resp.headers[HEADER_LENGTH]) :], "<f4")
        np.testing.assert_allclose(got, want.ravel(), rtol=1e-5, atol=1e-6)
    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
        answer = pb.ModelInferResponse.FromString(
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(requests["grpc"])
        )
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4"), want.ravel(), rtol=1e-5, atol=1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["bench", "raw", "stack-anchor"], default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--response", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--grpc-server", choices=["aio", "sync", "core"], default="aio", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured window per cell")
    ap.add_argument("--warm", type=float, default=1.0, help="load before each window, not counted")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--protocols", nargs="+", default=["json", "binary", "grpc"], choices=["json", "binary", "grpc"])
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout served as 'after' (default: this one)")
    ap.add_argument("--before-tree", type=Path, help="another checkout's root, served as 'before'")
    ap.add_argument("--uvloop", action="store_true", help="also ours and the aiohttp anchor on uvloop (HTTP cells)")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()

    if args.role == "raw":
        return raw_anchor(args.model, args.seconds)
    if args.role == "stack-anchor":
        return stack_anchor(args.http_port, args.grpc_port, args.response, args.uvloop, args.grpc_server)

    os.sched_setaffinity(0, {args.client_core})
    sys.path.insert(0, str(ROOT / "operator"))
    requests = {"json": json_request(), "binary": binary_request(), "grpc": grpc_request_bytes()}
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="frontend-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "mlp.onnx"
        build_mlp(model)
        targets: list[Target] = []
        try:
            ours = start_ours("after", args.tree, model, args.server_core, tmp)
            targets.append(ours)
            check_answers(ours, model, requests)
            # The stack anchor answers our own JSON response, so both write the same bytes.
            conn_body = _our_json_response(ours.http_port or 0, requests)
            stack = start_stack_anchor(model, args.server_core, tmp, conn_body)
            targets.append(stack)
            servers = [ours]
            grpc_sync_stack = grpc_core_stack = None
            if "grpc" in args.protocols:
                grpc_sync_stack = start_stack_anchor(model, args.server_core, tmp, conn_body, grpc_server="sync")
                grpc_core_stack = start_stack_anchor(model, args.server_core, tmp, conn_body, grpc_server="core")
                targets += [grpc_sync_stack, grpc_core_stack]
            fast: list[Target] = []
            if args.uvloop:
                fast = [start_ours("after+uvloop", args.tree, model, args.server_core, tmp, uvloop=True),
                        start_stack_anchor(model, args.server_core, tmp, conn_body, uvloop=True)]
                targets += fast
            if args.before_tree:
                before = start_ours("before", args.before_tree, model, args.server_core, tmp)
                targets.append(before)
                servers.insert(0, before)
            cells: dict[str, list[dict[str, float]]] = {}
            for r in range(args.rounds):
                plan: list[tuple[str, Callable[[], dict[str, float]]]] = [
                    ("raw session.run", lambda: run_raw(model, args.server_core, args.seconds)),
                    ("aiohttp trivial", lambda: measure(stack, "json", requests, args)),
                ]
                for proto in args.protocols:
                    plan += [(f"{s.label} {proto}", (lambda s=s, p=proto: measure(s, p, requests, args))) for s in servers]
                    if fast and proto != "grpc":
                        plan.append((f"after+uvloop {proto}", lambda p=proto: measure(fast[0], p, requests, args)))
                if fast:
                    plan.append(("aiohttp+uvloop trivial", lambda: measure(fast[1], "json", requests, args)))
                if "grpc" in args.protocols:
                    plan.append(("grpc.aio trivial", lambda: measure(stack, "grpc", requests, args)))
                if grpc_sync_stack is not None and grpc_core_stack is not None:
                    plan.append(("grpc sync trivial", lambda: measure(grpc_sync_stack, "grpc", requests, args)))
                    plan.append(("grpc core trivial", lambda: measure(grpc_core_stack, "grpc", requests, args)))
                for key, fn in plan:
                    res = fn()
                    res["load"] = os.getloadavg()[0]
                    cells.setdefault(key, []).append(res)
                    wait = f"  waited {100 * res['server_waiting_share']:3.0f}%" if "server_waiting_share" in res else ""
                    print(f"round {r + 1} {key:24s} {res['req_s']:9.0f} req/s  {res['cpu_us']:7.1f} us CPU/req{wait}  load {res['load']:.2f}", flush=True)
        finally:
            for t in targets:
                t.stop()
    report = summarise(cells)
    print_report(report)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "bench": "serve_frontend", "started": started, "model": f"MLP {IN}->{HIDDEN}->{OUT} FP32 batch 1",
            "server_core": args.server_core, "client_core": args.client_core, "connections": args.connections,
            "seconds": args.seconds, "rounds": args.rounds, "load_before": load_before, "load_after": os.getloadavg(),
            "tree": str(args.tree), "before_tree": str(args.before_tree) if args.before_tree else None,
            "cells": cells, "summary": report,
        }
        args.out_json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out_json}")


def _our_json_response(port: int, requests: dict[str, bytes]) -> bytes:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", INFER_PATH, requests["json"].split(b"\r\n\r\n", 1)[1], {"Content-Type": "application/json"})
    return conn.getresponse().read()


def summarise(cells: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    med = {k: statistics.median(c["req_s"] for c in v) for k, v in cells.items()}
    cpu = {k: statistics.median(c["cpu_us"] for c in v) for k, v in cells.items()}
    out: dict[str, Any] = {"median_req_s": med, "median_cpu_us_per_req": cpu, "ratios": {}}
    raw, stack = med.get("raw session.run"), med.get("aiohttp trivial")
    # ours serves gRPC on CoreServer: its ceiling is that server's trivial cell
    grpc_stack = med.get("grpc core trivial", med.get("grpc.aio trivial"))
    for k, v in med.items():
        if " " not in k or k.split()[0] not in ("before", "after", "after+uvloop"):
            continue
        proto = k.split()[1]
        ratios = {"vs_raw": v / raw if raw else None}
        ceiling = grpc_stack if proto == "grpc" else stack
        if k.startswith("after+uvloop"):
            ceiling = med.get("aiohttp+uvloop trivial")
        ratios["vs_stack"] = v / ceiling if ceiling else None
        out["ratios"][k] = ratios
    return out


def print_report(report: dict[str, Any]) -> None:
    print("\nmedian over rounds:")
    for k, v in report["median_req_s"].items():
        line = f"  {k:24s} {v:9.0f} req/s  {report['median_cpu_us_per_req'][k]:7.1f} us CPU/req"
        if k in report["ratios"]:
            r = report["ratios"][k]
            line += f"   {r['vs_raw']:.3f}x raw  {r['vs_stack']:.2f}x its stack"
        print(line)


if __name__ == "__main__":
    main()
