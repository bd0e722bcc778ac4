#!/usr/bin/env python
"""The memory of one `onnxship serve` pod with 1, 4 and 8 worker processes.

A script, not a test. For each model it starts the CLI as a pod does (``--workers N
--threads 1``), waits until the pod is ready, sends requests until every worker has answered
one (so each has its activations allocated), and sums the proportional set size (``Pss`` of
``/proc/PID/smaps_rollup``: a page shared by k processes counts 1/k in each) over the
supervisor and every worker. That sum is what the pod costs the node, shared weights once.

Anchor, same run: raw ONNX Runtime, one process that loads the original model with the
server's session settings and runs it once (``raw_pss``); N such processes cost N times that.
Goal of issue 22: pod(8) <= pod(1) + 8 x 25% of the model's bytes.

Models: MiniLM (../shared/models/minilm), its dynamic int8 form (quantize_dynamic, made
under --work), and an MLP of 2048x2048 fp32 layers with external data, ~1 GiB (built under
--work; never committed).

    .venv/bin/python bench/serve_memory_bench.py [--workers 1 4 8] [--mlp-mib 1024]
        [--models minilm minilm-int8 mlp-1g] [--out bench/results/raw/serve_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT.parent / "shared" / "models" / "minilm" / "model.onnx"
CLI = [sys.executable, "-c", "from onnxship.cli.main import main; main()"]
MIB = 1 << 20

RAW = r"""
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feeds = {}
for i in s.get_inputs():
    shape = [d if isinstance(d, int) else (1 if n == 0 else 16) for n, d in enumerate(i.shape)]
    feeds[i.name] = np.ones(shape, np.int64) if "int64" in i.type else np.zeros(shape, np.float32)
s.run(None, feeds)
print("ready", flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smaps(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def pod_memory(root: int) -> dict[str, Any]:
    per = {p: smaps(p) for p in descendants(root)}
    return {
        "processes": len(per),
        "pss": sum(m.get("Pss", 0) for m in per.values()),
        "rss": sum(m.get("Rss", 0) for m in per.values()),
        "private": sum(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for m in per.values()),
        "supervisor_pss": per[root].get("Pss", 0),
    }


def model_bytes(model: Path) -> int:
    return sum(
        f.stat().st_size for f in model.parent.iterdir() if f.name.startswith(model.name)
    )


def request_for(url: str) -> bytes:
    with urllib.request.urlopen(f"{url}/v2/models/m", timeout=30) as r:
        meta = json.load(r)
    inputs = []
    for t in meta["inputs"]:
        shape = [d if d > 0 else (1 if n == 0 else 16) for n, d in enumerate(t["shape"])]
        count = 1
        for d in shape:
            count *= d
        value = 1 if t["datatype"].startswith("INT") else 0.0
        inputs.append({"name": t["name"], "datatype": t["datatype"], "shape": shape,
                       "data": [value] * count})  # fmt: skip
    return json.dumps({"inputs": inputs}).encode()


def measure_pod(model: Path, workers: int, requests: int, log: Path) -> dict[str, Any]:
    http = free_port()
    cmd = [*CLI, "--log-format", "json", "serve", "--model", str(model), "--name", "m",
           "--workers", str(workers), "--threads", "1", "--http-port", str(http),
           "--grpc-port", str(free_port())]  # fmt: skip
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("not ready")
            time.sleep(0.2)
        ready_s = time.perf_counter() - start
        body = request_for(url)
        served: set[str] = set()
        sent = 0
        # A connection each (the kernel spreads them), until every worker has answered one:
        # a worker that has run nothing has not allocated its activations yet.
        while sent < requests or (len(served) < workers and sent < 50 * workers):
            req = urllib.request.Request(f"{url}/v2/models/m/infer", data=body, method="POST")
            with urllib.request.urlopen(req, timeout=120) as r:
                served.add(r.headers.get("onnxship-worker", "0"))
            sent += 1
        time.sleep(0.5)
        mem = pod_memory(proc.pid)
        return {"workers": workers, "ready_s": round(ready_s, 1), "requests": sent,
                "workers_that_answered": len(served), **mem}  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_raw(model: Path) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW, str(model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)
        return smaps(proc.pid)["Pss"]
    finally:
        proc.stdin.close()
        proc.wait(60)


def build_mlp(dest: Path, mib: int) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = dest / "model.onnx"
    if model.exists():
        return model
    dest.mkdir(parents=True, exist_ok=True)
    d, layers = 2048, max(1, mib // 16)  # 2048 x 2048 fp32: 16 MiB a layer
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((d, d), dtype=np.float32) / np.float32(np.sqrt(d))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]  # fmt: skip
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", d])], inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save_model(m, str(model), save_as_external_data=True, location="model.onnx.data")
    return model


def build_int8(dest: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = dest / "model.onnx"
    if not model.exists():
        dest.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(MINILM), str(model), weight_type=QuantType.QInt8, per_channel=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--models", nargs="+", default=["minilm", "minilm-int8", "mlp-1g"])
    ap.add_argument("--mlp-mib", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "serve-memory")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/raw/serve_memory.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    makers = {
        "minilm": lambda: MINILM,
        "minilm-int8": lambda: build_int8(args.work / "minilm-int8"),
        "mlp-1g": lambda: build_mlp(args.work / f"mlp-{args.mlp_mib}m", args.mlp_mib),
    }
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": os.getloadavg(),
        "cpus": len(os.sched_getaffinity(0)),
        "goal": "pod(8 workers) <= pod(1 worker) + 8 x 25% of the model's bytes",
        "models": [],
    }
    for name in args.models:
        model = makers[name]()
        size = model_bytes(model)
        raw = measure_raw(model)
        entry: dict[str, Any] = {"model": name, "bytes": size, "raw_pss": raw, "pods": []}
        print(f"{name}: {size / MIB:.0f} MiB; raw ORT process PSS {raw / MIB:.0f} MiB", flush=True)
        for n in args.workers:
            pod = measure_pod(model, n, args.requests, args.work / f"{name}-{n}.log")
            pod["load"] = os.getloadavg()[0]
            entry["pods"].append(pod)
            print(f"  workers {n}: pod PSS {pod['pss'] / MIB:.0f} MiB "
                  f"({pod['pss'] / raw:.2f}x raw, {pod['processes']} processes, "
                  f"RSS sum {pod['rss'] / MIB:.0f} MiB, ready {pod['ready_s']} s)",
                  flush=True)  # fmt: skip
        by = {p["workers"]: p["pss"] for p in entry["pods"]}
        if 1 in by and 8 in by:
            limit = by[1] + 8 * 0.25 * size
            entry["goal"] = {"limit": int(limit), "pod8": by[8], "met": by[8] <= limit,
                             "per_extra_worker": int((by[8] - by[1]) / 7)}  # fmt: skip
            print(f"  goal: {by[8] / MIB:.0f} <= {limit / MIB:.0f} MiB: {by[8] <= limit}; "
                  f"+{(by[8] - by[1]) / 7 / MIB:.0f} MiB per extra worker", flush=True)  # fmt: skip
        result["models"].append(entry)
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
