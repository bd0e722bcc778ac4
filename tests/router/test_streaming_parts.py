"""The parts under the streaming router: the upstream client's streams (partial chunks,
keep-alive, early close) against raw servers, and the event-stream meter on tricky input."""

from __future__ import annotations

import asyncio
import json

from onnxship.router.streams import (
    StreamMeter,
    answer_tokens,
    is_generation,
    quick_token,
    read_event,
)
from onnxship.router.upstream import Stream, UpstreamError, UpstreamPool

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def raw_server(script):  # type: ignore[no-untyped-def]
    """A server whose every connection runs ``script(reader, writer)``; (url, server)."""
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


async def test_part_of_a_chunk_is_handed_on_before_the_rest_arrives() -> None:
    go_on = asyncio.Event()
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.write(HEAD + b"c\r\ndata: hel")
            await writer.drain()
            await go_on.wait()
            writer.write(b"lo\n\r\n1\r\n\n\r\n0\r\n\r\n")
            await writer.drain()
            go_on.clear()

    url, server = await raw_server(script)
    pool = UpstreamPool()
    for _ in range(2):
        status, _, body = await pool.open(url, "POST", "/", [], b"{}", 5)
        assert status == 200 and isinstance(body, Stream)
        assert await body.read(5) == b"data: hel"  # the rest of the chunk is not sent yet
        go_on.set()
        rest = b""
        while piece := await body.read(5):
            rest += piece
        assert rest == b"lo\n\n" and body.complete
        body.close()
    assert connections == 1  # a finished stream gives its connection back
    pool.close()
    server.close()


async def test_closing_a_stream_early_closes_the_backends_connection() -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"6\r\ndata: \r\n")
        await writer.drain()
        if await reader.read(1) == b"":  # EOF: the proxy hung up
            closed.set()

    url, server = await raw_server(script)
    pool = UpstreamPool()
    _, _, body = await pool.open(url, "GET", "/", [], b"", 5)
    assert isinstance(body, Stream)
    assert await body.read(5) == b"data: "
    body.close()
    await asyncio.wait_for(closed.wait(), 2)
    assert not any(pool.idle.values())
    pool.close()
    server.close()


async def test_a_stream_cut_short_or_stalled_is_an_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"5\r\nab")
        await writer.drain()
        writer.close()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"2\r\nab\r\n")
        await writer.drain()
        await reader.read()  # silent until the proxy hangs up

    pool = UpstreamPool()
    for script, message in ((cut, "broke off"), (stall, "no data")):
        url, server = await raw_server(script)
        _, _, body = await pool.open(url, "GET", "/", [], b"", 5)
        assert isinstance(body, Stream)
        assert await body.read(0.3) == b"ab"
        try:
            await body.read(0.3)
        except UpstreamError as exc:
            assert message in str(exc)
        else:
            raise AssertionError("a broken stream read as complete")
        body.close()
        server.close()
    pool.close()


async def test_content_length_answers_are_read_whole() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2")
        writer.write(b"\r\n\r\n{}")
        await writer.drain()

    url, server = await raw_server(script)
    pool = UpstreamPool()
    assert await pool.open(url, "GET", "/", [], b"", 5) == (
        200,
        [("Content-Type", "application/json"), ("Content-Length", "2")],
        b"{}",
    )
    pool.close()
    server.close()


