#!/usr/bin/env python
# ruff: noqa: E501  (a script: embedded peer servers and report lines read better unwrapped)
"""How `onnxship serve` scales with cores, against raw ONNX Runtime and its peers (issue 22).

For each model and each core count N, in one run on one machine:

- **raw** (the ceiling): N spawned processes, each a single-threaded ``InferenceSession``
  calling ``session.run`` at batch 1 in a loop, all pinned to the server's N cores;
- **ours**: ``onnxship serve --workers N --threads 1`` pinned to those cores (where this
  tree's serve has ``--workers``), and ``--instances N --threads 1`` (the setting before
  workers) as the "before" row, each over HTTP JSON, HTTP binary (Triton's binary tensor
  extension) and gRPC;
- **peers**: FastAPI + uvicorn with N workers (one single-threaded session each) and KServe's
  ModelServer with ``--workers N``, both over the same JSON v2 requests, each from its own
  virtualenv (``make .cache/bench/peers/fastapi/.installed .cache/bench/peers/kserve/.installed``).

The load comes from bench/loadgen.py (closed loop, keep-alive, 96 connections by default) on
the cores the server does not have; where none are left (N = all cores) it shares them, and
the output says so. Every answer's status is read and outputs are spot-checked against
``session.run``; an error never counts as throughput. Measurements interleave in a new
random order every round; ratios are taken within a round, then their median.

Models: all-MiniLM-L6-v2 int8 (plain ``quantize_dynamic`` of ../shared/models/minilm, cached
under .cache/bench/scaling/) at seq 128, and an MLP 384→384→8 built with onnx.helper, both at
batch 1 per request.

    .venv/bin/python bench/scaling_bench.py [--cores 1,2] [--rounds 3] [--seconds 5]
        [--models minilm mlp] [--out-json bench/results/raw/scaling.json]

Core counts default from this machine: 1, 2 on 2 cores; 2, 4, 8 on 16. It needs the project
installed (its pure-Python dependencies and onnxruntime) and nothing else; the peers are
skipped, said so, when their virtualenvs are absent. On a 16-core machine, from a copy of the
tree (with ../shared/models/minilm beside it, or --minilm-dir; without it only the MLP runs):

    python3.11 -m venv .venv && .venv/bin/pip install -e .
    make .cache/bench/peers/fastapi/.installed .cache/bench/peers/kserve/.installed  # peers
    .venv/bin/python bench/run_all.py --only scaling    # or bench/scaling_bench.py --rounds 3

Besides req/s, every measurement records the CPU seconds the server's processes (or raw's)
got in the window: on a shared machine the per-CPU-second ratios are the ones other tenants'
load does not move.
"""

from __future__ import annotations

import argparse
import hashlib
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
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "scaling"
PEERS = ROOT / ".cache" / "bench" / "peers"
DEFAULT_MINILM = ROOT.parent / "shared" / "models" / "minilm"
PROTOCOLS = ("json", "binary", "grpc")
ROWS = 64  # distinct requests per model, cycled

# ---------------------------------------------------------------------------- cores


def ordered_cpus() -> list[int]:
    """The CPUs this process may use, one per physical core first, then their SMT siblings:
    N server cores are then N real cores where the machine has them."""
    cpus = sorted(os.sched_getaffinity(0))
    rank: dict[int, tuple[int, int]] = {}
    seen: dict[str, int] = {}
    for c in cpus:
        try:
            sib = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            sib = str(c)
        rank[c] = (seen.get(sib, 0), c)
        seen[sib] = seen.get(sib, 0) + 1
    return sorted(cpus, key=lambda c: rank[c])


