#!/usr/bin/env python
"""Benchmark `onnxship route`: what the router adds in front of the same backends.

A script, not a test. In one run and on one machine it measures p50/p99 latency (one client,
sequential requests) and throughput (``--concurrency`` clients) of the same requests sent

- directly to one backend,
- through ``onnxship route`` (started through the CLI) splitting 90/10 between two backends,
- through nginx (Debian package; installed with apt-get when missing and allowed) with the
  same weights (``upstream`` weights: nginx's smooth weighted round robin, keep-alive on),

first with a trivial backend (the router's own ceiling) and then with two `onnxship serve`
backends running all-MiniLM-L6-v2 (the backend is the bottleneck). Rounds interleave the
three paths, because on a shared 2-vCPU VM speed drifts over minutes; ratios are taken
within a round and the median round is reported.

    .venv/bin/python bench/router_bench.py [--seconds 4] [--rounds 3] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT.parent / "shared" / "models" / "minilm"
ONNXSHIP = [str(Path(sys.executable).parent / "onnxship")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.p = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (nginx workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


# ---------------------------------------------------------------------------- backends

TRIVIAL_BACKEND = """
import sys
from aiohttp import web
BODY = (b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,4],'
        b'"data":[1,2,3,4]}]}')
async def infer(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
async def ready(request):
    return web.Response()
app = web.Application()
app.router.add_post("/v2/models/{m}/infer", infer)
app.router.add_get("/v2/health/ready", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def start_trivial(tmp: Path, name: str) -> tuple[Proc, str]:
    port = free_port()
    script = tmp / "trivial_backend.py"
    script.write_text(TRIVIAL_BACKEND)
    proc = Proc([sys.executable, str(script), str(port)], tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready")
    return proc, url


def start_serve(tmp: Path, name: str) -> tuple[Proc, str]:
    port = free_port()
    args = [*ONNXSHIP, "--log-format", "json", "serve", "--model", str(MODEL_DIR / "model.onnx"),
            "--name", "m", "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "-1",
            "--threads", "1"]  # fmt: skip
    proc = Proc(args, tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready")
    return proc, url


def minilm_body() -> bytes:
    import numpy as np

    data = np.load(MODEL_DIR / "inputs.npz")
    inputs = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        arr = data[name][:1] if name in data else np.zeros((1, 128), dtype=np.int64)
        inputs.append(
            {
                "name": name,
                "datatype": "INT64",
                "shape": list(arr.shape),
                "data": arr.ravel().tolist(),
            }
        )
    return json.dumps({"inputs": inputs}).encode()


TRIVIAL_BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
).encode()


# ---------------------------------------------------------------------------- proxies


def start_router(tmp: Path, backends: list[tuple[str, str, int]]) -> tuple[Proc, str]:
    port = free_port()
    routes = tmp / "routes.json"
    routes.write_text(
        json.dumps({"backends": [{"revision": r, "url": u, "weight": w} for r, u, w in backends]})
    )
    proc = Proc(
        [
            *ONNXSHIP,
            "--log-level",
            "WARNING",
            "route",
            "--port",
            str(port),
            "--routes",
            str(routes),
        ],
        tmp / "router.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return proc, url


def ensure_nginx(install: bool) -> str | None:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found or not install:
        return found
    try:
        subprocess.run(["apt-get", "install", "-y", "nginx-light"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(nginx: str, tmp: Path, backends: list[tuple[str, str, int]]) -> tuple[Proc, str]:
    port = free_port()
    prefix = tmp / "nginx"
    for d in ("logs", "tmp"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    servers = "\n".join(
        f"    server {u.removeprefix('http://')} weight={w};" for _, u, w in backends if w > 0
    )
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  upstream revisions {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 64m;
    location / {{
      proxy_pass http://revisions;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    proc = Proc([nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"], tmp / "nginx.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    return proc, url


# ---------------------------------------------------------------------------- load


LOAD = r"""
import asyncio, json, sys, time
import aiohttp
url, body_path = sys.argv[1], sys.argv[2]
concurrency, seconds = int(sys.argv[3]), float(sys.argv[4])
body = open(body_path, "rb").read()
async def main():
    lat, errors = [], 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        headers = {"Content-Type": "application/json"}
        async def warm():
            for _ in range(3):
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
        await asyncio.gather(*(warm() for _ in range(concurrency)))
        stop = time.perf_counter() + seconds
        async def worker():
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    print(json.dumps({"requests": len(lat), "all_requests": len(lat) + 3 * concurrency,
                      "errors": errors, "rps": len(lat) / wall,
                      "p50_ms": q(0.5), "p99_ms": q(0.99)}))
asyncio.run(main())
"""


def load(tmp: Path, url: str, body: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    script = tmp / "load.py"
    if not script.exists():
        script.write_text(LOAD)
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            url + "/v2/models/m/infer",
            str(body),
            str(concurrency),
            str(seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def scenario(
    tmp: Path,
    name: str,
    targets: dict[str, str],
    body: Path,
    args: argparse.Namespace,
    pids: dict[str, int],
) -> dict[str, Any]:
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(args.rounds):
        row: dict[str, dict[str, Any]] = {}
        for path, url in targets.items():
            lat = load(tmp, url, body, 1, args.seconds)
            cpu0 = cpu_seconds(pids[path]) if path in pids else 0.0
            tput = load(tmp, url, body, args.concurrency, args.seconds)
            cpu = cpu_seconds(pids[path]) - cpu0 if path in pids else 0.0
            row[path] = {
                # CPU the proxy itself spent per request: robust to a busy shared machine
                "cpu_us_per_request": cpu / max(1, tput["all_requests"]) * 1e6,
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "rps": tput["rps"],
                "p99_ms_loaded": tput["p99_ms"],
                "errors": lat["errors"] + tput["errors"],
            }
        rounds.append(row)
        print(f"[{name}] round {i + 1}: " + ", ".join(
            f"{p} p50 {r['p50_ms']:.3f} ms, {r['rps']:.0f} req/s, "
            f"{r['cpu_us_per_request']:.0f} us CPU/req" for p, r in row.items()
        ), flush=True)  # fmt: skip

    def med(path: str, key: str) -> float:
        return statistics.median(r[path][key] for r in rounds)

    summary: dict[str, Any] = {
        p: {
            k: med(p, k)
            for k in ("p50_ms", "p99_ms", "rps", "p99_ms_loaded", "errors", "cpu_us_per_request")
        }
        for p in targets
    }
    added = [r["router"]["p50_ms"] - r["direct"]["p50_ms"] for r in rounds]
    summary["rounds"] = rounds
    summary["router_added_p50_ms"] = statistics.median(added)
    summary["router_vs_direct_rps"] = statistics.median(
        r["router"]["rps"] / r["direct"]["rps"] for r in rounds
    )
    if "nginx" in targets:
        summary["nginx_added_p50_ms"] = statistics.median(
            r["nginx"]["p50_ms"] - r["direct"]["p50_ms"] for r in rounds
        )
        summary["router_vs_nginx_rps"] = statistics.median(
            r["router"]["rps"] / r["nginx"]["rps"] for r in rounds
        )
        summary["router_vs_nginx_cpu_per_request"] = statistics.median(
            r["router"]["cpu_us_per_request"] / max(1e-9, r["nginx"]["cpu_us_per_request"])
            for r in rounds
        )
    return summary


def main() -> None:
    # SIGTERM stops the servers this script started, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    ap.add_argument("--skip-serve", action="store_true", help="trivial backend only")
    ap.add_argument("--only", choices=["trivial", "minilm"], help="one backend kind only")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    nginx = ensure_nginx(not args.no_install)
    results: dict[str, Any] = {"nginx": bool(nginx), "cpus": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    procs: list[Proc] = []
    try:
        kinds = [("trivial", start_trivial, TRIVIAL_BODY)]
        if not args.skip_serve and (MODEL_DIR / "model.onnx").exists():
            kinds.append(("minilm", start_serve, b""))
        kinds = [k for k in kinds if args.only in (None, k[0])]
        for kind, starter, raw in kinds:
            body = tmp / f"{kind}.json"
            body.write_bytes(raw or minilm_body())
            p1, u1 = starter(tmp, f"{kind}-r1")
            p2, u2 = starter(tmp, f"{kind}-r2")
            procs += [p1, p2]
            backends = [("r1", u1, 90), ("r2", u2, 10)]
            pr, router_url = start_router(tmp, backends)
            procs.append(pr)
            targets = {"direct": u1, "router": router_url}
            if nginx:
                pn, nginx_url = start_nginx(nginx, tmp, backends)
                procs.append(pn)
                targets["nginx"] = nginx_url
            pids = {"router": pr.p.pid, **({"nginx": pn.p.pid} if nginx else {})}
            results[kind] = scenario(tmp, kind, targets, body, args, pids)
            for p in procs:
                p.stop(signal.SIGQUIT if p.p.args[0] == nginx else signal.SIGTERM)
            procs.clear()
    finally:
        for p in procs:
            p.stop()
    print(json.dumps(results, indent=2))
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
