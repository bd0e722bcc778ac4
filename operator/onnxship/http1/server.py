"""The inference port's HTTP/1.1 server: requests parsed by llhttp (httptools), answers
written straight to the transport.

aiohttp's server spent most of the router's CPU on its request, payload and response objects:
router CPU per proxied request on a trivial backend, same run (bench/results/raw/
router_scaling.json): 178 us with aiohttp's low-level server, 99 us with this one on uvloop,
nginx 19 us. What is left is about half the two socket writes (loopback TCP), half Python
(py-spy: the upstream exchange, the response head parse, the handler). This server does what
a reverse proxy needs and no more:

- bodies are read whole before the handler runs (Content-Length or chunked, up to
  ``max_body``: past it, 413 and the connection closes); ``Expect: 100-continue`` is answered
  as soon as the head arrives (curl sends it for bodies over 1 MiB);
- keep-alive and pipelining: one request at a time per connection, in order;
- an answer is written whole (``Reply.answer``) or as a stream (``start``, ``write``,
  ``end``; chunked for HTTP/1.1 clients), with the transport's flow control;
- a client that leaves cancels its handler (the proxy then closes the backend's request);
- ``shutdown`` stops accepting, lets requests in flight finish within a grace period,
  and closes idle connections; idle keep-alive connections close after ``keepalive``;
- ``max_age``: the first answer on a connection older than that says ``Connection: close``
  and closes it (gRPC's MAX_CONNECTION_AGE, Envoy's max_connection_duration), so that a
  client holding one connection open reconnects, and kube-proxy's pick follows a Service
  that moved (plan/front.py: the Service moves between a revision's pods and the router);
- a ``Fallback`` takes over the connections whose requests the handler does not serve
  (`onnxship serve`: its aiohttp app, for all but the inference route). From the first such
  request on, the connection's requests go to the fallback's protocol as HTTP/1.1 bytes
  (the head as it came, the body as llhttp read it) and it answers on the transport itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlsplit

import httptools

log = logging.getLogger("onnxship.router")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Requests parsed ahead of the one being answered (pipelining) before reading pauses.
_MAX_QUEUED = 16

Headers = list[tuple[str, str]]
Handler = Callable[["Request", "Reply"], Awaitable[None]]
TOO_LARGE = "the request body is over {limit} bytes (the router's limit)"


class Fallback(Protocol):
    """Who answers what the handler does not: ``serves`` looks at a request's head."""

    def serves(self, method: str, url: str, headers: dict[str, str]) -> bool:
        """True: the handler answers it; False: the fallback takes the connection."""
        ...

    def protocol(self) -> asyncio.Protocol:
        """A fresh HTTP/1.1 server protocol for one connection."""
        ...


class _TooLarge(Exception):
    pass


class Request:
    """One request, read whole: method, target, headers in order, body."""

    __slots__ = (
        "_lookup",
        "body",
        "hand_over",
        "headers",
        "keep_alive",
        "method",
        "url",
        "version",
    )

    def __init__(
        self,
        method: str,
        url: str,
        headers: Headers,
        lookup: dict[str, str],
        body: bytes,
        keep_alive: bool,
        version: str,
    ) -> None:
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.keep_alive, self.version, self._lookup = keep_alive, version, lookup
        self.hand_over = False  # for the fallback: see _Connection.on_headers_complete

    def header(self, name: str) -> str:
        """A header's value by its lower-case name ("" when absent; the last one if repeated)."""
        return self._lookup.get(name, "")

    def get(self, name: str) -> str | None:
        """A header's value by its lower-case name, None when absent."""
        return self._lookup.get(name)

    @property
    def path_qs(self) -> str:
        url = self.url
        if url.startswith("/"):
            return url
        parts = urlsplit(url)  # absolute form (a client that thinks we are a forward proxy)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    @property
    def path(self) -> str:
        return self.path_qs.partition("?")[0]