def default_cores(total: int) -> list[int]:
    """1, 2 on 2 cores; on 8+ cores the powers of two up to half the machine from 2 (2, 4, 8 on
    16), so that the load generator keeps as many cores as the server."""
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= total]
    if total >= 8:
        ns = [n for n in ns if 2 <= n <= total // 2]
    return ns


def placement(cpus: list[int], n: int, max_procs: int) -> dict[str, Any]:
    server = sorted(cpus[:n])
    rest = sorted(cpus[n:])
    shared = not rest
    load = rest or sorted(cpus)
    return {
        "server_cores": server,
        "loadgen_cores": load,
        "loadgen_shares_server_cores": shared,
        "loadgen_processes": max(1, min(max_procs, len(load))),
    }


# ---------------------------------------------------------------------------- models


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def minilm_int8(src_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """MiniLM quantized with plain ``quantize_dynamic`` (int8 weights), cached by the source's
    digest; rows from its inputs.npz (seq 128), or made up where the file is absent."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = src_dir / "model.onnx"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no MiniLM here (--minilm-dir, or --models mlp)")
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"minilm-int8-{sha256(src)[:12]}.onnx"
    if not out.exists():
        tmp = out.with_suffix(".tmp.onnx")
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
        tmp.rename(out)
    npz = src_dir / "inputs.npz"
    if npz.exists():
        z = np.load(npz)
        feeds = {n: np.ascontiguousarray(z[n][:ROWS, :128], dtype=np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")}
    else:
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, 30000, (ROWS, 128), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return out, feeds


def mlp(dim: int = 384, hidden: int = 384, classes: int = 8) -> tuple[Path, dict[str, np.ndarray]]:
    """x[batch, 384] -> MatMul+Add -> Relu -> MatMul+Add -> y[batch, 8], seeded weights."""
    path = CACHE / f"mlp-{dim}-{hidden}-{classes}.onnx"
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        from tests.helpers.models import mlp as mlp_model
        from tests.helpers.models import save

        save(mlp_model(hidden=hidden, inputs=dim, outputs=classes, seed=22), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    # values with 4 decimals: short in JSON, and exactly the float32 the server will parse
    x = np.round(np.random.default_rng(7).standard_normal((ROWS, dim)), 4).astype(np.float32)
    return path, {"x": x}


MODELS = {
    # warm-up >= one answer per connection: 96 connections wait seconds for MiniLM on 1-2 cores
    "minilm": {"title": "MiniLM int8, seq 128", "output": "sentence_embedding", "atol": 2e-3,
               "seconds": 10.0, "warmup": 6.0},
    "mlp": {"title": "MLP 384→384→8", "output": "y", "atol": 1e-4, "seconds": 5.0, "warmup": 2.0},
}

# ---------------------------------------------------------------------------- requests

DATATYPE = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def one_thread_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the servers
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def rows_of(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = next(iter(feeds.values())).shape[0]
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]


def requests_for(name: str, output: str, rows: list[dict[str, np.ndarray]]) -> dict[str, list[bytes]]:
    """Per protocol, the bytes of every request, built once."""
    from onnxship.serve.proto import oip_pb2 as pb

    path = f"/v2/models/{name}/infer"
    out: dict[str, list[bytes]] = {p: [] for p in PROTOCOLS}
    for row in rows:
        body = json.dumps({
            "inputs": [{"name": k, "datatype": DATATYPE[v.dtype], "shape": list(v.shape),
                        "data": np.round(v, 4).ravel().tolist() if v.dtype == np.float32 else v.ravel().tolist()}
                       for k, v in row.items()],
            "outputs": [{"name": output, "parameters": {"binary_data": False}}],
        }, separators=(",", ":")).encode()  # fmt: skip
        out["json"].append(loadgen.http_request(path, body))
        header = json.dumps({
            "inputs": [{"name": k, "datatype": DATATYPE[v.dtype], "shape": list(v.shape),
                        "parameters": {"binary_data_size": v.nbytes}} for k, v in row.items()],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }, separators=(",", ":")).encode()  # fmt: skip
        raw = b"".join(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes() for v in row.values())
        out["binary"].append(loadgen.http_request(path, header + raw, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header))}))  # fmt: skip
        req = pb.ModelInferRequest(model_name=name)
        for k, v in row.items():
            req.inputs.add(name=k, datatype=DATATYPE[v.dtype], shape=v.shape)
            req.raw_input_contents.append(np.ascontiguousarray(v).tobytes())
        req.outputs.add(name=output)
        out["grpc"].append(req.SerializeToString())
    return out


# ---------------------------------------------------------------------------- raw anchor


def raw_work(prepared: Any, *args: Any) -> Any:
    """One single-threaded session calling ``run`` at batch 1 in a loop (loadgen.timed)."""
    if prepared is None:
        model, rows, output = args
        session = one_thread_session(Path(model))
        for r in rows[:4]:
            session.run([output], r)
        return session, rows, output
    (session, rows, output), (t_start, t_end) = prepared, args
    i = runs = 0
    n = len(rows)
    now = time.monotonic()
    c0 = None
    while now < t_end:
        session.run([output], rows[i % n])
        i += 1
        now = time.monotonic()
        if t_start <= now < t_end:
            if c0 is None:
                c0 = time.process_time()
            runs += 1
    return {"runs": runs, "cpu_s": time.process_time() - (c0 or time.process_time())}


def raw_rows_per_s(model: Path, rows: list[dict[str, np.ndarray]], output: str, n: int,
                   cores: list[int], warmup: float, seconds: float) -> dict[str, float]:  # fmt: skip
    """rows/s of N pinned processes, and the CPU seconds they got over the window."""
    parts, _ = loadgen.timed(raw_work, [(str(model), rows, output)] * n, cores, warmup, seconds)
    return {"rps": sum(p["runs"] for p in parts) / seconds, "cpu_s": sum(p["cpu_s"] for p in parts)}


# ---------------------------------------------------------------------------- servers

FASTAPI_PEER = """
import os, numpy as np, onnxruntime as ort
from fastapi import FastAPI
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as onnxship and the raw anchor
session = ort.InferenceSession(os.environ["PEER_MODEL"], so, providers=["CPUExecutionProvider"])
NAME = os.environ["PEER_NAME"]
DT = {"INT64": np.int64, "FP32": np.float32, "INT32": np.int32}
app = FastAPI()

@app.get("/v2/health/ready")
def ready():
    return {"ready": True}

@app.post(f"/v2/models/{NAME}/infer")
def infer(body: dict):  # a plain sync endpoint, as serve_bench.py's peer: FastAPI runs it on its thread pool
    feeds = {t["name"]: np.asarray(t["data"], dtype=DT[t["datatype"]]).reshape(t["shape"]) for t in body["inputs"]}
    names = [o["name"] for o in body.get("outputs") or []] or [o.name for o in session.get_outputs()]
    outs = session.run(names, feeds)
    return {"model_name": NAME, "outputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape),
            "data": v.ravel().tolist()} for n, v in zip(names, outs)]}
