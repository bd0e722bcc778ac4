"""The router's HTTP/1.1 front (router/front.py) as a client sees it on the wire."""

from __future__ import annotations

import asyncio
import json

from .conftest import table

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [5, 2, 3, 4]}]}


async def exchange(url: str, raw: bytes, timeout: float = 5.0, half_close: bool = False) -> bytes:
    """Send raw bytes (then nothing more: ``half_close``), read until the router closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    if half_close:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def post(body: bytes, *extra: str, close: bool = False) -> bytes:
    head = ["POST /v2/models/m/infer HTTP/1.1", "Host: r", "Content-Type: application/json",
            *extra]  # fmt: skip
    if not any(h.lower().startswith("transfer-encoding") for h in extra):
        head.append(f"Content-Length: {len(body)}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_pipelined_requests_are_answered_in_order(backends, router) -> None:
    a = await backends("a", scale=2.0)
    r = await router()
    await r.put_routes(table(("r1", a, 100)))
    one = json.dumps(BODY).encode()
    two = json.dumps({**BODY, "inputs": [{**BODY["inputs"][0], "data": [7, 0, 0, 0]}]}).encode()
    out = await exchange(r.url, post(one) + post(two, close=True))
    answers = out.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 2 and all(a.startswith(b"200") for a in answers)
    first = [json.loads(a.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"][0] for a in answers]
    assert first == [10.0, 14.0]


async def test_a_chunked_request_body_reaches_the_backend_whole(backends, router) -> None:
    a = await backends("a", scale=3.0)
    r = await router()
    await r.put_routes(table(("r1", a, 100)))
    body = json.dumps(BODY).encode()
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(body[i : i + 7]), body[i : i + 7])
                       for i in range(0, len(body), 7)) + b"0\r\n\r\n"  # fmt: skip
    out = await exchange(r.url, post(chunked, "Transfer-Encoding: chunked", close=True))
    assert out.startswith(b"HTTP/1.1 200")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"] == [15, 6, 9, 12]


async def test_a_body_over_the_limit_is_refused_and_never_forwarded(backends, router) -> None:
    a = await backends("a")
    r = await router(max_body_bytes=1000)
    await r.put_routes(table(("r1", a, 100)))
    out = await exchange(r.url, post(b"x" * 2000))
    assert out.startswith(b"HTTP/1.1 413") and b"1000 bytes" in out
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (2000, b"x" * 2000)  # no Content-Length to go by
    out = await exchange(r.url, post(chunked, "Transfer-Encoding: chunked"))
    assert out.startswith(b"HTTP/1.1 413")
    assert a.hits == 0


async def test_a_malformed_request_gets_400(router) -> None:
    r = await router()
    out = await exchange(r.url, b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b"malformed" in out


async def test_mangled_requests_get_4xx_and_the_router_keeps_answering(
    backends, router, caplog
) -> None:
    import logging
    import random

    a = await backends("a")
    r = await router(max_body_bytes=4096)
    await r.put_routes(table(("r1", a, 100)))
    good = post(json.dumps(BODY).encode(), close=True)
    rng = random.Random(22)

    def mangle() -> bytes:
        raw = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[i] = rng.randrange(256)
            elif op < 0.7:
                del raw[i : i + rng.randint(1, 8)]
            else:
                raw[i:i] = rng.choice([b"\r\n", b":", b" ", b"\x00", b"99999999", b"\r\n\r\n"])
        return bytes(raw)

    with caplog.at_level(logging.ERROR, logger="onnxship.router"):
        # half-closed: a request cut short (its Content-Length grew) ends, not waits
        outs = await asyncio.gather(*(exchange(r.url, mangle(), 10, True) for _ in range(150)))
    statuses = {o[9:12] for o in outs if o.startswith(b"HTTP/1.1 ")}
    assert all(s < b"500" or s in (b"502", b"503", b"504") for s in statuses), statuses
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    code, who, _ = await r.infer()
    assert (code, who) == (200, "a")


async def test_a_client_that_half_closes_gets_all_its_answers(backends, router) -> None:
    a = await backends("a", delay=0.05)
    r = await router()
    await r.put_routes(table(("r1", a, 100)))
    body = json.dumps(BODY).encode()
    out = await exchange(r.url, post(body) + post(body) + post(body), half_close=True)
    assert out.count(b"HTTP/1.1 200") == 3
