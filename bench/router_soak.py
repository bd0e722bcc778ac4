#!/usr/bin/env python
"""Soak `onnxship route`: does it keep its file descriptors and memory under sustained load?

A script, not a test (issue 12; `make bench-soak`, about 5 minutes). It starts two trivial
v2 backends and `onnxship route` (through the CLI, admin port on) splitting between them,
then for ``--seconds`` (300) drives it with ``--concurrency`` keep-alive clients from a
separate process, where one request in ``--fresh-every`` goes over a new connection (closed
after the answer), and changes the route table every ``--churn-every`` seconds (weights,
and a 10% mirror to the second backend every other time). Every ``--interval`` seconds it
samples the router process's open file descriptors (``/proc/<pid>/fd``) and resident memory
(``VmRSS``). Growth is the median of the last minute over the median of the first minute
after a ``--warmup`` of 10 s (the connection pools fill, then hold); with ``--workers N`` the
figures are the supervisor's and its workers' together. Above
``--max-fd-growth`` or ``--max-rss-growth`` the script exits 1.

    .venv/bin/python bench/router_soak.py [--seconds 300] [--out-json FILE]

Writes ``bench/results/raw/router_soak.json`` unless ``--out-json`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from router_bench import ONNXSHIP, TRIVIAL_BODY, Proc, free_port, start_trivial, wait_http

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "soak"

LOAD = r"""
import asyncio, collections, json, sys, time
import aiohttp
url, body_path = sys.argv[1], sys.argv[2]
concurrency, seconds, fresh_every = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
body = open(body_path, "rb").read()
headers = {"Content-Type": "application/json"}
async def main():
    codes, failures, n = collections.Counter(), collections.Counter(), 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as keep, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        stop = time.perf_counter() + seconds
        async def worker():
            nonlocal n
            while time.perf_counter() < stop:
                n += 1
                s = fresh if fresh_every and n % fresh_every == 0 else keep
                try:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
                        codes[r.status] += 1
                except aiohttp.ClientError as exc:
                    failures[type(exc).__name__] += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    total = sum(codes.values())
    print(json.dumps({"requests": total, "rps": total / wall, "codes": dict(codes),
                      "client_errors": dict(failures)}))
asyncio.run(main())
"""


def sample(pid: int) -> tuple[int, int]:
    """(open file descriptors, VmRSS in bytes) of a process and its children (--workers)."""
    fds = rss = 0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    for p in pids:
        fds += len(os.listdir(f"/proc/{p}/fd"))
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return fds, rss


def routes(u1: str, u2: str, step: int) -> dict[str, Any]:
    w = (step * 37) % 101
    doc: dict[str, Any] = {
        "backends": [
            {"revision": "r1", "url": u1, "weight": 100 - w},
            {"revision": "r2", "url": u2, "weight": w},
        ]
    }
    if step % 2 and w < 100:
        doc["mirror"] = {"revision": "r2", "percent": 10}
    return doc


def put_routes(admin: str, doc: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"{admin}/onnxship/routes",
        data=json.dumps(doc).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def wait_admin(admin: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(
        f"{admin}/onnxship/routes", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    while True:
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def growth(
    samples: list[dict[str, float]], key: str, seconds: float, warmup: float
) -> dict[str, float]:
    """Last minute over first minute (after the warm-up: pools fill, then stay)."""
    window = min(60.0, (seconds - warmup) / 3)
    first = statistics.median(s[key] for s in samples if warmup <= s["t"] < warmup + window)
    end = statistics.median(s[key] for s in samples if s["t"] >= seconds - window)
    return {
        "start": samples[0][key],
        "first_minute_median": first,
        "last_minute_median": end,
        "end": samples[-1][key],
        "max": max(s[key] for s in samples),
        "ratio": round(end / first, 4),
    }


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--churn-every", type=float, default=2.0, help="seconds between route changes")
    ap.add_argument("--fresh-every", type=int, default=50, help="1 in N on a new connection")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the baseline")
    ap.add_argument("--max-fd-growth", type=float, default=1.25)
    ap.add_argument("--max-rss-growth", type=float, default=1.10)
    ap.add_argument("--workers", type=int, default=1, help="onnxship route --workers")
    ap.add_argument("--out-json", type=Path, default=ROOT / "bench/results/raw/router_soak.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="router-soak-"))
    procs: list[Proc] = []
    try:
        b1, u1 = start_trivial(tmp, "r1")
        b2, u2 = start_trivial(tmp, "r2")
        procs += [b1, b2]
        port, admin_port = free_port(), free_port()
        router = Proc(
            [*ONNXSHIP, "--log-level", "WARNING", "route", "--port", str(port),
             "--admin-port", str(admin_port), "--admin-token", TOKEN,
             "--workers", str(args.workers)],
            tmp / "router.log",
        )  # fmt: skip
        procs.append(router)
        url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        wait_http(f"{url}/healthz")
        wait_admin(admin)  # with --workers, opened once every worker is up
        put_routes(admin, routes(u1, u2, 0))
        body = tmp / "body.json"
        body.write_bytes(TRIVIAL_BODY)
        script = tmp / "soak_load.py"
        script.write_text(LOAD)
        load = subprocess.Popen(
            [sys.executable, str(script), f"{url}/v2/models/m/infer", str(body),
             str(args.concurrency), str(args.seconds), str(args.fresh_every)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        samples: list[dict[str, float]] = []
        t0 = time.monotonic()
        next_sample, next_churn, step = t0, t0 + args.churn_every, 0
        while load.poll() is None:
            now = time.monotonic()
            if now >= next_sample and now - t0 <= args.seconds:
                fds, rss = sample(router.p.pid)
                samples.append({"t": round(now - t0, 2), "fds": fds, "rss_mib": rss / 2**20})
                print(f"{now - t0:6.1f}s  fds {fds:4d}  rss {rss / 2**20:6.1f} MiB", flush=True)
                next_sample += args.interval
            if now >= next_churn:
                step += 1
                put_routes(admin, routes(u1, u2, step))
                next_churn += args.churn_every
            time.sleep(max(0.01, min(next_sample, next_churn) - time.monotonic()))
        out, _ = load.communicate()
        traffic = json.loads(out)
        assert router.p.poll() is None, (tmp / "router.log").read_text()[-2000:]
        fds = growth(samples, "fds", args.seconds, args.warmup)
        rss = growth(samples, "rss_mib", args.seconds, args.warmup)
        ok = fds["ratio"] <= args.max_fd_growth and rss["ratio"] <= args.max_rss_growth
        results = {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "route_changes": step,
            "traffic": traffic,
            "fds": fds,
            "rss_mib": rss,
            "limits": {"fd_growth": args.max_fd_growth, "rss_growth": args.max_rss_growth},
            "verdict": "ok" if ok else "grew",
            "samples": samples,
        }
    finally:
        for p in procs:
            p.stop()
    summary = {k: v for k, v in results.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(results, indent=2) + "\n")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
