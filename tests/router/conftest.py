"""Real servers on 127.0.0.1 for router tests: v2 backends (aiohttp) and the router itself."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from onnxship.api.routes import RouteTable
from onnxship.router.proxy import ProxySettings
from onnxship.router.server import RouterSettings, serve

from .sse_backend import SseBackend, start_sse_backend

TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backend:
    """A v2 model server stand-in: answers ``y = x * scale`` and says who it is."""

    name: str
    scale: float = 1.0
    fail: bool = False  # answer 500 to inference requests
    delay: float = 0.0
    revision: str = ""  # named on its answers, as `onnxship serve --revision` does
    hits: int = 0
    port: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def infer(self, request: web.Request) -> web.Response:
        self.hits += 1
        try:
            doc = await request.json()
        except ValueError:  # UnicodeDecodeError too: what a v2 server answers to a bad body
            return web.json_response({"error": "not JSON"}, status=400)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return web.json_response({"error": "boom"}, status=500)
        x = doc["inputs"][0]["data"]
        y = [v * self.scale for v in x]
        return web.json_response(
            {
                "model_name": request.match_info["model"],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, len(y)], "data": y}],
            },
            headers={"x-backend": self.name}
            | ({"onnxship-revision": self.revision} if self.revision else {}),
        )

    async def ready(self, _: web.Request) -> web.Response:
        return web.Response(headers={"x-backend": self.name})


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(name: str, **kw: Any) -> Backend:
        b = Backend(name, **kw)
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", b.infer)
        app.router.add_get("/v2/health/ready", b.ready)
        b.runner = web.AppRunner(app, access_log=None)
        await b.runner.setup()
        b.port = free_port()
        await web.TCPSite(b.runner, "127.0.0.1", b.port).start()
        started.append(b)
        return b

    yield start
    for b in started:
        assert b.runner is not None
        await b.runner.cleanup()


@pytest.fixture
async def sse_backends() -> AsyncIterator[Callable[..., Awaitable[SseBackend]]]:
    """Language-model stand-ins that stream server-sent events (sse_backend.py)."""
    started: list[SseBackend] = []

    async def start(name: str, **kw: Any) -> SseBackend:
        b = await start_sse_backend(name, **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        assert b.runner is not None
        await b.runner.cleanup()


@dataclass
class RunningRouter:
    url: str
    admin: str
    session: aiohttp.ClientSession

    async def put_routes(self, table: dict[str, Any] | RouteTable, token: str = TOKEN) -> int:
        body = (
            table.model_dump_json(by_alias=True)
            if isinstance(table, RouteTable)
            else json.dumps(table)
        )
        async with self.session.put(
            f"{self.admin}/onnxship/routes",
            data=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            return r.status

    async def infer(self, value: float = 1.0, **headers: str) -> tuple[int, str, Any]:
        async with self.session.post(
            f"{self.url}/v2/models/m/infer",
            json={
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value, 2, 3, 4]}
                ]
            },
            headers=headers,
        ) as r:
            return r.status, r.headers.get("x-backend", ""), await r.json()

    async def metrics(self) -> str:
        async with self.session.get(f"{self.url}/metrics") as r:
            return await r.text()


@pytest.fixture
async def router() -> AsyncIterator[Callable[..., Awaitable[RunningRouter]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def start(**kw: Any) -> RunningRouter:
        port, admin_port = free_port(), free_port()
        proxy = ProxySettings(
            **{k: v for k, v in kw.items() if k in ProxySettings.__dataclass_fields__}
        )
        rest = {k: v for k, v in kw.items() if k not in ProxySettings.__dataclass_fields__}
        settings = RouterSettings(
            host="127.0.0.1",
            port=port,
            admin_port=admin_port,
            admin_token=TOKEN,
            proxy=proxy,
            **rest,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop))
        stops.append((stop, task))
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with session.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.02)
        return RunningRouter(url, f"http://127.0.0.1:{admin_port}", session)

    yield start
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, 15)
    await session.close()


def table(
    *backends: tuple[str, Backend, int], mirror: tuple[str, int] | None = None, **kw: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "backends": [{"revision": r, "url": b.url, "weight": w} for r, b, w in backends],
        **kw,
    }
    if mirror:
        doc["mirror"] = {"revision": mirror[0], "percent": mirror[1]}
    return doc
