"""A lean HTTP/1.1 client for the router's backends: keep-alive pools over asyncio protocols.

aiohttp's client spends a few hundred microseconds of Python per request (request and
response objects, tracing hooks, timers); the router's whole budget is half a millisecond.
This client does one thing: send a request with a known body to a backend that speaks
HTTP/1.1, and read back status, headers and body (Content-Length, chunked, or until close).
Bodies are bytes in and bytes out; nothing is parsed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from urllib.parse import urlsplit


class UpstreamError(Exception):
    """The backend could not be reached or broke off the answer."""


class UpstreamTimeout(UpstreamError):
    pass


Headers = list[tuple[str, str]]
Reply = tuple[int, Headers, bytes, bool]  # status, headers, body, keep-alive


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
        self._reset_head()

    def _reset_head(self) -> None:
        self.head_done = False
        self.status = 0
        self.headers: Headers = []
        self.length: int | None = None
        self.chunked = False
        self.chunks = bytearray()
        self.keep_alive = True

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._parse()
            except (ValueError, IndexError) as exc:
                self._fail(UpstreamError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.head_done and self.length is None and not self.chunked:
            # the body runs until the connection closes
            waiter.set_result((self.status, self.headers, bytes(self.buf), False))
        else:
            waiter.set_exception(UpstreamError(f"connection closed: {exc or 'by the backend'}"))

    # -------------------------------------------------------------- request / response

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._reset()
        self.no_body = head_only
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


def _expire(future: asyncio.Future[Reply], url: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeout(f"{url} did not answer within {timeout:g}s"))


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
        host, port, prefix = self._address(url)
        head = [f"{method} {prefix}{path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\n"]
        for name, value in headers:
            head.append(f"{name}: {value}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + body
        key = (host, port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout  # one budget for connecting and answering
        for attempt in (0, 1):
            conn = self._idle(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port, url, deadline)
            future = conn.send(data, method == "HEAD")
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
            finally:
                timer.cancel()
            if keep and not conn.closed and len(self.idle[key]) < self.max_idle:
                conn.waiter = None
                self.idle[key].append(conn)
            else:
                conn.close()
            return status, out_headers, out_body
        raise UpstreamError("unreachable")  # pragma: no cover

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