"""

KSERVE_PEER = """
import os, sys
# KServe parses sys.argv when imported (and its spawned workers get this argv too)
sys.argv = [sys.argv[0], "--http_port", os.environ["PEER_PORT"], "--grpc_port", os.environ["PEER_GRPC_PORT"],
            "--workers", os.environ["PEER_WORKERS"]]
import numpy as np, onnxruntime as ort, kserve
from kserve import InferOutput, InferResponse


class OnnxModel(kserve.Model):
    # --workers > 1: KServe pickles the model into each spawned worker, and a session does not
    # pickle, so each worker opens its own on its first request (one single-threaded session each)
    session = None

    def load(self):
        self.ready = True
        return True

    def __getstate__(self):
        state = dict(self.__dict__); state.pop("session", None)
        return state

    def predict(self, payload, headers=None):
        if self.session is None:
            so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(os.environ["PEER_MODEL"], so, providers=["CPUExecutionProvider"])
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        names = [o.name for o in (payload.request_outputs or [])] or [o.name for o in self.session.get_outputs()]
        outs = []
        for n, v in zip(names, self.session.run(names, feeds)):
            o = InferOutput(name=n, shape=list(v.shape), datatype="FP32")
            o.set_data_from_numpy(v, binary_data=False)
            outs.append(o)
        return InferResponse(model_name=self.name, infer_outputs=outs, response_id=payload.id or "0")


