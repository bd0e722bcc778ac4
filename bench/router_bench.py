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

``--scaling`` measures instead what a pod's proxy sustains flat out (issue 22): ``onnxship
route --workers W`` against nginx with ``worker_processes W`` and the same weights, for each
W of ``--workers``, with mirroring off (90/10 split) and on (stable 100%, every request
copied to the canary: a canary's mirror step; nginx's ``mirror`` directive). The backends
are nginx answering a fixed v2 body (so neither they nor the load generator, wrk, is the
bottleneck where there are cores for them); the proxy is pinned to ``--cores`` and the rest
to ``--client-cores`` with taskset. It writes req/s, p50/p99 and the proxy's CPU per request
(all its processes), interleaved per round, and the per-round ratios' median:

    .venv/bin/python bench/router_bench.py --scaling --workers 1 2 4 --cores 0-3 \
        --client-cores 4-15 --out-json bench/results/raw/router_scaling.json

Without ``--cores`` nothing is pinned (a 2-core machine: everything shares both cores).
``--baseline-pythonpath DIR`` adds the router as found in DIR (an older copy of the
package, one worker) to each round: before and after in one run.

``--python-cost`` measures the router's own Python per request, without sockets (on a
loaded 2-core machine the socket figures above swing 2-3x between rounds): ``Router.handle``
against upstream connections whose transport answers at once, 16 concurrent callers, CPU
time of the thread (``time.thread_time``), the least of ``--repeats``; mirror off and on,
interleaved with ``--baseline-pythonpath``'s router when given:

    .venv/bin/python bench/router_bench.py --python-cost --rounds 3 \
        --baseline-pythonpath /tmp/onnxship-before/operator
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

# ---------------------------------------------------------------------------- scaling

FIXED_ANSWER = TRIVIAL_BODY.replace(b'"inputs"', b'"outputs"').replace(b'"x"', b'"y"').decode()

