"""A lean HTTP/1.1 client for the router's backends: keep-alive pools over asyncio protocols.

aiohttp's client spends a few hundred microseconds of Python per request (request and
response objects, tracing hooks, timers); the router's whole budget is half a millisecond.
This client does one thing: send a request with a known body to a backend that speaks
HTTP/1.1, and read back status, headers and body (Content-Length, chunked, or until close).
Bodies are bytes in and bytes out; nothing is parsed.

``request`` reads the whole answer. ``open`` does too for answers with a Content-Length (the
inference protocol's, at the same cost), but hands back a ``Stream`` as soon as the head of
a chunked, close-delimited or server-sent-events answer arrives: its pieces are read as they
come, the backend is paused while the reader falls behind, and closing it early closes the
backend's connection (the backend sees the disconnect).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from functools import partial
from typing import Any
from urllib.parse import urlsplit


class UpstreamError(Exception):
    """The backend could not be reached or broke off the answer."""


class UpstreamTimeout(UpstreamError):
    pass


Headers = list[tuple[str, str]]
Reply = tuple[int, Headers, bytes | None, bool]  # status, headers, body (None: streamed), keep

# Pause reading a streamed answer while this much waits for the client (resumed once read).
STREAM_HIGH = 1 << 20
# Answers streamed even when they carry a Content-Length.
_STREAMED_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl")


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self.buf = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None
        self._reset()

    def _reset(self) -> None:
        self.no_body = False
        self.received = False
        self.stream_ok = False
        self.streaming = False
        self._reset_head()

    def _reset_head(self) -> None:
        self.head_done = False
        self.status = 0
        self.headers: Headers = []
        self.length: int | None = None
        self.chunked = False
        self.chunks = bytearray()
        self.keep_alive = True
        self.content_type = ""

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buf += data
        if self.streaming:
            self.stream.feed()
        elif self.waiter is not None and not self.waiter.done():
            try:
                self._parse()
            except (ValueError, IndexError) as exc:
                self._fail(UpstreamError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.streaming:
            self.stream.lost(exc)
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.head_done and self.length is None and not self.chunked:
            # the body runs until the connection closes
            waiter.set_result((self.status, self.headers, bytes(self.buf), False))
        else:
            waiter.set_exception(UpstreamError(f"connection closed: {exc or 'by the backend'}"))

    # -------------------------------------------------------------- request / response

    def send(self, data: bytes, head_only: bool, stream_ok: bool = False) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._reset()
        self.no_body = head_only
        self.stream_ok = stream_ok
        self.used = True
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return self.waiter

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                low = name.lower()
                if low == "content-length":
                    self.length = int(value)
                elif low == "transfer-encoding":
                    self.chunked = "chunked" in value.lower()
                    continue
                elif low == "connection":
                    self.keep_alive = "close" not in value.lower()
                elif low == "content-type":
                    self.content_type = value.lower()
                self.headers.append((name, value))
            if 100 <= self.status < 200:
                # An interim answer (100 Continue): the real one follows on the same stream.
                self._reset_head()
                self._parse()
                return
            if lines[0].startswith("HTTP/1.0"):
                self.keep_alive = False
            self.head_done = True
            if self.no_body or self.status in (204, 304):
                self.length = 0
            if self.chunked:
                self.length = None
            if self.stream_ok and self.length != 0 and (
                self.length is None or self.content_type.startswith(_STREAMED_TYPES)
            ):
                self._start_stream()
                return
        if self.chunked:
            if _dechunk(buf, self.chunks):
                self._done(bytes(self.chunks))
        elif self.length is not None and len(buf) >= self.length:
            body = bytes(buf[: self.length])
            del buf[: self.length]
            self._done(body)

    def _done(self, body: bytes) -> None:
        assert self.waiter is not None
        self.waiter.set_result((self.status, self.headers, body, self.keep_alive))

    def _start_stream(self) -> None:
        """The head is in: hand it over now and pass the body on as it comes."""
        assert self.waiter is not None
        self.streaming = True
        self.stream = _Body(self)
        self.waiter.set_result((self.status, self.headers, None, self.keep_alive))
        if self.buf:
            self.stream.feed()


class _Body:
    """The body of one streamed answer on one connection: framing undone, pieces queued."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.pieces: deque[bytes] = deque()
        self.queued = 0
        self.paused = False
        self.done = False  # the whole body has arrived
        self.error: UpstreamError | None = None
        self.reader: asyncio.Future[None] | None = None
        # chunked: bytes left in the current chunk; -1 a size line is next; -2 its CRLF is
        self.left = -1 if conn.chunked else (conn.length if conn.length is not None else -1)

    def feed(self) -> None:
        conn = self.conn
        buf = conn.buf
        if self.done or self.error is not None:
            if buf:  # bytes after the end of the answer: do not reuse this connection
                conn.keep_alive = False
                buf.clear()
            return
        try:
            if conn.chunked:
                piece = self._dechunk(buf)
            elif conn.length is not None:
                piece = bytes(buf[: self.left])
                del buf[: self.left]
                self.left -= len(piece)
                self.done = self.left == 0
                if buf:
                    conn.keep_alive = False
                    buf.clear()
            else:  # until the connection closes
                piece = bytes(buf)
                buf.clear()
        except (ValueError, IndexError) as exc:
            self.error = UpstreamError(f"malformed chunked answer: {exc}")
            conn.close()
            self._wake()
            return
        if piece:
            self.pieces.append(piece)
            self.queued += len(piece)
            if self.queued > STREAM_HIGH and not self.paused and conn.transport is not None:
                self.paused = True
                conn.transport.pause_reading()
        if piece or self.done:
            self._wake()

    def _dechunk(self, buf: bytearray) -> bytes:
        """The chunk data at the start of ``buf``, partial chunks included (consumed).

        Walks with an index and trims ``buf`` once: a read may hold hundreds of events."""
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while True:
            if self.left > 0:
                take = min(self.left, end - pos)
                if take == 0:
                    break
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self.left -= take
                if self.left:
                    break
                self.left = -2
            if self.left == -2:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                pos += 2
                self.left = -1
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > 4096:
                    raise ValueError("chunk size line too long")
                break
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            if size == 0:
                if buf[eol + 2 : eol + 4] == b"\r\n":  # no trailers
                    last = eol + 4
                else:
                    last = buf.find(b"\r\n\r\n", eol)
                    if last < 0:
                        break
                    last += 4
                pos = last
                self.done = True
                if pos < end:
                    self.conn.keep_alive = False
                    pos = end
                break
            pos = eol + 2
            self.left = size
        del buf[:pos]
        return out[0] if len(out) == 1 else b"".join(out)

    def lost(self, exc: Exception | None) -> None:
        if not self.done and self.error is None:
            if self.conn.chunked or self.conn.length is not None:
                self.error = UpstreamError(
                    f"the backend broke off the answer: {exc or 'connection closed'}"
                )
            else:
                self.done = True
        self._wake()

    def _wake(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def read(self, timeout: float) -> bytes:
        """What has arrived since the last read (waiting for it); b"" at the end."""
        while not self.pieces:
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            loop = self.conn.loop
            self.reader = reader = loop.create_future()
            timer = loop.call_later(timeout, _expire_read, reader, timeout)
            try:
                await reader
            finally:
                timer.cancel()
                self.reader = None
        piece = self.pieces.popleft() if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces.clear()
        self.queued = 0
        if self.paused and self.conn.transport is not None:
            self.paused = False
            self.conn.transport.resume_reading()
        return piece


def _expire_read(reader: asyncio.Future[None], timeout: float) -> None:
    if not reader.done():
        reader.set_exception(UpstreamTimeout(f"no data from the backend for {timeout:g}s"))


def _dechunk(buf: bytearray, out: bytearray) -> bool:
    """Move the complete chunks at the start of ``buf`` into ``out``; True at the last one.

    Consumes as it goes, so a long chunked answer costs linear time, not quadratic.
    """
    while True:
        eol = buf.find(b"\r\n")
        if eol < 0:
            return False
        size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
        start = eol + 2
        if size == 0:
            if buf[start : start + 2] == b"\r\n":  # no trailers
                del buf[: start + 2]
                return True
            end = buf.find(b"\r\n\r\n", eol)  # trailers end with an empty line
            if end < 0:
                return False
            del buf[: end + 4]
            return True
        if len(buf) < start + size + 2:
            return False
        out += buf[start : start + size]
        del buf[: start + size + 2]


def _encode(
    method: str, host: str, port: int, prefix: str, path_qs: str, headers: Headers, body: bytes
) -> bytes:
    """A request's bytes: head and body, in one write."""
    head = [f"{method} {prefix}{path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\n"]
    for name, value in headers:
        head.append(f"{name}: {value}\r\n")
    if body or method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(body)}\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body


