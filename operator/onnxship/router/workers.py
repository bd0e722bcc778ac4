"""``onnxship route --workers N``: N router processes on one port, one router to the outside.

One Python process proxies on one core. With N workers, the process started is a
supervisor: it forks N workers, each an ordinary router (its own event loop, connection
pools and metrics) listening on the inference port with SO_REUSEPORT, so the kernel spreads
client connections between them; the supervisor keeps the admin port (open at once: what it
is asked waits until every worker is up). Each worker also answers on a private control
socket (a Unix socket in a 0700 folder):

- ``PUT /routes``: adopt this table. The admin port's PUT answers once every worker has
  answered this one, so the next request sees the new routes whichever worker takes it.
  Each worker also watches the routes file itself (within ``--watch-interval``).
- ``GET /families``: the worker's metrics as data. ``/metrics`` on any worker, and on the
  admin port, merges every worker's (``metrics.merged_exposition``): a scrape sees the pod as
  one router, each request counted once, by the worker that proxied (and mirrored) it.

Per worker: the smooth weighted round robin (each follows the weights exactly over its own
requests), the mirror ratio (each copies its share of its own requests), passive health.
Sticky sessions hash their key, so every worker sends a session to the same revision.

The supervisor forwards SIGTERM and SIGINT (each worker drains as a lone router does),
restarts none (a worker that dies ends the pod: exit non-zero, Kubernetes restarts it) and
exits with the workers' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from onnxship.api.routes import RouteTable
from onnxship.cpus import cpu_quota

from .metrics import merged_exposition

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from .proxy import Router
    from .server import RouterSettings

log = logging.getLogger("onnxship.router")


def workers_for_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """``--workers 0``: one worker per CPU of the container's quota (rounded up, within the
    CPUs it may run on); 1 without a quota, where the node's core count says nothing about
    what the pod may use."""
    quota = cpu_quota(cgroup_root)
    if quota is None:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), math.ceil(quota)))


class WorkerUnavailable(Exception):
    """A worker did not answer on its control socket."""


@dataclass(frozen=True)
class Pod:
    """A worker's place in the pod: which one it is and where its siblings answer."""

    index: int
    count: int
    control_dir: Path

    def socket(self, i: int) -> Path:
        return self.control_dir / f"worker-{i}.sock"

    async def exposition(self, router: Router) -> bytes:
        """The pod's metrics: this worker's merged with its siblings'."""
        others = [i for i in range(self.count) if i != self.index]
        parts = await asyncio.gather(*(_families(self.socket(i)) for i in others))
        return merged_exposition([router.metrics.families(), *parts])

    async def start_control(self, router: Router) -> web.AppRunner:
        runner = web.AppRunner(control_app(router), access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(self.socket(self.index))).start()
        return runner


def control_app(router: Router) -> web.Application:
    """A worker's control socket: what the supervisor and the other workers ask of it."""
    from .server import parse_routes, routes_json

    async def get_routes(_: web.Request) -> web.Response:
        return web.Response(text=routes_json(router.routing.table), content_type="application/json")

    async def put_routes(request: web.Request) -> web.Response:
        table = parse_routes(await request.text())  # checked by the supervisor already
        changed = router.set_routes(table, request.query.get("source", "admin"))
        return web.json_response({"changed": changed})

    async def rejected(request: web.Request) -> web.Response:
        router.metrics.reloads.labels(request.query.get("source", "admin"), "invalid").inc()
        return web.json_response({})

    async def families(_: web.Request) -> web.Response:
        return web.json_response(router.metrics.families())

    app = web.Application()
    app.router.add_get("/routes", get_routes)
    app.router.add_put("/routes", put_routes)
    app.router.add_post("/rejected", rejected)
    app.router.add_get("/families", families)
    return app


async def _call(path: Path, method: str, url: str, body: bytes = b"", timeout: float = 10.0) -> Any:
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(path)),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as session,
            session.request(method, f"http://worker{url}", data=body) as resp,
        ):
            if resp.status != 200:
                raise WorkerUnavailable(f"{path.name} answered {resp.status}")
            return await resp.json()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise WorkerUnavailable(f"{path.name}: {exc}") from exc


async def _families(path: Path) -> list[dict[str, Any]]:
    return list(await _call(path, "GET", "/families"))


