"""A closed-loop load generator fast enough not to be the bottleneck (bench/scaling_bench.py).

Several processes (pinned where asked), each an asyncio event loop driving its share of the
connections with raw ``asyncio.Protocol`` sockets: keep-alive HTTP/1.1, request bytes built
once, the next request written from ``data_received`` the moment an answer is complete (no
coroutine, no client library per request). gRPC goes through ``grpc.aio`` with the requests
serialized once (the method is called with bytes in and bytes out), one TCP connection per
channel so that SO_REUSEPORT spreads them over the server's workers.

Every answer's status is read: a non-200 answer, a broken connection or an output that does
not match the one expected (spot-checked every ``check_every``-th answer of a connection, and
the first) counts as an error, never as throughput. Each process warms up, then counts the
answers completed inside one timed window shared by all processes (CLOCK_MONOTONIC is one
clock for the whole machine), and reports its own CPU time over the window so that a saturated
load generator shows.

    from loadgen import Check, Target, http_request, run
    target = Target("http", "127.0.0.1", port, [http_request(path, body)], Check("json", "y", [y]))
    result = run(target, connections=96, processes=4, warmup=2, seconds=10, cores={2, 3})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
# grpc.aio's channels do their socket I/O on EventEngine threads, which then wake the event
# loop: 140 us of client CPU per call on the MLP, 90 with these off (the socket I/O on the
# loop's own poller). Where the load shares the server's cores (N=2 on 2 cores) that CPU is
# the server's loss: +18-22% gRPC answers/s. Set in the load processes only, before grpc loads.
GRPC_CLIENT_ENV = {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_for_all_other_endpoints"}

# ---------------------------------------------------------------------------- wire format


def http_request(
    path: str, body: bytes, headers: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> bytes:
    """One keep-alive HTTP/1.1 POST, byte for byte as it goes on the wire."""
    head = {"Host": host, "Content-Type": "application/json", **(headers or {})}
    head["Content-Length"] = str(len(body))
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1") + body


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class ResponseParser:
    """Incremental HTTP/1.1 response reader: Content-Length or chunked bodies, split anywhere
    across reads. ``feed`` returns the answers completed by these bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Response]:
        self.buf += data
        out = []
        while True:
            r = self._one()
            if r is None:
                return out
            out.append(r)

    def _one(self) -> Response | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {head[0][:80]!r}")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            pos = start
            while True:
                eol = self.buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    # last chunk, then optional trailers, then an empty line
                    tail = self.buf.find(b"\r\n\r\n", eol)
                    if tail < 0:
                        return None
                    del self.buf[: tail + 4]
                    return Response(int(parts[1]), headers, bytes(body))
                if len(self.buf) < eol + 2 + size + 2:
                    return None
                body += self.buf[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < start + length:
            return None
        body_bytes = bytes(self.buf[start : start + length])
        del self.buf[: start + length]
        return Response(int(parts[1]), headers, body_bytes)


# ---------------------------------------------------------------------------- checking answers


@dataclass(frozen=True)
class Check:
    """How to read an answer's output and what it must be, per request index.

    form: ``json`` (OIP JSON), ``binary`` (Triton's binary tensor extension: a JSON header of
    ``Inference-Header-Content-Length`` bytes, then the raw tensors) or ``grpc``
    (a serialized ModelInferResponse with raw_output_contents)."""

    form: str
    output: str
    expected: Sequence[np.ndarray]
    rtol: float = 1e-3
    atol: float = 1e-4


def read_output(check: Check, body: bytes, headers: dict[str, str]) -> np.ndarray:
    """The named output of one answer as float32, flat."""
    if check.form == "json":
        outs = json.loads(body)["outputs"]
        out = next(o for o in outs if o["name"] == check.output)
        return np.asarray(out["data"], dtype=np.float32)
    if check.form == "binary":
        n = int(headers["inference-header-content-length"])
        outs = json.loads(body[:n])["outputs"]
        offset = n
        for o in outs:
            size = (o.get("parameters") or {}).get("binary_data_size")
            if o["name"] == check.output:
                if size is None:  # the server chose JSON for this output
                    return np.asarray(o["data"], dtype=np.float32)
                return np.frombuffer(body[offset : offset + size], dtype="<f4")
            offset += size or 0
        raise KeyError(check.output)
    if check.form == "grpc":
        from onnxship.serve.proto import oip_pb2 as pb

        resp = pb.ModelInferResponse.FromString(body)
        idx = next(i for i, o in enumerate(resp.outputs) if o.name == check.output)
        if resp.raw_output_contents:
            return np.frombuffer(resp.raw_output_contents[idx], dtype="<f4")
        return np.asarray(resp.outputs[idx].contents.fp32_contents, dtype=np.float32)
    raise ValueError(f"unknown check form {check.form!r}")


def mismatch(check: Check, index: int, body: bytes, headers: dict[str, str]) -> str | None:
    """None when the answer holds the expected output, else what is wrong."""
    try:
        got = read_output(check, body, headers)
    except (KeyError, ValueError, StopIteration, TypeError) as exc:
        return f"unreadable answer ({exc!r}): {body[:120]!r}"
    want = np.asarray(check.expected[index], dtype=np.float32).ravel()
    if got.size != want.size:
        return f"output {check.output!r} has {got.size} values, expected {want.size}"
    if not np.allclose(got, want, rtol=check.rtol, atol=check.atol):
        worst = float(np.max(np.abs(got - want)))
        return f"output {check.output!r} differs from the expected by up to {worst:.3g}"
    return None


# ---------------------------------------------------------------------------- one process


@dataclass(frozen=True)
class Target:
    kind: str  # "http" | "grpc"
    host: str
    port: int
    requests: Sequence[bytes]  # full HTTP requests, or serialized ModelInferRequests
    check: Check | None = None
    check_every: int = 16  # per connection; its first answer is always checked
    grpc_channels: int = 8  # per process


@dataclass
class Tally:
    """One process's counts; merged by the parent."""

    t_start: float
    t_end: float
    ok: int = 0  # answers completed inside the window, status 200, checked or not
    errors: int = 0  # anywhere (warm-up included): an error must never pass unseen
    checked: int = 0
    reconnects: int = 0
    samples: list[str] = field(default_factory=list)  # the first few error messages
    latencies: array = field(default_factory=lambda: array("d"))  # seconds, window only
    cpu_s: float = 0.0  # this process's CPU time over the window

    def answer(self, sent: float, now: float) -> None:
        if self.t_start <= now < self.t_end:
            self.ok += 1
            self.latencies.append(now - sent)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(message[:300])


class _HttpConn(asyncio.Protocol):
    """One keep-alive connection in a closed loop: the next request leaves as soon as the
    previous answer is complete."""

    def __init__(self, gen: _HttpGen, first: int) -> None:
        self.gen = gen
        self.next = first
        self.parser = ResponseParser()
        self.answers = 0
        self.transport: asyncio.Transport | None = None
        self.index = 0
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        now = time.monotonic()
        if now >= self.gen.tally.t_end:
            self.transport.close()
            return
        reqs = self.gen.target.requests
        self.index = self.next % len(reqs)
        self.next += 1
        self.sent = now
        self.transport.write(reqs[self.index])

    def data_received(self, data: bytes) -> None:
        try:
            answers = self.parser.feed(data)
        except ValueError as exc:
            self.gen.tally.error(str(exc))
            assert self.transport is not None
            self.transport.abort()
            return
        for r in answers:
            self.gen.answered(self, r)
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class _HttpGen:
    def __init__(self, target: Target, tally: Tally, connections: int, offset: int) -> None:
        self.target, self.tally = target, tally
        self.connections, self.offset = connections, offset
        self.loop = asyncio.get_running_loop()
        self.open: set[_HttpConn] = set()

    def answered(self, conn: _HttpConn, r: Response) -> None:
        t = self.tally
        now = time.monotonic()
        if r.status != 200:
            t.error(f"HTTP {r.status}: {r.body[:200]!r}")
            return
        check = self.target.check
        if check is not None and conn.answers % self.target.check_every == 0:
            t.checked += 1
            wrong = mismatch(check, conn.index, r.body, r.headers)
            if wrong:
                t.error(wrong)
                conn.answers += 1
                return
        conn.answers += 1
        t.answer(conn.sent, now)

    def lost(self, conn: _HttpConn) -> None:
        self.open.discard(conn)
        if time.monotonic() < self.tally.t_end:
            # the server closed a keep-alive connection mid-run: an error, then a new one
            self.tally.error("connection closed by the server before the end")
            self.tally.reconnects += 1
            self.loop.create_task(self.connect(conn.next))

    async def connect(self, first: int) -> None:
        while time.monotonic() < self.tally.t_end:
            try:
                _, conn = await self.loop.create_connection(
                    lambda: _HttpConn(self, first), self.target.host, self.target.port
                )
            except OSError as exc:
                self.tally.error(f"connect: {exc!r}")
                await asyncio.sleep(0.05)
                continue
            self.open.add(conn)
            return

    async def run(self) -> None:
        # Each connection starts at its own request, so that all of them are in use.
        await asyncio.gather(*(self.connect(self.offset + k) for k in range(self.connections)))
        await asyncio.sleep(max(0.0, self.tally.t_end - time.monotonic()))
        # the window is over: answers still in flight would not count, so do not wait for them
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.abort()


async def _grpc_run(target: Target, tally: Tally, connections: int, offset: int) -> None:
    import grpc

    channels = [
        grpc.aio.insecure_channel(
            f"{target.host}:{target.port}",
            # a channel of its own per connection: channels with equal arguments otherwise share
            # one TCP connection, and SO_REUSEPORT could hand all of them to one worker
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        for _ in range(min(target.grpc_channels, connections))
    ]
    await asyncio.gather(*(ch.channel_ready() for ch in channels))
    calls = [ch.unary_unary(GRPC_INFER) for ch in channels]  # bytes in, bytes out
    reqs = target.requests

    async def client(k: int) -> None:
        call = calls[k % len(calls)]
        i, answers = offset + k, 0
        while time.monotonic() < tally.t_end:
            index = i % len(reqs)
            i += connections
            sent = time.monotonic()
            try:
                body = await call(reqs[index])
            except grpc.aio.AioRpcError as exc:
                tally.error(f"gRPC {exc.code().name}: {exc.details()}")
                continue
            now = time.monotonic()
            if target.check is not None and answers % target.check_every == 0:
                tally.checked += 1
                wrong = mismatch(target.check, index, body, {})
                if wrong:
                    tally.error(wrong)
                    answers += 1
                    continue
            answers += 1
            tally.answer(sent, now)

    clients = asyncio.gather(*(client(k) for k in range(connections)))
    try:
        await asyncio.sleep(max(0.0, tally.t_end - time.monotonic()))
        await asyncio.sleep(0.05)  # calls answered just in time finish their check
        clients.cancel()  # calls still in flight would not count: do not wait for them
        with contextlib.suppress(asyncio.CancelledError):
            await clients
    finally:
        for ch in channels:
            await ch.close()


# ---------------------------------------------------------------------------- processes


def _pin(cores: Iterable[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, set(cores))


def _timed_child(
    work: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
    cores: list[int] | None,
    times: Any,
    go: Any,
    ready: Any,
    results: Any,
) -> None:
    """Pin, prepare, say ready, wait for the window's times, work, send the result."""
    _pin(cores)
    try:
        prepared = work(None, *args)  # the work's set-up (sessions, request bytes)
    except Exception as exc:  # reported to the parent, which fails the measurement
        ready.put(("error", repr(exc)))
        return
    ready.put(("ready", os.getpid()))
    go.wait()
    try:
        results.put(("ok", work(prepared, times[0], times[1])))
    except Exception as exc:
        results.put(("error", repr(exc)))


def timed(
    work: Callable[..., dict[str, Any]],
    args: Sequence[tuple[Any, ...]],
    cores: Iterable[int] | None,
    warmup: float,
    seconds: float,
    start_timeout: float = 120.0,
    probe: Callable[[], float] | None = None,
) -> tuple[list[dict[str, Any]], float | None]:
    """Run ``work`` in one spawned process per item of ``args``, all pinned to ``cores``, over
    one shared window: ``work(None, *a)`` prepares and returns what the run needs;
    ``work(prepared, t_start, t_end)`` warms up until ``t_start``, counts until ``t_end`` and
    returns a dict. A process that fails raises here with its error. ``probe`` (a counter, e.g.
    the server's CPU seconds) is read at both ends of the window; its difference is returned."""
    ctx = mp.get_context("spawn")  # the parent holds ORT sessions and threads: no fork
    times = ctx.Array("d", 2)
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    pinned = sorted(cores) if cores else None
    procs = [
        ctx.Process(target=_timed_child, args=(work, a, pinned, times, go, ready, results))
        for a in args
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            status, what = ready.get(timeout=start_timeout)
            if status != "ready":
                raise RuntimeError(f"load process failed to start: {what}")
        t_start = time.monotonic() + warmup
        times[0], times[1] = t_start, t_start + seconds
        go.set()
        delta = None
        if probe is not None:
            time.sleep(max(0.0, t_start - time.monotonic()))
            before = probe()
            time.sleep(max(0.0, t_start + seconds - time.monotonic()))
            delta = probe() - before
        out = []
        for _ in procs:
            status, what = results.get(timeout=warmup + seconds + 120)
            if status != "ok":
                raise RuntimeError(f"load process failed: {what}")
            out.append(what)
        return out, delta
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def _load_work(
    prepared: Any, *args: Any
) -> Any:  # (None, target, connections, offset) | (prepared, t_start, t_end)
    if prepared is None:
        target = args[0]
        if target.kind == "grpc":  # imports take a while: before the window's clock starts
            for key, value in GRPC_CLIENT_ENV.items():
                os.environ.setdefault(key, value)
            import grpc  # noqa: F401

            from onnxship.serve.proto import oip_pb2  # noqa: F401
        return args
    target, connections, offset = prepared
    t_start, t_end = args
    tally = Tally(t_start, t_end)

    async def main() -> None:
        # warm-up: the connections run from now, answers count from t_start
        async def cpu_mark() -> None:
            await asyncio.sleep(max(0.0, t_start - time.monotonic()))
            c0 = time.process_time()
            await asyncio.sleep(max(0.0, t_end - time.monotonic()))
            tally.cpu_s = time.process_time() - c0

        mark = asyncio.ensure_future(cpu_mark())
        if target.kind == "http":
            await _HttpGen(target, tally, connections, offset).run()
        else:
            await _grpc_run(target, tally, connections, offset)
        await mark

    asyncio.run(main())
    return {
        "ok": tally.ok,
        "errors": tally.errors,
        "checked": tally.checked,
        "reconnects": tally.reconnects,
        "samples": tally.samples,
        "latencies": tally.latencies.tobytes(),
        "cpu_s": tally.cpu_s,
    }


def split(total: int, parts: int) -> list[int]:
    """``total`` connections over ``parts`` processes, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(
    target: Target,
    connections: int,
    processes: int,
    warmup: float,
    seconds: float,
    cores: Iterable[int] | None = None,
    server_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Closed-loop load on ``target`` from ``processes`` processes pinned to ``cores``:
    answers/s over the window, errors, latency percentiles, the generator's CPU use, and the
    server's CPU seconds over the window where ``server_cpu`` reads them."""
    shares = split(connections, processes)
    offsets = [sum(shares[:i]) for i in range(len(shares))]
    parts, cpu = timed(
        _load_work,
        [(target, n, off) for n, off in zip(shares, offsets, strict=True)],
        cores,
        warmup,
        seconds,
        probe=server_cpu,
    )
    lat = np.concatenate([np.frombuffer(p["latencies"], dtype="d") for p in parts]) * 1e3
    ok = sum(p["ok"] for p in parts)
    return {
        "rps": ok / seconds,
        "ok": ok,
        "errors": sum(p["errors"] for p in parts),
        "checked": sum(p["checked"] for p in parts),
        "reconnects": sum(p["reconnects"] for p in parts),
        "error_samples": [s for p in parts for s in p["samples"]][:3],
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "processes": len(parts),
        "connections": connections,
        # 1.0: every load process was busy the whole window (the generator may be the limit)
        "loadgen_cpu_share": sum(p["cpu_s"] for p in parts) / (seconds * len(parts)),
        "server_cpu_s": cpu,
    }


# ---------------------------------------------------------------------------- its own ceiling

CANNED = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[1.0]}]}'


class _Canned(asyncio.Protocol):
    """Answers every request with the same 200, at once: the fastest server there can be."""

    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(CANNED)).encode()
        + b"\r\n\r\n"
        + CANNED
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = 0
        while True:  # requests without bodies beyond their Content-Length: count the heads
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                break
            self.buf = self.buf[end + 4 + length :]
            n += 1
        if n:
            self.transport.write(self.answer * n)