def event(doc: object) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def test_the_meter_reads_events_split_anywhere_and_counts_only_tokens() -> None:
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    usage = {"choices": [], "usage": {"completion_tokens": 7}}
    stream = (
        b": keep-alive comment\n\n"
        + event(role)
        + event({"choices": [{"delta": {"content": "Hel"}}]}).replace(b"\n", b"\r\n")
        + event({"choices": [{"text": "lo", "token_ids": [42]}]})
        + event({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        + event(usage)
        + b"data: [DONE]\n\n"
    )
    for step in (1, 3, len(stream)):  # byte by byte, odd splits (a CR|LF apart), whole
        meter = StreamMeter(started=0.0, sse=True, collect=True)
        for i in range(0, len(stream), step):
            meter.feed(stream[i : i + step], now=1.0 + i)
        assert meter.events == 2 and meter.tokens == 7 and meter.finished
        assert meter.text == "Hello" and meter.ids == [42] and len(meter.gaps) == 1
        assert meter.first is not None and meter.ttft == meter.first >= 1.0


def test_other_shapes_and_whole_answers() -> None:
    oip = StreamMeter(0.0, True)
    oip.feed(event({"model_name": "m", "text_output": "a"}) + event({"text_output": ""}), 2.0)
    tgi = StreamMeter(0.0, True)
    tgi.feed(event({"token": {"id": 5, "text": "x", "special": False}}), 1.0)
    plain = StreamMeter(0.0, True)
    plain.feed(b"data: not json\n\ndata: 2\n\n", 1.0)
    assert (oip.events, tgi.events, plain.events) == (1, 1, 2)
    body = StreamMeter(0.0, sse=False)
    body.feed(b"", 1.0)
    body.feed(b"x", 2.0)
    assert body.ttft == 2.0 and body.tokens == 0
    whole = answer_tokens(json.dumps({"choices": [{"message": {"content": "hi"}}],
                                      "usage": {"completion_tokens": 3}}).encode())  # fmt: skip
    assert whole is not None and (whole.text, whole.usage) == ("hi", 3)
    assert answer_tokens(b"\xff") is None
    assert is_generation("/v1/chat/completions") and is_generation("/v2/models/m/generate_stream")
    assert not is_generation("/v2/models/m/infer") and not is_generation("/v1/models")


def test_the_meter_survives_what_is_not_an_event_stream() -> None:
    deep = StreamMeter(0.0, True)
    deep.feed(b"data: " + b"[" * 100_000 + b"\n\n", 1.0)  # JSON too deep to decode
    assert deep.events == 1
    endless = StreamMeter(0.0, True)
    for _ in range(3):
        endless.feed(b"x" * 600_000, 1.0)  # no event end, ever: not kept in memory
    assert not endless.sse and endless._pending == b""


def test_the_quick_read_of_a_chunk_agrees_with_decoding_it() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": " hello"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "delta": {"content": '"quoted" \\ "content": ""'}}]},
        {"choices": [{"index": 0, "delta": {"content": "\"text\": 1"}}]},
        {"choices": [{"delta": {}}], "usage": {"completion_tokens": 3}},
        {"choices": [{"text": "x"}]},
        {"choices": [{"delta": {"content": "a"}}, {"delta": {"content": ""}}]},
    ]
    for doc in chunks:
        for separators in ((", ", ": "), (",", ":")):
            payload = json.dumps(doc, separators=separators).encode()
            quick = quick_token(payload)
            assert quick in (None, read_event(doc).token), (doc, quick)
    assert quick_token(json.dumps(chunks[0]).encode()) is True  # the common cases are quick
    assert quick_token(json.dumps(chunks[1]).encode()) is False


def test_generation_counters_add_up_over_router_replicas() -> None:
    from onnxship.router.compare import compare_tokens
    from onnxship.router.metrics import RouterMetrics
    from onnxship.router.metrics_source import (
        Counters,
        counters_from_text,
        generation_between,
        summed,
    )

    texts = []
    for env, ttft in (("cpu", 0.12), ("gpu", 0.03)):  # two router pods, one stream each
        m = RouterMetrics()
        meter = StreamMeter(started=0.0, sse=True)
        meter.feed(event({"choices": [{"delta": {"content": "a"}}]}), ttft)
        meter.feed(event({"choices": [{"delta": {"content": "b"}}]}), ttft + 0.02)
        m.streamed("r2", env, meter, "complete")
        m.compared_tokens("r2", "r1", compare_tokens([1, 2, 3, 4], [1, 2, 9, 9]), "token_ids")
        texts.append(m.exposition().decode())
    total = summed((counters_from_text(t, "r2") for t in texts), "r2")
    g = generation_between("r2", Counters("r2"), total)
    assert (g.streams, g.tokens, g.comparisons, g.token_agreement) == (2, 4, 2, 0.5)
    assert g.itl_p50_ms is not None and 15 <= g.itl_p50_ms <= 20
    envs = {e.revision: e for e in g.environments}
    assert envs["cpu"].ttft_p50_ms is not None and 100 <= envs["cpu"].ttft_p50_ms <= 150
    assert envs["gpu"].ttft_p50_ms is not None and envs["gpu"].ttft_p50_ms <= 50