class Fleet:
    """The supervisor's side: the admin port's operations, done on every worker."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.sockets = [pod.socket(i) for i in range(pod.count)]
        # The admin port opens at once; what it is asked waits until every worker is up.
        self.ready = asyncio.Event()

    async def _up(self, timeout: float = 60.0) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise WorkerUnavailable(f"the workers are not up after {timeout:g}s") from None

    async def table_json(self) -> str:
        from .server import routes_json

        await self._up()
        doc = await _call(self.sockets[0], "GET", "/routes")
        return routes_json(RouteTable.model_validate(doc))

    async def adopt(self, table: RouteTable, source: str) -> bool:
        """Every worker has ``table`` when this returns; True when it changed anything."""
        from .server import routes_json

        body = routes_json(table).encode()
        await self._up()
        answers = await asyncio.gather(
            *(_call(s, "PUT", f"/routes?source={source}", body) for s in self.sockets)
        )
        return any(a.get("changed") for a in answers)

    async def rejected(self, source: str) -> None:
        url = f"/rejected?source={source}"
        await self._up()
        await asyncio.gather(*(_call(s, "POST", url) for s in self.sockets))

    async def exposition(self) -> bytes:
        await self._up()
        return merged_exposition(list(await asyncio.gather(*(_families(s) for s in self.sockets))))


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to the inference port with SO_REUSEPORT, not listening: it resolves
    port 0 for the workers and holds the port while they start; the kernel hands
    connections only to the listening workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _worker(settings: RouterSettings, pod: Pod) -> None:
    from onnxship.eventloop import loop_factory

    from .server import ListenError, serve

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings, pod=pod))
    except ListenError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None


def supervise(settings: RouterSettings) -> int:
    """Run ``settings.workers`` routers on one port until SIGTERM/SIGINT; their exit status."""
    from onnxship.eventloop import loop_factory

    try:
        holder = _reserve(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    port = int(holder.getsockname()[1])
    control_dir = Path(tempfile.mkdtemp(prefix="onnxship-route-"))
    pod = Pod(0, settings.workers, control_dir)
    # Forked before the supervisor's event loop exists: the workers start from a clean state.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(
            target=_worker,
            args=(replace(settings, port=port, admin_port=0), replace(pod, index=i)),
            name=f"onnxship-route-{i}",
        )
        for i in range(settings.workers)
    ]
    try:
        for w in workers:
            w.start()
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(_supervise(settings, port, workers, Fleet(pod)))
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join(5)
        shutil.rmtree(control_dir, ignore_errors=True)
        holder.close()


async def _supervise(
    settings: RouterSettings, port: int, workers: Sequence[BaseProcess], fleet: Fleet
) -> int:
    from .server import admin_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    admin: web.AppRunner | None = None
    if settings.admin_port and not stop.is_set():
        admin = web.AppRunner(
            admin_app(fleet, settings.admin_token, settings.routes_file), access_log=None
        )
        await admin.setup()
        try:
            await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
        except OSError as exc:
            where = f"{settings.admin_host}:{settings.admin_port}"
            log.error("cannot listen on %s: %s", where, exc.strerror or exc)
            await admin.cleanup()
            await loop.run_in_executor(None, _stop, workers)
            return 1
    # Up when every worker answers on its control socket (its inference port is open).
    while not all(s.exists() for s in fleet.sockets) and not stop.is_set():
        if any(w.exitcode is not None for w in workers):
            log.error("a router worker failed to start")
            if admin is not None:
                await admin.cleanup()
            return await loop.run_in_executor(None, _stop, workers) or 1
        await asyncio.sleep(0.05)
    fleet.ready.set()
    log.info(
        "routing on http://%s:%d with %d workers%s",
        settings.host, port, len(workers),
        f", admin on http://{settings.admin_host}:{settings.admin_port}" * bool(admin),
    )  # fmt: skip
    code = 0
    while not stop.is_set():
        dead = [w for w in workers if w.exitcode is not None]
        if dead:
            log.error(
                "router worker %s exited with status %s: stopping the pod", dead[0].name,
                dead[0].exitcode,
            )  # fmt: skip
            code = dead[0].exitcode or 1
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    if admin is not None:
        await admin.cleanup()
    status = await loop.run_in_executor(None, _stop, workers, settings.shutdown_grace + 5)
    return code or status


def _stop(workers: Sequence[BaseProcess], grace: float = 5.0) -> int:
    """SIGTERM every worker (each drains), wait for them; the first non-zero status."""
    for w in workers:
        if w.exitcode is None and w.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
    for w in workers:
        w.join(grace)
        if w.exitcode is None:
            w.kill()
            w.join(5)
    return next((abs(w.exitcode) for w in workers if w.exitcode), 0)