def _canned_server(port: int, cores: list[int] | None, ready: Any) -> None:
    _pin(cores)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Canned, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def ceiling(
    connections: int,
    processes: int,
    seconds: float,
    load_cores: Iterable[int] | None = None,
    server_cores: Iterable[int] | None = None,
) -> dict[str, Any]:
    """What this generator drives against a server that costs nothing (one process answering
    a canned 200 at once): its own limit, to set beside the figures it measures."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    srv = ctx.Process(
        target=_canned_server,
        args=(port, sorted(server_cores) if server_cores else None, ready),
        daemon=True,
    )
    srv.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the canned server did not start")
        want = np.array([1.0], np.float32)
        target = Target(
            "http", "127.0.0.1", port, [http_request("/v2/models/m/infer", b"{}")],
            Check("json", "y", [want]),
        )  # fmt: skip
        return run(target, connections, processes, min(1.0, seconds), seconds, load_cores)
    finally:
        srv.kill()
        srv.join()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the load generator's own ceiling (a canned server)")
    ap.add_argument("--connections", type=int, default=96)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    r = ceiling(a.connections, a.processes, a.seconds)
    print(f"{r['rps']:,.0f} answers/s from {r['processes']} load processes, "
          f"{r['errors']} errors, load CPU share {r['loadgen_cpu_share']:.2f}")  # fmt: skip
