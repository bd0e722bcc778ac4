#!/usr/bin/env python
"""Benchmark `onnxship route` on streamed answers: what it adds to server-sent events.

A script, not a test. In one run, on one machine, the same streamed chat requests are sent
directly to a backend (the anchor) and through ``onnxship route`` (started through the CLI,
splitting 90/10 between two backends), rounds interleaving the two paths:

- first-event latency: one client, sequential requests; the time from sending the request
  to receiving the first token event. Reported as p50 and p99 of each path and the router's
  addition (router minus direct, per round; goal < 1 ms);
- events/s at ``--streams`` concurrent streams (8): aggregate token events received per
  second, router over direct (goal >= 0.95x), against a fake backend that streams at a fixed
  rate (``--gap-ms`` between events) and flat out (no gap: the router's ceiling);
- CPU per event at the fixed rate: the router process's own (from /proc), against the
  backends' CPU per event in the same runs: robust to a busy shared machine, where the ratio
  of events/s mostly measures who got the cores;
- first-event latency in one process: the same backend, router and client on one event loop,
  so that what the router adds is its own work, without the operating system's hand-offs
  between processes (which a loaded shared VM stretches to milliseconds).

The fake backend is aiohttp sending OpenAI chat chunks (role chunk, ``--tokens`` token
chunks, finish, usage, [DONE]). ``--llm`` adds the same measures against ``onnxship serve``
on the tiny test decoder (tests/helpers/tiny_llm.py) when the server speaks the OpenAI API
(else it says why it was skipped).

    .venv/bin/python bench/router_stream_bench.py [--rounds 3] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from router_bench import ONNXSHIP, Proc, cpu_seconds, free_port, start_router, wait_http

ROOT = Path(__file__).resolve().parents[1]

FAKE_BACKEND = r"""
import asyncio, json, sys
from aiohttp import web
port, tokens, gap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def event(doc):
    return b"data: " + json.dumps(doc).encode() + b"\n\n"
def chunk(delta, finish=None):
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
async def chat(request):
    doc = await request.json()
    n = int(doc.get("max_tokens") or tokens)
    g = float(doc.get("gap", gap))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(event(chunk({"role": "assistant", "content": ""})))
    for i in range(n):
        if i and g:
            await asyncio.sleep(g)
        await resp.write(event(chunk({"content": f" t{i}"})))
    await resp.write(event(chunk({}, "stop")))
    await resp.write(event({**chunk({}), "choices": [],
                            "usage": {"prompt_tokens": 1, "completion_tokens": n}}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
async def ready(request):
    return web.Response()
app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/v2/health/ready", ready)
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
"""

# The client: its own process, so that it does not share a core's event loop with a server.
CLIENT = r"""
import asyncio, json, sys, time
import aiohttp
url, mode, n, streams, seconds, body = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
    int(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6]))
async def one(s, firsts):
    events = 0
    t0 = time.perf_counter()
    async with s.post(url, json=body) as r:
        assert r.status == 200, r.status
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if not block.startswith(b"data: {"):
                    continue
                choices = json.loads(block[6:]).get("choices")
                if choices and (choices[0].get("delta") or {}).get("content"):
                    if events == 0:
                        firsts.append(time.perf_counter() - t0)
                    events += 1
    return events
async def main():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
        firsts = []
        for _ in range(3):
            await one(s, [])
        if mode == "first":
            for _ in range(n):
                await one(s, firsts)
            print(json.dumps({"first_ms": [x * 1000 for x in firsts]}))
            return
        stop = time.perf_counter() + seconds
        total = 0
        async def worker():
            nonlocal total
            while time.perf_counter() < stop:
                n = await one(s, firsts)  # not `total += await ...`: that loses updates
                total += n
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        wall = time.perf_counter() - t0
        print(json.dumps({"events": total, "events_per_s": total / wall, "wall_s": wall}))
