"""The router's upstream client against real aiohttp servers: framing, keep-alive, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from onnxship.router.upstream import UpstreamError, UpstreamPool, UpstreamTimeout

from .conftest import free_port

Serve = Callable[[web.Application, float], Awaitable[str]]


@pytest.fixture
async def serve_app() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, keepalive: float = 75.0) -> str:
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Inference-Header-Content-Length": "2"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"{}", b"\x00\x01" * 1000, b"\xff"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), headers={"x-seen": request.headers["x-in"]})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(1.0)
    return web.Response(text="late")


def app_with(**routes: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    for path, handler in routes.items():
        app.router.add_route("*", f"/{path}", handler)
    return app


async def test_bodies_pass_through_byte_for_byte(serve_app: Serve) -> None:
    url = await serve_app(app_with(echo=echo, chunked=chunked), 75.0)
    pool = UpstreamPool()
    payload = bytes(range(256)) * 4096  # a binary tensor, 1 MiB
    status, headers, body = await pool.request(url, "POST", "/echo", [("x-in", "1")], payload, 5)
    assert (
        status == 200
        and body == payload
        and ("x-seen", "1") in [(k.lower(), v) for k, v in headers]
    )
    status, headers, body = await pool.request(url, "GET", "/chunked", [], b"", 5)
    assert body == b"{}" + b"\x00\x01" * 1000 + b"\xff"
    assert dict(headers)["Inference-Header-Content-Length"] == "2"
    assert sum(len(v) for v in pool.idle.values()) == 1  # one connection, kept alive
    pool.close()


async def test_connections_closed_by_the_backend_are_retried_fresh(serve_app: Serve) -> None:
    url = await serve_app(app_with(echo=echo), 0.05)  # the backend drops idle connections fast
    pool = UpstreamPool()
    for i in range(5):
        status, _, body = await pool.request(url, "POST", "/echo", [("x-in", "1")], b"%d" % i, 5)
        assert (status, body) == (200, b"%d" % i)
        await asyncio.sleep(0.15)
    pool.close()


async def test_timeouts_and_refused_connections(serve_app: Serve) -> None:
    url = await serve_app(app_with(slow=slow), 75.0)
    pool = UpstreamPool()
    with pytest.raises(UpstreamTimeout):
        await pool.request(url, "GET", "/slow", [], b"", 0.1)
    with pytest.raises(UpstreamError):
        await pool.request(f"http://127.0.0.1:{free_port()}", "GET", "/", [], b"", 1)
    pool.close()


async def test_a_slow_backend_is_a_504_through_the_router(backends, router) -> None:
    slow_backend = await backends("slow", delay=1.0)
    r = await router(timeout=0.2)
    await r.put_routes({"backends": [{"revision": "r1", "url": slow_backend.url, "weight": 100}]})
    code, _, body = await r.infer()
    assert code == 504 and "timed out" in body["error"]
    assert 'code="504",environment="",revision="r1",role="primary"' in await r.metrics()


async def test_expect_100_continue_is_answered_and_not_forwarded(serve_app: Serve, router) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Expect", ""))
        return web.Response(body=await request.read())

    url = await serve_app(app_with(**{"v2/models/m/infer": record}), 75.0)
    r = await router()
    await r.put_routes({"backends": [{"revision": "r1", "url": url, "weight": 100}]})
    big = b"\x01" * (2 << 20)
    async with r.session.post(
        f"{r.url}/v2/models/m/infer", data=big, expect100=True, timeout=aiohttp.ClientTimeout(5)
    ) as resp:
        assert resp.status == 200 and await resp.read() == big
    assert seen == [""]


async def test_interim_answers_are_skipped(serve_app: Serve) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    pool = UpstreamPool()
    status, _, body = await pool.request(f"http://127.0.0.1:{port}", "GET", "/", [], b"", 5)
    assert (status, body) == (200, b"ok")
    server.close()
    pool.close()


async def test_a_long_chunked_answer_arrives_whole(serve_app: Serve) -> None:
    part = bytes(range(256)) * 64  # 16 KiB

    async def many_chunks(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(1024):  # 16 MiB
            await resp.write(part)
        await resp.write_eof()
        return resp

    url = await serve_app(app_with(big=many_chunks), 75.0)
    pool = UpstreamPool()
    status, _, body = await pool.request(url, "GET", "/big", [], b"", 30)
    assert status == 200 and len(body) == 1024 * len(part) and body[: len(part)] == part
    pool.close()


async def test_a_copy_sent_without_a_task_survives_a_dropped_keepalive() -> None:
    """``request_soon`` (the mirror's copies) on a kept-alive connection the backend drops
    without answering: the copy goes again on a fresh connection, as ``request`` does."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            connections[-1] += 1
            if connections[-1] == 2:  # the second request on a connection: dropped unanswered
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = UpstreamPool()
    try:
        assert (await pool.request_soon(url, "POST", "/", [], b"one", 5))[::2] == (200, b"one")
        assert (await pool.request_soon(url, "POST", "/", [], b"two", 5))[::2] == (200, b"two")
        assert connections == [2, 1]  # "two" went to the first connection, then to a new one
        with pytest.raises(UpstreamError):  # nothing listens there: refused, not a hang
            await pool.request_soon(f"http://127.0.0.1:{free_port()}", "GET", "/", [], b"", 1)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_a_copy_on_a_kept_alive_connection_times_out(serve_app: Serve) -> None:
    url = await serve_app(app_with(echo=echo, slow=slow), 75.0)
    pool = UpstreamPool()
    await pool.request(url, "POST", "/echo", [("x-in", "1")], b"warm", 5)  # one idle connection
    with pytest.raises(UpstreamTimeout):
        await pool.request_soon(url, "GET", "/slow", [], b"", 0.1)
    assert sum(len(v) for v in pool.idle.values()) == 0  # a timed-out connection is not reused
    pool.close()