WRK_POST = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
"""


def ensure_wrk(install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not install:
        return found
    try:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shutil.which("wrk")


def pinned(cores: str | None, args: list[str]) -> list[str]:
    return ["taskset", "-c", cores, *args] if cores else args


def nginx_conf(prefix: Path, workers: int, body: str) -> tuple[Path, Path]:
    """The prefix's folders and the start of a config: workers, pid, temp paths."""
    for d in ("logs", "tmp"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    head = f"""
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
{body}
}}
"""
    conf.write_text(head)
    return conf, prefix


def start_nginx_conf(
    nginx: str, conf: Path, prefix: Path, log: Path, port: int, cores: str | None
) -> Proc:
    args = [nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"]
    proc = Proc(pinned(cores, args), log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}: {log.read_text()[-500:]}")


def start_fixed_backends(
    nginx: str, tmp: Path, workers: int, cores: str | None
) -> tuple[Proc, str, str]:
    """Two v2 stand-ins (r1, r2) in one nginx: a fixed answer, next to no CPU."""
    p1, p2 = free_port(), free_port()
    servers = "\n".join(
        f"""  server {{
    listen 127.0.0.1:{p} backlog=4096;
    location / {{ default_type application/json; return 200 '{FIXED_ANSWER}'; }}
  }}"""
        for p in (p1, p2)
    )
    conf, prefix = nginx_conf(tmp / "backends", workers, servers)
    proc = start_nginx_conf(nginx, conf, prefix, tmp / "backends.log", p1, cores)
    return proc, f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"


def start_nginx_proxy(
    nginx: str, tmp: Path, workers: int, u1: str, u2: str, mirror: bool, cores: str | None
) -> tuple[Proc, str]:
    port = free_port()
    if mirror:  # stable takes every request, a copy goes to the canary
        upstreams = f"""  upstream stable {{ server {u1.removeprefix("http://")}; keepalive 256; }}
  upstream canary {{ server {u2.removeprefix("http://")}; keepalive 256; }}"""
        locations = """    location / {
      mirror /_mirror;
      proxy_pass http://stable;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    location = /_mirror {
      internal;
      proxy_pass http://canary$request_uri;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }"""
    else:
        upstreams = f"""  upstream revisions {{
    server {u1.removeprefix("http://")} weight=90;
    server {u2.removeprefix("http://")} weight=10;
    keepalive 256;
  }}"""
        locations = """    location / {
      proxy_pass http://revisions;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }"""
    body = f"""{upstreams}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 64m;
{locations}
  }}"""
    conf, prefix = nginx_conf(tmp / f"nginx-{workers}-{int(mirror)}", workers, body)
    log = tmp / f"nginx-{workers}-{int(mirror)}.log"
    return start_nginx_conf(nginx, conf, prefix, log, port, cores), f"http://127.0.0.1:{port}"


def start_router_pod(
    tmp: Path, workers: int, u1: str, u2: str, mirror: bool, cores: str | None,
    pythonpath: str = "",
) -> tuple[Proc, str]:  # fmt: skip
    port = free_port()
    if mirror:
        doc: dict[str, Any] = {
            "backends": [
                {"revision": "r1", "url": u1, "weight": 100},
                {"revision": "r2", "url": u2, "weight": 0},
            ],
            "mirror": {"revision": "r2", "percent": 100},
        }
    else:
        doc = {
            "backends": [
                {"revision": "r1", "url": u1, "weight": 90},
                {"revision": "r2", "url": u2, "weight": 10},
            ]
        }
    tag = f"{'before' if pythonpath else 'router'}-{workers}-{int(mirror)}"
    routes = tmp / f"routes-{tag}.json"
    routes.write_text(json.dumps(doc))
    args = [*ONNXSHIP, "--log-level", "WARNING", "route", "--port", str(port),
            "--routes", str(routes)]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]
    env = {"PYTHONPATH": pythonpath} if pythonpath else None
    proc = Proc(pinned(cores, args), tmp / f"{tag}.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return proc, url


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (router workers, nginx workers)."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def wrk_load(
    wrk: str, tmp: Path, url: str, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    script = tmp / "post.lua"
    if not script.exists():
        script.write_text(WRK_POST % TRIVIAL_BODY.decode())
    duration = f"{max(1, round(seconds))}s"  # wrk takes whole seconds
    cmd = pinned(args.client_cores, [
        wrk, "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", duration,
        "--latency", "-s", str(script), url + "/v2/models/m/infer",
    ])  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    found: dict[str, Any] = {"requests": 0, "rps": 0.0, "errors": 0}
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    for line in out.splitlines():
        words = line.split()
        if "requests in" in line:
            found["requests"] = int(words[0])
        elif line.startswith("Requests/sec:"):
            found["rps"] = float(words[1])
        elif words[:1] in (["50%"], ["99%"]):
            value = words[1]
            unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
            found[f"p{words[0][:-1]}_ms"] = float(value[: -len(unit)]) * units[unit]
        elif "Non-2xx" in line:
            found["errors"] += int(words[-1])
        elif "Socket errors" in line:  # connect, read, write, timeout (wrk's 2 s)
            found["socket_errors"] = line.split(":", 1)[1].strip()
    return found


# Run as a script (its own process, so PYTHONPATH picks the router measured). It reaches into
# the router's internals (upstream._Connection, the pool's idle lists): a sketch of a backend
# that costs nothing, not an API.
PYTHON_COST = """
import asyncio, json, sys, time
from onnxship.api.routes import RouteTable
from onnxship.eventloop import loop_factory
from onnxship.router import upstream
from onnxship.router.proxy import ProxySettings, Router
try:
    from onnxship.http1.server import Request
except ImportError:  # before the server moved (dd06223)
    from onnxship.router.front import Request
MIRROR, REPEATS, ANSWER = sys.argv[1] == "on", int(sys.argv[2]), sys.argv[3].encode()
RESPONSE = (b"HTTP/1.1 200 OK\\r\\nServer: nginx/1.22.1\\r\\nDate: Fri, 04 Dec 2026 22:30:00 GMT"
            b"\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n"
            b"Connection: keep-alive\\r\\n\\r\\n%b" % (len(ANSWER), ANSWER))
class Instant:  # a backend's socket that has the answer ready as soon as it is written to
    def __init__(self, conn, loop): self.conn, self.loop = conn, loop
    def write(self, data): self.loop.call_soon(self.conn.data_received, RESPONSE)
    def is_closing(self): return False
    def close(self): pass
class Reply:
    def answer(self, status, headers, body): pass
async def main():
    loop = asyncio.get_running_loop()
    router = Router(ProxySettings())
    doc = {"backends": [
        {"revision": "r1", "url": "http://127.0.0.1:1", "weight": 100 if MIRROR else 90},
        {"revision": "r2", "url": "http://127.0.0.1:2", "weight": 0 if MIRROR else 10}]}
    if MIRROR:
        doc["mirror"] = {"revision": "r2", "percent": 100}
    router.set_routes(RouteTable.model_validate(doc), "bench")
    for port in (1, 2):
        for _ in range(64):
            conn = upstream._Connection(loop)
            conn.connection_made(Instant(conn, loop))
            router.upstream.idle[("127.0.0.1", port)].append(conn)
    body = sys.argv[4].encode()
    headers = [("Host", "x"), ("Content-Type", "application/json"),
               ("Content-Length", str(len(body)))]
    request = Request("POST", "/v2/models/m/infer", headers,
                      {k.lower(): v for k, v in headers}, body, True, "1.1")
    async def caller(n):
        for _ in range(n):
            await router.handle(request, Reply())
    costs = []
    for _ in range(REPEATS):
        started = time.thread_time()
        await asyncio.gather(*(caller(250) for _ in range(16)))
        while router.mirrors:
            await asyncio.sleep(0)
        costs.append((time.thread_time() - started) / 4000 * 1e6)
    text = router.metrics.exposition().decode()
    compared = sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("onnxship_router_mirror_comparisons_total{"))
    print(json.dumps({"python_us_per_request": min(costs), "compared": compared}))
with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main())
"""


def python_cost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    script = tmp / "python_cost.py"
    script.write_text(PYTHON_COST)
    kinds = {"router": ""}
    if args.baseline_pythonpath:
        kinds["before"] = args.baseline_pythonpath
    runs: list[dict[str, Any]] = []
    for i in range(args.rounds):
        for mirror in args.mirror:
            for kind, pythonpath in kinds.items():
                env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
                out = subprocess.run(
                    [sys.executable, str(script), mirror, str(args.repeats),
                     FIXED_ANSWER, TRIVIAL_BODY.decode()],
                    check=True, capture_output=True, text=True, env=env,
                )  # fmt: skip
                row = {"round": i + 1, "mirror": mirror, "router": kind,
                       **json.loads(out.stdout), "loadavg": os.getloadavg()[0]}  # fmt: skip
                runs.append(row)
                print(
                    f"[python-cost] round {i + 1} mirror {mirror} {kind}: "
                    f"{row['python_us_per_request']:.1f} us/request, load {row['loadavg']:.1f}",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for mirror in args.mirror:
        entry: dict[str, Any] = {}
        for kind in kinds:
            costs = [x["python_us_per_request"] for x in runs
                     if (x["mirror"], x["router"]) == (mirror, kind)]  # fmt: skip
            entry[f"{kind}_us_per_request"] = statistics.median(costs)
        if "before" in kinds:
            ratios = []
            for r in range(1, args.rounds + 1):
                pair = {x["router"]: x["python_us_per_request"] for x in runs
                        if (x["round"], x["mirror"]) == (r, mirror)}  # fmt: skip
                ratios.append(pair["router"] / pair["before"])
            entry["router_vs_before"] = statistics.median(ratios)
            entry["router_vs_before_range"] = [min(ratios), max(ratios)]
        summary[f"mirror_{mirror}"] = entry
    return {"summary": summary, "runs": runs}


def python_load(tmp: Path, url: str, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    body = tmp / "trivial.json"
    body.write_bytes(TRIVIAL_BODY)
    r = load(tmp, url, body, args.connections, seconds)
    return {"requests": r["all_requests"], "rps": r["rps"], "errors": r["errors"],
            "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}  # fmt: skip


def scaling(args: argparse.Namespace, nginx: str, tmp: Path) -> dict[str, Any]:
    wrk = ensure_wrk(not args.no_install)
    procs: list[Proc] = []
    machine = {
        "cpus": os.cpu_count(),
        "proxy_cores": args.cores or "all (not pinned)",
        "client_cores": args.client_cores or "all (not pinned)",
        "load_generator": "wrk" if wrk else "aiohttp (Python)",
        "connections": args.connections,
        "loadavg_before": os.getloadavg(),
    }
    try:
        backends, u1, u2 = start_fixed_backends(
            nginx, tmp, args.backend_workers, args.client_cores
        )
        procs.append(backends)
        grid = [(w, m) for w in args.workers for m in args.mirror]
        runs: list[dict[str, Any]] = []
        for i in range(args.rounds):
            for workers, mirror_name in grid:
                mirror = mirror_name == "on"
                kinds = ["nginx", "router"]
                if args.baseline_pythonpath and workers == 1:
                    kinds.append("before")
                for kind in kinds:
                    if kind == "nginx":
                        proc, url = start_nginx_proxy(
                            nginx, tmp, workers, u1, u2, mirror, args.cores
                        )
                    else:
                        proc, url = start_router_pod(
                            tmp, workers, u1, u2, mirror, args.cores,
                            args.baseline_pythonpath if kind == "before" else "",
                        )  # fmt: skip
                    try:
                        def run(s: float, u: str = url) -> dict[str, Any]:
                            if wrk:
                                return wrk_load(wrk, tmp, u, args, s)
                            return python_load(tmp, u, args, s)

                        run(1.0)  # warm: pools, connections
                        cpu0 = tree_cpu(proc.p.pid)
                        got = run(args.seconds)
                        cpu = tree_cpu(proc.p.pid) - cpu0
                    finally:
                        proc.stop(signal.SIGQUIT if kind == "nginx" else signal.SIGTERM)
                    row = {
                        "round": i + 1, "workers": workers, "mirror": mirror_name,
                        "proxy": kind, **got,
                        "cpu_us_per_request": cpu / max(1, got["requests"]) * 1e6,
                        "loadavg": os.getloadavg()[0],
                    }  # fmt: skip
                    runs.append(row)
                    print(
                        f"[scaling] round {i + 1} workers {workers} mirror {mirror_name} "
                        f"{kind}: {got['rps']:.0f} req/s, {row['cpu_us_per_request']:.0f} us "
                        f"CPU/req, p50 {got.get('p50_ms', 0):.2f} ms, errors {got['errors']}, "
                        f"load {row['loadavg']:.1f}",
                        flush=True,
                    )
    finally:
        for p in procs:
            p.stop(signal.SIGQUIT)

    def pick(r: int, w: int, m: str, k: str) -> dict[str, Any] | None:
        want = (r, w, m, k)
        found = (x for x in runs if (x["round"], x["workers"], x["mirror"], x["proxy"]) == want)
        return next(found, None)

    summary: dict[str, Any] = {}
    for workers, mirror_name in grid:
        key = f"workers_{workers}_mirror_{mirror_name}"
        entry: dict[str, Any] = {}
        for kind in ("router", "nginx", "before"):
            rows = [x for x in runs if (x["workers"], x["mirror"], x["proxy"]) ==
                    (workers, mirror_name, kind)]  # fmt: skip
            if rows:
                entry[kind] = {
                    k: statistics.median(x[k] for x in rows)
                    for k in ("rps", "cpu_us_per_request", "p50_ms", "p99_ms")
                    if all(k in x for x in rows)
                }
        for kind in ("router", "before"):
            ratios_rps, ratios_cpu = [], []
            for r in range(1, args.rounds + 1):
                a, n = pick(r, workers, mirror_name, kind), pick(r, workers, mirror_name, "nginx")
                if a and n and n["rps"]:
                    ratios_rps.append(a["rps"] / n["rps"])
                    ratios_cpu.append(a["cpu_us_per_request"] / max(1e-9, n["cpu_us_per_request"]))
            if ratios_rps:
                entry[f"{kind}_vs_nginx_rps"] = statistics.median(ratios_rps)
                entry[f"{kind}_vs_nginx_rps_range"] = [min(ratios_rps), max(ratios_rps)]
                entry[f"{kind}_vs_nginx_cpu_per_request"] = statistics.median(ratios_cpu)
        summary[key] = entry
    machine["loadavg_after"] = os.getloadavg()
    return {"machine": machine, "summary": summary, "runs": runs}



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
    ap.add_argument("--scaling", action="store_true", help="flat-out req/s per worker count")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="with --scaling")
    ap.add_argument("--mirror", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--cores", help="CPU list for the proxy (taskset -c), e.g. 0-3")
    ap.add_argument("--client-cores", help="CPU list for wrk and the backends, e.g. 4-15")
    ap.add_argument("--connections", type=int, default=64, help="with --scaling")
    ap.add_argument("--wrk-threads", type=int, default=2, help="with --scaling")
    ap.add_argument("--backend-workers", type=int, default=2, help="nginx backends' workers")
    ap.add_argument("--baseline-pythonpath", default="", help="an older onnxship to compare")
    ap.add_argument("--python-cost", action="store_true", help="the router's Python, no sockets")
    ap.add_argument("--repeats", type=int, default=7, help="with --python-cost: least of these")
    args = ap.parse_args()
    if args.python_cost:
        out = python_cost(args, Path(tempfile.mkdtemp(prefix="router-python-cost-")))
        print(json.dumps(out["summary"], indent=2))
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(out, indent=2))
        return
    nginx = ensure_nginx(not args.no_install)
    if args.scaling:
        if not nginx:
            sys.exit("--scaling needs nginx (apt-get install nginx-light)")
        tmp = Path(tempfile.mkdtemp(prefix="router-scaling-"))
        out = scaling(args, nginx, tmp)
        print(json.dumps(out["summary"], indent=2))
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(out, indent=2))
        return
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