asyncio.run(main())
"""


def client(
    tmp: Path, url: str, mode: str, n: int, streams: int, seconds: float, body: dict[str, Any]
) -> dict[str, Any]:
    script = tmp / "stream_client.py"
    if not script.exists():
        script.write_text(CLIENT)
    out = subprocess.run(
        [sys.executable, str(script), url, mode, str(n), str(streams), str(seconds),
         json.dumps(body)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def start_fake(tmp: Path, name: str, tokens: int, gap: float) -> tuple[Proc, str]:
    port = free_port()
    script = tmp / "fake_sse_backend.py"
    script.write_text(FAKE_BACKEND)
    argv = [sys.executable, str(script), str(port), str(tokens), str(gap)]
    proc = Proc(argv, tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready")
    return proc, url


def q(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def measure(
    tmp: Path, targets: dict[str, str], args: argparse.Namespace, body: dict[str, Any],
    label: str, path: str, pids: dict[str, list[int]],
) -> dict[str, Any]:  # fmt: skip
    """Rounds interleaving the paths: first-event latency, then events/s at N streams at the
    fixed rate and flat out."""
    rounds: list[dict[str, dict[str, float]]] = []
    for i in range(args.rounds):
        row: dict[str, dict[str, float]] = {}
        order = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in order:
            url = targets[name] + path
            first = client(tmp, url, "first", args.requests, 1, 0, {**body, "max_tokens": 2})
            cpu0 = {k: sum(cpu_seconds(x) for x in v) for k, v in pids.items()}
            fixed = client(tmp, url, "tput", 0, args.streams, args.seconds, body)
            cpu = {k: sum(cpu_seconds(x) for x in v) - cpu0[k] for k, v in pids.items()}
            events = max(1, fixed["events"])
            row[name] = {
                "first_p50_ms": statistics.median(first["first_ms"]),
                "first_p99_ms": q(first["first_ms"], 0.99),
                "events_per_s": fixed["events_per_s"],
                "backend_cpu_us_per_event": cpu["backend"] / events * 1e6,
            }
            if name == "router":
                row[name]["router_cpu_us_per_event"] = cpu["router"] / events * 1e6
            if "gap" in body:
                flat = client(tmp, url, "tput", 0, args.streams, args.seconds, {**body, "gap": 0})
                row[name]["flat_events_per_s"] = flat["events_per_s"]
        rounds.append(row)
        d, r = row["direct"], row["router"]
        print(
            f"[{label}] round {i + 1}: first event p50 direct {d['first_p50_ms']:.3f} ms, "
            f"router {r['first_p50_ms']:.3f} ms (p99 {d['first_p99_ms']:.3f} / "
            f"{r['first_p99_ms']:.3f}); {args.streams} streams {d['events_per_s']:.0f} / "
            f"{r['events_per_s']:.0f} events/s; CPU/event router {r['router_cpu_us_per_event']:.0f}"
            f" us, backend {r['backend_cpu_us_per_event']:.0f} us"
            + (
                f"; flat out {d['flat_events_per_s']:.0f} / {r['flat_events_per_s']:.0f}"
                if "flat_events_per_s" in d
                else ""
            ),
            flush=True,
        )

    def per_round(key: str, how: str) -> list[float]:
        if how == "minus":
            return [x["router"][key] - x["direct"][key] for x in rounds]
        return [x["router"][key] / x["direct"][key] for x in rounds if x["direct"][key]]

    summary: dict[str, Any] = {
        "rounds": rounds,
        "added_first_p50_ms": statistics.median(per_round("first_p50_ms", "minus")),
        "added_first_p99_ms": statistics.median(per_round("first_p99_ms", "minus")),
        "events_ratio": statistics.median(per_round("events_per_s", "over")),
        "router_cpu_us_per_event": statistics.median(
            x["router"]["router_cpu_us_per_event"] for x in rounds
        ),
        "backend_cpu_us_per_event": statistics.median(
            x["router"]["backend_cpu_us_per_event"] for x in rounds
        ),
    }
    if "flat_events_per_s" in rounds[0]["direct"]:
        summary["flat_events_ratio"] = statistics.median(per_round("flat_events_per_s", "over"))
    return summary


async def _in_one_process(n: int) -> dict[str, Any]:
    import asyncio

    import aiohttp
    from aiohttp import web

    from onnxship.router.server import RouterSettings, serve

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for doc in ({"role": "assistant", "content": ""}, {"content": " t0"}):
            await resp.write(b"data: " + json.dumps({"choices": [{"delta": doc}]}).encode()
                             + b"\n\n")  # fmt: skip
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend = f"http://127.0.0.1:{runner.addresses[0][1]}"
    routes = Path(tempfile.mkdtemp(prefix="router-stream-inproc-")) / "routes.json"
    routes.write_text(json.dumps({"backends": [{"revision": "r1", "url": backend, "weight": 100}]}))
    port, stop = free_port(), asyncio.Event()
    task = asyncio.create_task(serve(RouterSettings(port=port, routes_file=routes), stop))
    router = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {"direct": [], "router": []}
    body = {"model": "m", "messages": [], "stream": True}
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            try:
                async with s.get(f"{router}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        for i in range(n + 10):
            for name, url in (("direct", backend), ("router", router)):
                t0 = time.perf_counter()
                async with s.post(f"{url}/v1/chat/completions", json=body) as r:
                    buf = b""
                    while b" t0" not in buf:
                        buf += await r.content.readany()
                    first = time.perf_counter() - t0
                    await r.read()
                if i >= 10:  # warm
                    out[name].append(first * 1000)
    stop.set()
    await task
    await runner.cleanup()
    d, r = out["direct"], out["router"]
    return {
        "direct_p50_ms": statistics.median(d), "router_p50_ms": statistics.median(r),
        "direct_p99_ms": q(d, 0.99), "router_p99_ms": q(r, 0.99),
        "added_p50_ms": statistics.median(r) - statistics.median(d),
        "added_p99_ms": q(r, 0.99) - q(d, 0.99),
    }  # fmt: skip


def in_one_process(n: int) -> dict[str, Any]:
    import asyncio

    return asyncio.run(_in_one_process(n))


def start_llm(tmp: Path) -> tuple[Proc | None, str, str]:
    """``onnxship serve`` on the tiny decoder; (proc, url, why not) when it cannot stream."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from helpers.tiny_llm import build_tiny_llm  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, "", f"tests/helpers/tiny_llm.py not importable: {exc}"
    model = build_tiny_llm(tmp / "tiny-llm")
    port = free_port()
    args = [*ONNXSHIP, "--log-level", "WARNING", "serve", "--model", str(model), "--name", "m",
            "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "-1"]  # fmt: skip
    proc = Proc(args, tmp / "llm-serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v2/health/ready", timeout=120)
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
            r.read()
    except (RuntimeError, OSError, urllib.error.HTTPError) as exc:
        proc.stop()
        tail = (tmp / "llm-serve.log").read_text(errors="replace").strip().splitlines()[-1:]
        return None, "", f"onnxship serve does not stream the OpenAI API here: {exc} {tail}"
    return proc, url, ""


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100, help="sequential, per round and path")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tokens", type=int, default=64, help="events per streamed answer")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="fixed rate of the fake backend")
    ap.add_argument("--llm", action="store_true", help="also against onnxship serve, tiny LLM")
    ap.add_argument("--llm-tokens", type=int, default=32)
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    results: dict[str, Any] = {"streams": args.streams, "gap_ms": args.gap_ms}
    tmp = Path(tempfile.mkdtemp(prefix="router-stream-bench-"))
    procs: list[Proc] = []
    try:
        gap = args.gap_ms / 1000
        p1, u1 = start_fake(tmp, "fake-r1", args.tokens, gap)
        p2, u2 = start_fake(tmp, "fake-r2", args.tokens, gap)
        procs += [p1, p2]
        pr, router_url = start_router(tmp, [("r1", u1, 90), ("r2", u2, 10)])
        procs.append(pr)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": args.tokens, "gap": gap}  # fmt: skip
        t0 = time.monotonic()
        pids = {"router": [pr.p.pid], "backend": [p1.p.pid, p2.p.pid]}
        results["fake"] = measure(
            tmp, {"direct": u1, "router": router_url}, args, body, "fake",
            "/v1/chat/completions", pids,
        )  # fmt: skip
        results["fake"]["seconds"] = round(time.monotonic() - t0, 1)
        results["in_one_process"] = inproc = in_one_process(args.requests * 2)
        print(
            f"[one process] first event p50 direct {inproc['direct_p50_ms']:.3f} ms, router "
            f"{inproc['router_p50_ms']:.3f} ms; p99 {inproc['direct_p99_ms']:.3f} / "
            f"{inproc['router_p99_ms']:.3f} ms",
            flush=True,
        )
        for p in procs:
            p.stop()
        procs.clear()
        if args.llm:
            proc, url, why = start_llm(tmp)
            if proc is None:
                results["llm"] = {"skipped": why}
                print(f"[llm] skipped: {why}", flush=True)
            else:
                procs.append(proc)
                pr, router_url = start_router(tmp, [("r1", url, 100)])
                procs.append(pr)
                body = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}],
                        "stream": True, "max_tokens": args.llm_tokens,
                        "temperature": 0}  # fmt: skip
                pids = {"router": [pr.p.pid], "backend": [proc.p.pid]}
                results["llm"] = measure(
                    tmp, {"direct": url, "router": router_url}, args, body, "llm",
                    "/v1/chat/completions", pids,
                )  # fmt: skip
    finally:
        for p in procs:
            p.stop()
    print(json.dumps({k: v for k, v in results.items()}, indent=2))
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
