"""``onnxship route``: the router process. Inference port, admin port, a watched routes file.

The inference port proxies ``/v2/...`` (Open Inference Protocol) and ``/v1/...`` (the OpenAI
API of language models) and serves ``/metrics`` and ``/healthz``; it cannot change routes.
The admin port (``GET``/``PUT /onnxship/routes``, bearer token when one is set) and the
routes file can. In the cluster the file is a mounted ConfigMap, which the
kubelet swaps atomically; the watcher polls its modification time and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from onnxship.api.routes import RouteTable
from onnxship.eventloop import loop_factory

from ..http1.server import FrontServer, Handler, Reply, Request
from .admin import ROUTES_PATH
from .proxy import ProxySettings, Router
from .workers import Pod, WorkerUnavailable, supervise

log = logging.getLogger("onnxship.router")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    routes_file: Path | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = 0  # 0 = no admin endpoint
    admin_token: str = ""
    watch_interval: float = 0.5
    proxy: ProxySettings = field(default_factory=ProxySettings)
    shutdown_grace: float = 10.0
    workers: int = 1  # router processes sharing the inference port (workers.py)
    max_connection_age: float | None = None  # http1/server.py's max_age


def parse_routes(text: str) -> RouteTable:
    """A route table from JSON text; an empty text is the empty table."""
    if not text.strip():
        return RouteTable()
    return RouteTable.model_validate(json.loads(text))


def routes_json(table: RouteTable) -> str:
    return table.model_dump_json(by_alias=True, exclude_none=True, indent=2)


class RoutesFile:
    """Reloads a routes file when it changes; a broken file keeps the last good table."""

    def __init__(self, path: Path, router: Router) -> None:
        self.path, self.router = path, router
        self.seen: tuple[float, int] | None = None

    def signature(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def check(self) -> None:
        sig = self.signature()
        if sig is None or sig == self.seen:
            return
        self.seen = sig
        try:
            table = parse_routes(self.path.read_text())
        except (OSError, ValueError, ValidationError) as exc:
            self.router.metrics.reloads.labels("file", "invalid").inc()
            log.error("%s: not a valid route table, keeping the current one: %s", self.path, exc)
            return
        self.router.set_routes(table, "file")

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


def inference_handler(router: Router, pod: Pod | None = None) -> Handler:
    """The inference port: ``/v2/...`` and ``/v1/...`` proxied, ``/metrics`` (the pod's, when
    this is one of several workers), ``/healthz``."""

    async def dispatch(request: Request, reply: Reply) -> None:
        path = request.path
        if path.startswith(("/v2/", "/v1/")) or path == "/v2":
            await router.handle(request, reply)
        elif path == "/metrics" and request.method == "GET":
            try:
                text = await pod.exposition(router) if pod else router.metrics.exposition()
            except WorkerUnavailable as exc:  # a partial sum would look like counters falling
                _json(reply, 503, {"error": f"metrics incomplete: {exc}"})
                return
            reply.answer(200, [("Content-Type", CONTENT_TYPE_LATEST)], text)
        elif path == "/healthz" and request.method == "GET":
            backends = len(router.routing.table.backends)
            worker = pod.index if pod else 0  # which worker answered (of a pod's several)
            _json(reply, 200, {"live": True, "backends": backends, "worker": worker})
        else:
            _json(reply, 404, {"error": f"not found: {path}"})

    return dispatch


def _json(reply: Reply, status: int, doc: dict[str, Any]) -> None:
    reply.answer(status, [("Content-Type", "application/json")], json.dumps(doc).encode())


class RouteControl(Protocol):
    """What the admin port acts on: one router, or every worker of a pod (workers.Fleet)."""

    async def table_json(self) -> str: ...
    async def adopt(self, table: RouteTable, source: str) -> bool: ...
    async def rejected(self, source: str) -> None: ...
    async def exposition(self) -> bytes: ...


class _Local:
    def __init__(self, router: Router) -> None:
        self.router = router

    async def table_json(self) -> str:
        return routes_json(self.router.routing.table)

    async def adopt(self, table: RouteTable, source: str) -> bool:
        return self.router.set_routes(table, source)

    async def rejected(self, source: str) -> None:
        self.router.metrics.reloads.labels(source, "invalid").inc()

    async def exposition(self) -> bytes:
        return self.router.metrics.exposition()


def admin_app(control: RouteControl, token: str, routes_file: Path | None) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    app = web.Application(middlewares=[auth])

    async def get_routes(_: web.Request) -> web.Response:
        return web.Response(text=await control.table_json(), content_type="application/json")

    async def put_routes(request: web.Request) -> web.Response:
        try:
            table = parse_routes(await request.text())
        except (ValueError, ValidationError) as exc:
            await control.rejected("admin")
            return web.json_response({"error": f"not a valid route table: {exc}"}, status=400)
        try:
            changed = await control.adopt(table, "admin")
        except WorkerUnavailable as exc:
            return web.json_response({"error": f"not every worker took it: {exc}"}, status=503)
        if routes_file is not None:
            # Keep the file the source of truth, so a restart comes back with these routes.
            _write_atomic(routes_file, routes_json(table))
        return web.json_response({"changed": changed})

    async def metrics(_: web.Request) -> web.Response:
        try:
            text = await control.exposition()
        except WorkerUnavailable as exc:
            return web.json_response({"error": f"metrics incomplete: {exc}"}, status=503)
        return web.Response(body=text, content_type="text/plain")

    app.router.add_get(ROUTES_PATH, get_routes)
    app.router.add_put(ROUTES_PATH, put_routes)
    app.router.add_get("/metrics", metrics)
    return app


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def serve(
    settings: RouterSettings, stop: asyncio.Event | None = None, pod: Pod | None = None
) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT), then drain requests in flight.
    ``pod``: this router is one of a pod's workers (workers.py)."""
    router = Router(settings.proxy)
    watcher = RoutesFile(settings.routes_file, router) if settings.routes_file else None
    if watcher is not None:
        watcher.check()
    runners: list[web.BaseRunner] = []
    await router.start()
    front = FrontServer(
        inference_handler(router, pod),
        settings.proxy.max_body_bytes,
        max_age=settings.max_connection_age,
    )
    try:
        await front.start(settings.host, settings.port, reuse_port=pod is not None)
    except OSError as exc:
        raise ListenError(settings.host, settings.port, exc) from None
    if pod is not None:
        runners.append(await pod.start_control(router))
    if settings.admin_port and pod is None:
        loopback = settings.admin_host in ("127.0.0.1", "::1", "localhost")
        if not settings.admin_token and not loopback:
            log.warning(
                "the admin port on %s takes route changes from anyone who reaches it: "
                "set --admin-token (ONNXSHIP_ROUTER_TOKEN)",
                settings.admin_host,
            )
        admin = web.AppRunner(
            admin_app(_Local(router), settings.admin_token, settings.routes_file),
            access_log=None,
        )
        await admin.setup()
        runners.append(admin)
        try:
            await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
        except OSError as exc:
            await front.shutdown(0)
            await admin.cleanup()
            raise ListenError(settings.admin_host, settings.admin_port, exc) from None
    admin_at = f"http://{settings.admin_host}:{settings.admin_port}" if settings.admin_port else ""
    if pod is None:
        log.info(
            "routing on http://%s:%d%s",
            settings.host,
            settings.port,
            f", admin on {admin_at}" * bool(admin_at),
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(watcher.watch(settings.watch_interval)) if watcher else None
    try:
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
        await front.shutdown(settings.shutdown_grace)
        for runner in reversed(runners):
            await runner.cleanup()
        await router.stop()


class ListenError(Exception):
    """A port the router cannot listen on (taken, or an address not this machine's)."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def run(settings: RouterSettings) -> int:
    """Serve until SIGTERM/SIGINT; the exit status."""
    if settings.workers > 1:
        return supervise(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings))
    except ListenError as exc:
        log.error("%s", exc)
        return 1
    return 0