def _relay(out: asyncio.Future[tuple[int, Headers, bytes]], task: asyncio.Task[Any]) -> None:
    """A retry's outcome, passed on to the future ``request_soon`` gave out."""
    if out.done():
        if not task.cancelled():
            task.exception()  # retrieved: nobody else will
        return
    if task.cancelled():
        out.cancel()
    elif (exc := task.exception()) is not None:
        out.set_exception(exc)
    else:
        out.set_result(task.result())


def _expire(future: asyncio.Future[Reply], url: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeout(f"{url} did not answer within {timeout:g}s"))


class Stream:
    """A streamed answer's body: ``read`` it until b"", then ``close`` (always: early, it
    drops the backend's connection; at the end, it gives the connection back to the pool).
    """

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Connection) -> None:
        self.pool, self.key, self.conn = pool, key, conn
        self.body = conn.stream
        self.closed = False

    async def read(self, timeout: float) -> bytes:
        return await self.body.read(timeout)

    @property
    def complete(self) -> bool:
        return self.body.done and not self.body.pieces

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if self.complete and conn.keep_alive and not conn.closed:
            conn.streaming = False
            self.pool.release(self.key, conn)
        else:
            conn.close()


class UpstreamPool:
    """Idle keep-alive connections per backend, created on demand."""

    def __init__(self, max_idle_per_backend: int = 256) -> None:
        self.idle: dict[tuple[str, int], list[_Connection]] = defaultdict(list)
        self.max_idle = max_idle_per_backend
        self.addresses: dict[str, tuple[str, int, str]] = {}

    async def _connect(self, host: str, port: int, url: str, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            # Bounded too: a backend whose accept queue is full drops the SYNs, and the
            # kernel would keep retrying them for minutes.
            async with asyncio.timeout_at(deadline):
                _, proto = await loop.create_connection(lambda: _Connection(loop), host, port)
        except TimeoutError:
            raise UpstreamTimeout(f"{url} did not accept a connection in time") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        return proto

    async def request(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: Headers,
        body: bytes,
        timeout: float,
    ) -> tuple[int, Headers, bytes]:
        """One round trip, the whole answer read."""
        status, out_headers, out_body = await self._exchange(
            url, method, path_qs, headers, body, timeout, False
        )
        assert isinstance(out_body, bytes)
        return status, out_headers, out_body

    async def open(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: Headers,
        body: bytes,
        timeout: float,
    ) -> tuple[int, Headers, bytes | Stream]:
        """Like ``request``, but a chunked, close-delimited or event-stream answer comes back
        as a ``Stream`` once its head has arrived (``timeout`` bounds the head, then each
        wait for more of the body)."""
        return await self._exchange(url, method, path_qs, headers, body, timeout, True)

    def request_soon(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: Headers,
        body: bytes,
        timeout: float,
    ) -> asyncio.Future[tuple[int, Headers, bytes]]:
        """``request`` as a future that no coroutine needs to await (a mirror's copy): with a
        kept-alive connection idle, the request goes out now and the connection's callbacks
        settle the future, without the task, coroutine and two task steps ``request`` costs.
        Connecting, and the retry of a connection the backend had closed, run ``request``'s
        code in a task."""
        loop = asyncio.get_running_loop()
        host, port, prefix = self._address(url)
        key = (host, port)
        conn = self._idle(key)
        if conn is None:
            return loop.create_task(self.request(url, method, path_qs, headers, body, timeout))
        data = _encode(method, host, port, prefix, path_qs, headers, body)
        out: asyncio.Future[tuple[int, Headers, bytes]] = loop.create_future()
        deadline = loop.time() + timeout
        waiter = conn.send(data, method == "HEAD")
        timer = loop.call_at(deadline, _expire, waiter, url, timeout)
        retry = (url, method, path_qs, headers, body, deadline)
        waiter.add_done_callback(partial(self._settle, out, key, conn, timer, retry))
        return out

    def _settle(
        self,
        out: asyncio.Future[tuple[int, Headers, bytes]],
        key: tuple[str, int],
        conn: _Connection,
        timer: asyncio.TimerHandle,
        retry: tuple[str, str, str, Headers, bytes, float],
        waiter: asyncio.Future[Reply],
    ) -> None:
        """``request_soon``'s answer is in (or its failure): what ``_exchange`` does after its
        await, in a callback."""
        timer.cancel()
        exc = None if waiter.cancelled() else waiter.exception()
        if waiter.cancelled() or exc is not None:
            conn.close()
            if out.done():
                return
            if isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamTimeout) and (
                not conn.received
            ):
                # A kept-alive connection the backend closed meanwhile: once more, fresh.
                url, method, path_qs, headers, body, deadline = retry
                loop = conn.loop
                again = loop.create_task(self._exchange(
                    url, method, path_qs, headers, body, deadline - loop.time(), False, True
                ))  # fmt: skip
                again.add_done_callback(partial(_relay, out))
            elif exc is None:
                out.cancel()
            else:
                out.set_exception(exc)
            return
        status, got_headers, got_body, keep = waiter.result()
        assert got_body is not None  # not a stream: request_soon does not ask for one
        if keep and not conn.closed:
            self.release(key, conn)
        else:
            conn.close()
        if not out.done():
            out.set_result((status, got_headers, got_body))

    async def _exchange(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: Headers,
        body: bytes,
        timeout: float,
        stream_ok: bool,
        retried: bool = False,
    ) -> tuple[int, Headers, bytes | Stream]:
        host, port, prefix = self._address(url)
        data = _encode(method, host, port, prefix, path_qs, headers, body)
        key = (host, port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout  # one budget for connecting and answering
        for attempt in (1,) if retried else (0, 1):
            conn = self._idle(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port, url, deadline)
            future = conn.send(data, method == "HEAD", stream_ok)
            # A timer handle, not asyncio.wait_for: wait_for costs a task per request.
            timer = loop.call_at(deadline, _expire, future, url, timeout)
            try:
                status, out_headers, out_body, keep = await future
            except UpstreamTimeout:
                conn.close()
                raise
            except UpstreamError:
                conn.close()
                # A kept-alive connection the backend closed meanwhile: try once more, fresh.
                if reused and attempt == 0 and not conn.received:
                    continue
                raise
            except asyncio.CancelledError:
                conn.close()  # the client went away: so does the backend's request
                raise
            finally:
                timer.cancel()
            if out_body is None:
                return status, out_headers, Stream(self, key, conn)
            if keep and not conn.closed:
                self.release(key, conn)
            else:
                conn.close()
            return status, out_headers, out_body
        raise UpstreamError("unreachable")  # pragma: no cover

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        """Keep ``conn`` for the next request to the same backend (or close it)."""
        stack = self.idle[key]
        if len(stack) < self.max_idle:
            conn.waiter = None
            stack.append(conn)
        else:
            conn.close()

    def _address(self, url: str) -> tuple[str, int, str]:
        found = self.addresses.get(url)
        if found is None:
            parts = urlsplit(url)
            found = (parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/"))
            self.addresses[url] = found
        return found

    def _idle(self, key: tuple[str, int]) -> _Connection | None:
        stack = self.idle.get(key)
        while stack:
            conn = stack.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def close(self) -> None:
        for stack in self.idle.values():
            for conn in stack:
                conn.close()
        self.idle.clear()