class Reply:
    """The answer to one request: ``answer`` once, or ``start``, ``write``..., ``end``."""

    __slots__ = ("broken", "chunked", "conn", "done", "head_only", "started")

    def __init__(self, conn: _Connection, request: Request) -> None:
        self.conn = conn
        self.head_only = request.method == "HEAD"
        self.chunked = request.version != "1.0"
        self.started = False
        self.done = False
        self.broken = False  # cut short: the connection closes after it

    def answer(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """The whole answer at once, with its Content-Length."""
        if self.started:
            raise RuntimeError("answered already")
        self.started = self.done = True
        conn = self.conn
        head = _head(status, headers)
        head.append(f"Content-Length: {len(body)}\r\n")
        if not conn.keep_alive:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        conn.send(data if self.head_only or not body else data + body)

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The head of a streamed answer; its body follows through ``write``."""
        if self.started:
            raise RuntimeError("answered already")
        self.started = True
        head = _head(status, headers)
        if self.chunked:
            head.append("Transfer-Encoding: chunked\r\n")
        else:  # an HTTP/1.0 client reads until the connection closes
            self.conn.keep_alive = False
        if not self.conn.keep_alive:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self.conn.send("".join(head).encode("latin-1"))

    async def write(self, data: bytes) -> None:
        """A piece of a streamed answer; waits while the client is slow to read it.
        Raises ConnectionResetError once the client has gone."""
        conn = self.conn
        if conn.lost:
            raise ConnectionResetError("the client closed the connection")
        if not data or self.head_only:
            return
        if self.chunked:
            conn.send(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.send(data)
        if conn.drain is not None:
            await conn.drain

    def end(self) -> None:
        """The end of a streamed answer."""
        if not self.done:
            self.done = True
            if self.chunked and not self.head_only:
                self.conn.send(b"0\r\n\r\n")

    def cut(self) -> None:
        """End a streamed answer without its last chunk: the client sees it incomplete."""
        self.done = self.broken = True
        self.conn.close()


def _head(status: int, headers: Iterable[tuple[str, str]]) -> list[str]:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    head += [f"{name}: {value}\r\n" for name, value in headers]
    return head


class _Connection(asyncio.Protocol):
    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.keep_alive = True  # of the request being answered
        self.closing = False  # the server is shutting down: close after this answer
        self.peer_done = False  # the client half-closed: close once its requests are answered
        self.reading_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.idle_since = self.born = self.loop.time()
        self._url = b""
        self._headers: Headers = []
        self._lookup: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        # The fallback's protocol once it has this connection; _streaming: the request being
        # read goes to it as it arrives (_rechunk: in chunked framing, as it came).
        self.forward: asyncio.Protocol | None = None
        self._streaming = False
        self._rechunk = False
        self._hand_over = False  # the request being read goes to the fallback once complete

    # ---------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.forward is not None:
            self.forward.connection_lost(exc)
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()  # the proxy closes the backend's request
        self._wake(ConnectionResetError("the client closed the connection"))

    def eof_received(self) -> bool:
        """The client sent all it will (half-closed): answer what it asked, then close."""
        if self.forward is not None:
            return bool(self.forward.eof_received())
        if self.task is None and not self.queue:
            return False  # nothing to answer (a request cut short included): close now
        self.peer_done = True
        return True

    def pause_writing(self) -> None:
        if self.forward is not None:
            self.forward.pause_writing()
        elif self.drain is None:
            self.drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.forward is not None:
            self.forward.resume_writing()
        self._wake(None)

    def _wake(self, exc: Exception | None) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)
                drain.exception()  # retrieved: nobody may be waiting

    def send(self, data: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self._refuse(413, self.server.too_large.format(limit=self.server.max_body))
            else:  # a bug of ours: say so, do not hang the client
                log.error("parsing a request failed: %r", exc.__context__)
                self._refuse(500, "internal error reading the request")
        except httptools.HttpParserUpgrade:
            self._refuse(501, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def _refuse(self, status: int, message: str) -> None:
        """Answer an unreadable request and close: what follows it cannot be trusted."""
        self.queue.clear()
        if self.forward is not None:  # its protocol may be answering: only close
            self.close()
        elif self.task is None:
            body = json.dumps({"error": message}).encode()
            head = _head(
                status, [("Content-Type", "application/json"), *self.server.refusal_headers]
            )
            head.append(f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            self.send("".join(head).encode("latin-1") + body)
            self.close()
        else:  # the answer in progress goes out first, then the connection closes
            self.keep_alive = False
            self.transport.pause_reading()  # type: ignore[union-attr]

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers, self._lookup, self._body, self._size = [], {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n, v = name.decode("latin-1"), value.decode("latin-1")
        self._headers.append((n, v))
        self._lookup[n.lower()] = v

    def on_headers_complete(self) -> None:
        fallback = self.server.fallback
        if fallback is not None and (
            self.forward is not None
            or not fallback.serves(
                self.parser.get_method().decode("latin-1"),
                self._url.decode("latin-1"),
                self._lookup,
            )
        ):
            if self.forward is None and self.task is None and not self.queue:
                self._take_over()
            if self.forward is not None:
                # Its head as it came (the fallback checks sizes and answers 100-continue
                # itself), then its body as it arrives.
                self._streaming = True
                self._rechunk = "chunked" in self._lookup.get("transfer-encoding", "").lower()
                self.forward.data_received(self._head(self._headers))
                return
            self._hand_over = True  # after the answers in progress: see _next
        length = self._lookup.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            raise _TooLarge()
        if self._lookup.get("expect", "").lower() == "100-continue":
            self.send(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._streaming:
            assert self.forward is not None
            framed = b"%x\r\n%b\r\n" % (len(body), body) if self._rechunk else body
            self.forward.data_received(framed)
            return
        self._size += len(body)
        if self._size > self.server.max_body:
            raise _TooLarge()
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._streaming:
            self._streaming = False
            if self._rechunk:
                self.forward.data_received(b"0\r\n\r\n")  # type: ignore[union-attr]
            return
        p = self.parser
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        request = Request(
            p.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            self._headers,
            self._lookup,
            body,
            p.should_keep_alive(),
            p.get_http_version(),
        )
        request.hand_over, self._hand_over = self._hand_over, False
        if self.forward is not None:  # taken over while this one was read
            self.forward.data_received(self._whole(request))
            return
        self.queue.append(request)
        if self.task is None:
            self._next()
        elif len(self.queue) >= _MAX_QUEUED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    # ---------------------------------------------------------------- requests

    def _take_over(self) -> None:
        """The fallback's protocol gets this connection: the transport, and from now on
        every request read on it."""
        assert self.server.fallback is not None and self.transport is not None
        self.forward = self.server.fallback.protocol()
        self.forward.connection_made(self.transport)
        if self.drain is not None:  # the socket's buffer is full: tell the new writer
            self.forward.pause_writing()

    def _head(self, headers: Headers) -> bytes:
        p = self.parser
        head = [f"{p.get_method().decode('latin-1')} {self._url.decode('latin-1')} "]
        head.append(f"HTTP/{p.get_http_version()}\r\n")
        head += [f"{name}: {value}\r\n" for name, value in headers]
        head.append("\r\n")
        return "".join(head).encode("latin-1")

    @staticmethod
    def _whole(request: Request) -> bytes:
        """A request read whole, as HTTP/1.1 bytes: its body with its length (100-continue
        was answered when its head came)."""
        head = [f"{request.method} {request.url} HTTP/{request.version}\r\n"]
        head += [
            f"{name}: {value}\r\n"
            for name, value in request.headers
            if name.lower() not in ("content-length", "transfer-encoding", "expect")
        ]
        head.append(f"Content-Length: {len(request.body)}\r\n\r\n")
        return "".join(head).encode("latin-1") + request.body

    def _next(self) -> None:
        if self.queue[0].hand_over:
            self._take_over()
            assert self.forward is not None
            while self.queue:
                self.forward.data_received(self._whole(self.queue.popleft()))
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            return
        request = self.queue.popleft()
        max_age = self.server.max_age
        old = max_age is not None and self.loop.time() - self.born >= max_age
        self.keep_alive = request.keep_alive and not self.closing and not old
        self.task = self.loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        reply = Reply(self, request)
        try:
            await self.server.handler(request, reply)
        except asyncio.CancelledError:
            if self.lost:
                return  # the client left: nothing to answer
            raise
        except Exception:
            log.exception("handling %s %s failed", request.method, request.url)
            if not reply.started:
                reply.answer(500, [("Content-Type", "application/json")], b'{"error": "internal"}')
            else:
                reply.cut()
        finally:
            self.task = None
        if not reply.started:
            reply.answer(500, [("Content-Type", "application/json")], b'{"error": "no answer"}')
        elif not reply.done:
            reply.end()
        if self.lost:
            return
        if reply.broken or not self.keep_alive or self.closing or (
            self.peer_done and not self.queue
        ):
            self.close()
            return
        self.idle_since = self.loop.time()
        if self.queue:
            self._next()
        if self.reading_paused and len(self.queue) < _MAX_QUEUED:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]


class FrontServer:
    """Serves ``handler`` on one listening socket (``reuse_port``: several processes may)."""

    def __init__(
        self,
        handler: Handler,
        max_body: int,
        keepalive: float = 75.0,
        *,
        fallback: Fallback | None = None,
        too_large: str = TOO_LARGE,
        refusal_headers: Headers | None = None,
        max_age: float | None = None,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive = keepalive
        self.max_age = max_age  # seconds a connection is kept; None: as long as it is used
        self.fallback = fallback
        self.too_large = too_large  # the 413's message, with {limit}
        # On the answers this server gives itself (413, 400...), as the handler's carry them:
        # `onnxship serve` names its worker and revision on every answer.
        self.refusal_headers: Headers = refusal_headers or []
        self.connections: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; the port bound (``port`` 0 picks one)."""
        self.server = await self.loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._sweeper = self.loop.call_later(self.keepalive / 4, self._sweep)
        return int(self.server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than ``keepalive``."""
        cutoff = self.loop.time() - self.keepalive
        for conn in list(self.connections):
            if conn.forward is not None:
                continue  # the fallback times its own connections out
            if conn.task is None and not conn.queue and conn.idle_since < cutoff:
                conn.close()
        self._sweeper = self.loop.call_later(self.keepalive / 4, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let answers in progress finish (``grace`` seconds at most)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        # The fallback's connections are its own to close (after this returns).
        ours = [conn for conn in self.connections if conn.forward is None]
        for conn in ours:
            conn.closing = True
            if conn.task is None and not conn.queue:
                conn.close()
        deadline = self.loop.time() + grace
        while any(c.forward is None for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.forward is not None:
                continue
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