if __name__ == "__main__":
    m = OnnxModel(os.environ["PEER_NAME"]); m.load()
    kserve.ModelServer().start([m])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def settle(servers: dict[str, Server], timeout: float = 90.0) -> float:
    """Wait until every server is idle: requests queued when the load generator hung up are
    still computed (a server does not cancel them), and would run into the next measurement."""
    t0 = time.monotonic()
    before = sum(s.cpu_s() for s in servers.values())
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        now = sum(s.cpu_s() for s in servers.values())
        if now - before < 0.05:  # under a tenth of a core over half a second
            break
        before = now
    return time.monotonic() - t0


class Server:
    """A server subprocess pinned to ``cores``, stopped by its own process group."""

    def __init__(self, tag: str, cmd: list[str], cores: list[int], port: int, log: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None, grpc_port: int = 0) -> None:  # fmt: skip
        self.tag, self.port, self.grpc_port, self.log = tag, port, grpc_port, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})},
                preexec_fn=lambda: os.sched_setaffinity(0, cores), start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> None:
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.tag} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-1500:]}")  # fmt: skip
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.tag}: {url} not ready in {timeout:.0f} s")

    def pids(self) -> list[int]:
        """The server and every process under it."""
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for task in Path(f"/proc/{p}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return out

    def rss_mb(self) -> float:
        total = 0
        for p in self.pids():
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total / 1024

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.pids():
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: its workers too
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass


def has_workers_flag() -> bool:
    """Whether this tree's ``onnxship serve`` has --workers (CONTRACTS §1)."""
    from onnxship.serve.config import ServeConfig

    return "workers" in ServeConfig.model_fields


def before_tree(ref: str) -> tuple[Path, str]:
    """``operator/`` as it was at commit ``ref`` (git archive into .cache/): the "before" row then
    runs the code from before the change, not only its setting."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dest = CACHE / f"before-{sha[:12]}"
    if not (dest / "operator" / "onnxship").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "operator"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "operator", sha


def peer_python(flag: str | None, peer: str) -> str | None:
    # absolute (the peers start in another folder), but not resolved: a venv's python is a
    # symlink, and only its own path gives it the venv's packages
    python = os.path.abspath(flag or str(PEERS / peer / "bin" / "python"))
    if not Path(python).exists():
        return None
    ok = subprocess.run([python, "-c", f"import {peer}, onnxruntime, numpy"], capture_output=True).returncode == 0
    return python if ok else None


def start_servers(args: argparse.Namespace, name: str, model: Path, n: int, cores: list[int],
                  tmp: Path, peers: dict[str, str]) -> dict[str, Server]:  # fmt: skip
    servers: dict[str, Server] = {}
    ours = [sys.executable, "-c", "from onnxship.cli.main import main; main()", "--log-format", "json", "serve",
            "--model", str(model), "--name", name, "--threads", "1", "--max-queue-size", "1024"]  # fmt: skip
    rows = []
    if args.ours in ("both", "workers") and has_workers_flag():
        rows.append(("ours", ["--workers", str(n)]))
    if args.ours in ("both", "before"):
        rows.append(("ours_before", ["--instances", str(n)]))
    for tag, extra in rows:
        hp, gp = free_port(), free_port()
        # the "before" row from an older commit's code where --before-ref says so
        env = {"PYTHONPATH": args.before_path} if tag == "ours_before" and args.before_path else None
        servers[tag] = Server(tag, [*ours, "--http-port", str(hp), "--grpc-port", str(gp), *extra], cores, hp,
                              tmp / f"{name}-{n}-{tag}.log", grpc_port=gp, env=env)  # fmt: skip
    env = {"PEER_MODEL": str(model), "PEER_NAME": name, "PYTHONUNBUFFERED": "1"}
    if "fastapi" in peers:
        (tmp / "scaling_fastapi_peer.py").write_text(textwrap.dedent(FASTAPI_PEER))
        hp = free_port()
        servers["fastapi"] = Server("fastapi", [peers["fastapi"], "-m", "uvicorn", "scaling_fastapi_peer:app", "--host", "127.0.0.1",
                                    "--port", str(hp), "--workers", str(n), "--log-level", "warning", "--no-access-log"],
                                    cores, hp, tmp / f"{name}-{n}-fastapi.log", env=env, cwd=tmp)  # fmt: skip
    if "kserve" in peers:
        (tmp / "scaling_kserve_peer.py").write_text(textwrap.dedent(KSERVE_PEER))
        hp = free_port()
        servers["kserve"] = Server("kserve", [peers["kserve"], str(tmp / "scaling_kserve_peer.py")], cores, hp,
                                   tmp / f"{name}-{n}-kserve.log", cwd=tmp,
                                   env={**env, "PEER_PORT": str(hp), "PEER_GRPC_PORT": str(free_port()), "PEER_WORKERS": str(n)})  # fmt: skip
    for s in servers.values():
        try:
            s.wait_ready()
        except (RuntimeError, TimeoutError):
            for x in servers.values():
                x.stop()
            raise
    return servers


# ---------------------------------------------------------------------------- one setting


def measure_setting(args: argparse.Namespace, key: str, model: Path, feeds: dict[str, np.ndarray], n: int,
                    cpus: list[int], tmp: Path, peers: dict[str, str], shuffle: random.Random) -> dict[str, Any]:  # fmt: skip
    spec = MODELS[key]
    out_name = spec["output"]
    place = placement(cpus, n, args.loadgen_procs)
    rows = rows_of(feeds)
    ref = one_thread_session(model)
    expected = [ref.run([out_name], r)[0] for r in rows]
    reqs = requests_for(key, out_name, rows)
    checks = {p: loadgen.Check(p, out_name, expected, atol=spec["atol"]) for p in PROTOCOLS}
    seconds = args.seconds or spec["seconds"] * args.time_scale
    warmup = args.warmup if args.warmup is not None else spec["warmup"] * args.time_scale
    print(f"\n== {spec['title']}, N={n}: server on cores {place['server_cores']}, load generator "
          f"({place['loadgen_processes']} processes, {args.connections} connections) on {place['loadgen_cores']}"
          + (" -- SHARED with the server: no core is left for it" if place["loadgen_shares_server_cores"] else ""),
          flush=True)  # fmt: skip
    result: dict[str, Any] = {"model": key, "title": spec["title"], "n": n, **place, "seconds": seconds,
                              "warmup": warmup, "rounds": [],
                              "loadavg": [], "errors": {}, "error_samples": {}, "not_measured": {}}  # fmt: skip
    servers = start_servers(args, key, model, n, place["server_cores"], tmp, peers)
    try:
        result["server_rss_mb_idle"] = {t: round(s.rss_mb(), 1) for t, s in servers.items()}
        jobs: list[str] = ["raw"]
        for tag in servers:
            protos = PROTOCOLS if tag.startswith("ours") else ("json",)
            jobs += [f"{tag}/{p}" for p in protos if p in args.protocols or not tag.startswith("ours")]
        if "kserve" not in servers and "kserve" in args.peers:
            result["not_measured"]["kserve"] = "its virtualenv is absent (make .cache/bench/peers/kserve/.installed)"
        if "fastapi" not in servers and "fastapi" in args.peers:
            result["not_measured"]["fastapi"] = "its virtualenv is absent (make .cache/bench/peers/fastapi/.installed)"
        if "ours" not in servers and args.ours in ("both", "workers"):
            result["not_measured"]["ours"] = "this tree's onnxship serve has no --workers yet"
        for r in range(args.rounds):
            order = list(jobs)
            shuffle.shuffle(order)
            values: dict[str, Any] = {}
            result["loadavg"].append(os.getloadavg()[0])
            for job in order:
                if job == "raw":
                    raw = raw_rows_per_s(model, rows, out_name, n, place["server_cores"], warmup, seconds)
                    values["raw"] = raw["rps"]
                    values["raw_cpu_s"] = raw["cpu_s"]
                    continue
                tag, proto = job.split("/")
                s = servers[tag]
                target = loadgen.Target("grpc" if proto == "grpc" else "http", "127.0.0.1",
                                        s.grpc_port if proto == "grpc" else s.port, reqs[proto], checks[proto],
                                        check_every=args.check_every)  # fmt: skip
                m = loadgen.run(target, args.connections, place["loadgen_processes"], warmup, seconds,
                                place["loadgen_cores"], server_cpu=s.cpu_s)  # fmt: skip
                values[job] = {k: m[k] for k in ("rps", "errors", "checked", "p50_ms", "p99_ms", "loadgen_cpu_share", "server_cpu_s")}
                values[job]["settle_s"] = round(settle(servers), 1)
                result["errors"][job] = result["errors"].get(job, 0) + m["errors"]
                if m["error_samples"]:
                    result["error_samples"].setdefault(job, m["error_samples"])
            result["rounds"].append(values)
            print(f"  round {r + 1} (load {result['loadavg'][-1]:.1f}): raw {values['raw']:.1f} rows/s "
                  f"[{values['raw_cpu_s'] / seconds:.2f} CPUs]; "
                  + ", ".join(f"{j} {v['rps']:.1f} [{(v['server_cpu_s'] or 0) / seconds:.2f}]"
                              + (f" ({v['errors']} errors)" if v["errors"] else "")
                              for j, v in values.items() if not j.startswith("raw")), flush=True)  # fmt: skip
        result["server_rss_mb_after"] = {t: round(s.rss_mb(), 1) for t, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    summarize(result)
    return result


def summarize(result: dict[str, Any]) -> None:
    """Medians, and ratios taken within each round then their median."""
    rounds = result["rounds"]
    med = statistics.median
    result["raw_rows_per_s"] = med(r["raw"] for r in rounds)
    order = ["ours/json", "ours/binary", "ours/grpc", "ours_before/json", "ours_before/binary",
             "ours_before/grpc", "fastapi/json", "kserve/json"]  # fmt: skip
    jobs = sorted((j for j in rounds[0] if not j.startswith("raw")), key=lambda j: [*order, j].index(j))
    result["rps"] = {j: med(r[j]["rps"] for r in rounds) for j in jobs}
    result["vs_raw"] = {j: med(r[j]["rps"] / r["raw"] for r in rounds) for j in jobs}
    # On a shared machine a server with more runnable threads can get more of its cores than
    # the raw processes did: answers per CPU-second of the server against rows per CPU-second
    # of raw is the ratio that CPU contention does not move.
    secs = result["seconds"]
    result["raw_cpu_share"] = med(r["raw_cpu_s"] / (secs * result["n"]) for r in rounds)
    result["server_cpu_share"] = {j: med(r[j]["server_cpu_s"] / (secs * result["n"]) for r in rounds) for j in jobs}
    result["vs_raw_per_cpu"] = {
        j: med((r[j]["rps"] * secs / r[j]["server_cpu_s"]) / (r["raw"] * secs / r["raw_cpu_s"])
               for r in rounds if r[j]["server_cpu_s"] and r["raw_cpu_s"]) for j in jobs}  # fmt: skip
    result["loadgen_cpu_share"] = {j: med(r[j]["loadgen_cpu_share"] for r in rounds) for j in jobs}
    result["p50_ms"] = {j: med(r[j]["p50_ms"] or 0 for r in rounds) for j in jobs}
    result["p99_ms"] = {j: med(r[j]["p99_ms"] or 0 for r in rounds) for j in jobs}
    vs_peer: dict[str, dict[str, float]] = {}
    for ours in (j for j in jobs if j.startswith("ours")):
        for peer in (j for j in jobs if not j.startswith("ours")):
            vs_peer.setdefault(ours, {})[peer] = med(r[ours]["rps"] / r[peer]["rps"] for r in rounds if r[peer]["rps"])
    result["vs_peer"] = vs_peer
    # the same per CPU-second of each server: answers per CPU-second, ours over the peer's
    result["vs_peer_per_cpu"] = {
        ours: {peer: med((r[ours]["rps"] / r[ours]["server_cpu_s"]) / (r[peer]["rps"] / r[peer]["server_cpu_s"])
                         for r in rounds if r[ours]["server_cpu_s"] and r[peer]["server_cpu_s"] and r[peer]["rps"])
               for peer in peers} for ours, peers in vs_peer.items()}  # fmt: skip


# ---------------------------------------------------------------------------- main


def table(results: list[dict[str, Any]]) -> str:
    """The issue's table: model, cores, raw rows/s, ours req/s, ours / raw, peers, ours / peer."""
    lines = ["| model | cores | raw rows/s | row | req/s | / raw | / raw per CPU-s | vs FastAPI | vs KServe | load gen |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in results:
        shared = "shares the server's cores" if r["loadgen_shares_server_cores"] else f"{len(r['loadgen_cores'])} other cores"
        for j, rps in r["rps"].items():
            vp = r["vs_peer"].get(j, {})
            f = vp.get("fastapi/json")
            k = vp.get("kserve/json")
            lines.append(f"| {r['title']} | {r['n']} | {r['raw_rows_per_s']:,.1f} | {j} | {rps:,.1f} | {r['vs_raw'][j]:.3f} | "
                         f"{r['vs_raw_per_cpu'].get(j, 0):.3f} | "
                         f"{'' if f is None else f'{f:.2f}'} | {'' if k is None else f'{k:.2f}'} | {shared} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", help="core counts N, e.g. 1,2 (default: from this machine: 1,2 on 2 cores, 2,4,8 on 16)")
    ap.add_argument("--models", nargs="+", default=["minilm", "mlp"], choices=sorted(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, help="timed window per measurement (default: MiniLM 10, MLP 5)")
    ap.add_argument("--warmup", type=float, help="load before each window, not counted (default: MiniLM 6, MLP 2)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="scales the default window and warm-up (--quick: 0.5)")
    ap.add_argument("--connections", type=int, default=96)
    ap.add_argument("--loadgen-procs", type=int, default=12, help="at most this many load processes (one per free core)")
    ap.add_argument("--check-every", type=int, default=16, help="spot-check every k-th answer's output per connection")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS, help="for ours")
    ap.add_argument("--ours", default="both", choices=("both", "workers", "before"),
                    help="--workers N (where serve has it), --instances N (the 'before' row), or both")  # fmt: skip
    ap.add_argument("--before-ref", help="run the 'before' row (--instances N) from this git commit's operator/ "
                    "(default: this tree's code)")  # fmt: skip
    ap.add_argument("--peers", nargs="*", default=["fastapi", "kserve"], choices=("fastapi", "kserve"))
    ap.add_argument("--fastapi-python", help="default: .cache/bench/peers/fastapi/bin/python")
    ap.add_argument("--kserve-python", help="default: .cache/bench/peers/kserve/bin/python")
    ap.add_argument("--minilm-dir", type=Path, default=DEFAULT_MINILM)
    ap.add_argument("--seed", type=int, default=22, help="of the measurement order")
    ap.add_argument("--out-json", type=Path, default=ROOT / "bench" / "results" / "raw" / "scaling.json")
    args = ap.parse_args()
    # run_all.py stops a script with SIGTERM: unwind, so that the servers (in their own
    # sessions, for their workers' sake) are stopped by the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cpus = ordered_cpus()
    args.before_path, before_sha = None, None
    if args.before_ref and args.ours != "workers":
        try:
            path, before_sha = before_tree(args.before_ref)
            args.before_path = str(path)
        except (OSError, subprocess.CalledProcessError) as exc:  # a copy of the tree without .git
            print(f"--before-ref {args.before_ref}: not available ({exc}); the 'before' row runs "
                  "this tree's code", flush=True)  # fmt: skip
    ns = [int(x) for x in args.cores.split(",")] if args.cores else default_cores(len(cpus))
    too_many = [n for n in ns if not 1 <= n <= len(cpus)]
    if too_many:
        sys.exit(f"--cores: {too_many} outside 1..{len(cpus)} (the CPUs this process may use)")
    peers = {p: py for p in args.peers if (py := peer_python(getattr(args, f"{p}_python"), p))}
    for p in args.peers:
        if p not in peers:
            print(f"peer {p}: skipped, no usable virtualenv (make .cache/bench/peers/{p}/.installed)", flush=True)
    doc: dict[str, Any] = {
        "cpus": len(cpus), "cpu_order": cpus, "cores": ns, "connections": args.connections, "rounds": args.rounds, "loadavg_start": list(os.getloadavg()),
        "onnxruntime": ort.__version__, "workers_flag": has_workers_flag(), "peers": sorted(peers),
        "before": {"row": "ours_before", "setting": "--instances N --threads 1",
                   "code": f"commit {before_sha}" if before_sha else "this tree"},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": [],
    }  # fmt: skip
    shared = [n for n in ns if n >= len(cpus)]
    if shared:
        doc["note"] = (f"N={','.join(map(str, shared))}: the server has every core of this {len(cpus)}-CPU machine, "
                       "so the load generator shares them (its CPU is taken from the server's)")  # fmt: skip
        print(doc["note"], flush=True)
    # the generator's own limit, placed as for the largest N: a canned server on the server's
    # cores, the load on the others (answers per load CPU-second shows it on a busy machine too)
    place = placement(cpus, max(ns), args.loadgen_procs)
    c = loadgen.ceiling(args.connections, place["loadgen_processes"], 3.0, place["loadgen_cores"], place["server_cores"])
    doc["loadgen_ceiling"] = {"n": max(ns), "rps": c["rps"], "processes": c["processes"], "errors": c["errors"],
                              "loadgen_cpu_share": c["loadgen_cpu_share"],
                              "per_load_cpu_s": c["rps"] / max(1e-9, c["loadgen_cpu_share"] * c["processes"])}  # fmt: skip
    print(f"load generator's ceiling (a canned server, N={max(ns)} placement): {c['rps']:,.0f} answers/s from "
          f"{c['processes']} processes ({doc['loadgen_ceiling']['per_load_cpu_s']:,.0f} per load CPU-second)", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    shuffle = random.Random(args.seed)
    made = {}
    for key in args.models:
        try:
            made[key] = minilm_int8(args.minilm_dir) if key == "minilm" else mlp()
        except FileNotFoundError as exc:  # a copy of the tree without ../shared: the MLP still runs
            print(f"{key}: skipped, {exc}", flush=True)
            doc.setdefault("skipped", {})[key] = str(exc)
    try:
        for key in made:
            model, feeds = made[key]
            for n in ns:
                doc["settings"].append(measure_setting(args, key, model, feeds, n, cpus, tmp, peers, shuffle))
                args.out_json.parent.mkdir(parents=True, exist_ok=True)
                args.out_json.write_text(json.dumps(doc, indent=2))  # each setting lands as it ends
    finally:
        doc["loadavg_end"] = list(os.getloadavg())
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(doc, indent=2))
    print("\n" + table(doc["settings"]))
    print(f"\nload average {doc['loadavg_start'][0]:.1f} at the start, {doc['loadavg_end'][0]:.1f} at the end "
          f"on {len(cpus)} CPUs; logs in {tmp}")  # fmt: skip
    errs = {f"{s['model']}@{s['n']} {j}": e for s in doc["settings"] for j, e in s["errors"].items() if e}
    if errs:
        print(f"errors (not counted as throughput): {errs}")
        for s in doc["settings"]:
            for j, samples in s["error_samples"].items():
                print(f"  {s['model']}@{s['n']} {j}: {samples[0]}")


if __name__ == "__main__":
    main()
