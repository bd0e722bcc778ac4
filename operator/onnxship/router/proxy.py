"""The router's data path: a reverse proxy for the inference protocol (``front`` takes the
clients' requests, ``upstream`` sends them on).

Bodies are read once and forwarded as bytes, never parsed (binary tensors included); only
mirrored answers are decoded, after the user has been answered. A route change swaps one
``Routing`` object: requests in flight keep the backend they were given, and the client
connection pool outlives any table, so weight changes under load drop nothing.

Answers with a Content-Length are forwarded whole. Chunked, close-delimited and event-stream
answers (a language model's tokens) are passed on piece by piece as they arrive; a client
that leaves closes the backend's request (the server is told to stop: the front cancels the
handler), and a backend that breaks off a stream cuts the client's
connection (so it sees an incomplete answer, not a hang) and counts as the revision's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from onnxship.api.routes import Backend, RouteTable

from ..http1.server import Reply, Request
from .balance import ENVIRONMENT_HEADER, REVISION_HEADER, Routing
from .compare import HEADER_LENGTH, Comparison, compare_answers, compare_tokens
from .metrics import RouterMetrics
from .streams import EVENT_STREAM, Piece, StreamMeter, answer_tokens, greedy_copy, is_generation
from .upstream import Stream, UpstreamError, UpstreamPool, UpstreamTimeout

log = logging.getLogger("onnxship.router")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the front and upstream write themselves.
_SKIP_REQUEST = {
    "host", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "expect",
}  # fmt: skip
# A model server names its revision itself (serve --revision, for Services that select its
# pods directly); the router names the one it chose, once.
_SKIP_RESPONSE = _SKIP_REQUEST | {REVISION_HEADER}
_HEADER_LENGTH = HEADER_LENGTH.lower()


@dataclass
class Health:
    """Passive health: a backend that fails to answer ``threshold`` times in a row is
    skipped for ``cooldown`` seconds. HTTP errors it answers with are the canary analysis'
    business, not ejection's: hiding them would hide a bad canary."""

    threshold: int = 3
    cooldown: float = 10.0
    failures: dict[str, int] = field(default_factory=dict)
    ejected_until: dict[str, float] = field(default_factory=dict)

    def healthy(self, backend: Backend) -> bool:
        until = self.ejected_until.get(backend.url)
        return until is None or time.monotonic() >= until

    def ok(self, backend: Backend) -> None:
        if self.failures.get(backend.url):
            self.failures[backend.url] = 0

    def failed(self, backend: Backend) -> bool:
        """Record a failure; True when the backend is ejected by it."""
        n = self.failures.get(backend.url, 0) + 1
        self.failures[backend.url] = n
        if n >= self.threshold:
            self.failures[backend.url] = 0
            self.ejected_until[backend.url] = time.monotonic() + self.cooldown
            return True
        return False


@dataclass(frozen=True)
class ProxySettings:
    timeout: float = 30.0  # seconds for one backend round trip; for a stream, its head and gaps
    # A generation answered whole (not streamed), and a mirror's greedy copy of one, arrives
    # only when the last token is out: bounded by this instead.
    generation_timeout: float = 600.0
    sticky_header: str = ""  # e.g. "x-session-id": same value, same revision
    max_mirrors_in_flight: int = 64
    max_body_bytes: int = 256 * 1024 * 1024


class Router:
    def __init__(self, settings: ProxySettings, metrics: RouterMetrics | None = None) -> None:
        self.settings = settings
        self.sticky_header = settings.sticky_header.lower()  # the front's lookups are lower case
        self.metrics = metrics or RouterMetrics()
        self.routing = Routing(RouteTable())
        self.health = Health()
        self.upstream = UpstreamPool()
        self.mirrors: set[asyncio.Future[Any]] = set()  # copies and comparisons in flight

    # ------------------------------------------------------------ routes

    def set_routes(self, table: RouteTable, source: str) -> bool:
        """Adopt ``table``; False when it is the one already in use."""
        if table == self.routing.table:
            return False
        old = self.routing.table
        self.routing = Routing(table)
        m = self.metrics
        for b in old.backends:
            if not _has(table, b):
                with contextlib.suppress(KeyError):
                    m.weight.remove(b.revision, b.environment)
        for b in table.backends:
            m.weight.labels(b.revision, b.environment).set(b.weight)
            # A series that exists at 0 lets Prometheus' increase() count its first requests.
            m.requests.labels(b.revision, b.environment, "200", "primary")
        if old.mirror:
            m.mirror_percent.labels(old.mirror.revision).set(0)
        if table.mirror:
            m.mirror_percent.labels(table.mirror.revision).set(table.mirror.percent)
        m.reloads.labels(source, "ok").inc()
        weights = ", ".join(
            f"{b.revision}{'@' + b.environment if b.environment else ''}={b.weight}"
            for b in table.backends
        )
        mirror = table.mirror
        copies = f", mirror {mirror.percent}% to {mirror.revision}" if mirror else ""
        log.info("routes from %s: %s%s", source, weights or "(none)", copies)
        return True

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self.mirrors:
            await asyncio.wait(list(self.mirrors), timeout=self.settings.timeout)
        self.upstream.close()

    # ------------------------------------------------------------ data path

    async def handle(self, request: Request, reply: Reply) -> None:
        routing = self.routing  # one table per request, even if it changes meanwhile
        environment = request.header(ENVIRONMENT_HEADER)
        sticky_header = self.sticky_header
        backend = routing.choose(
            environment,
            request.header(REVISION_HEADER),
            request.header(sticky_header) if sticky_header else "",
            self.health.healthy,
        )
        if backend is None:
            why = (
                "no backends are configured"
                if routing.empty
                else f"no backend serves environment {environment!r} / the pinned revision"
            )
            answer = _error(503, why)
            reply.answer(answer.status, answer.headers, answer.body)
            return
        call = _Call(
            request.method,
            request.path_qs,
            [(k, v) for k, v in request.headers if k.lower() not in _SKIP_REQUEST],
            request.body,
        )
        started = time.perf_counter()
        generation = is_generation(call.path_qs)
        try:
            status, raw, body = await self.upstream.open(
                backend.url, call.method, call.path_qs, call.headers, call.body,
                self.settings.generation_timeout if generation else self.settings.timeout,
            )  # fmt: skip
        except UpstreamTimeout:
            answer = _error(504, f"revision {backend.revision} timed out")
            self._failed(backend)
        except UpstreamError as exc:
            answer = _error(502, f"revision {backend.revision} unreachable: {exc}")
            self._failed(backend)
        else:
            self.health.ok(backend)
            headers = [(k, v) for k, v in raw if k.lower() not in _SKIP_RESPONSE]
            if isinstance(body, Stream):
                copy_to = routing.mirror_for(backend)
                baseline: asyncio.Future[Piece | None] | None = None
                if copy_to is not None:
                    # the mirror compares with what the user gets, once it has all come
                    baseline = asyncio.get_running_loop().create_future()
                    self._mirror(copy_to, backend, call, baseline)
                await self._stream(
                    request, reply, backend, status, headers, body, started, baseline
                )
                return
            answer = _Answer(status, headers, body)
        self.metrics.observe(
            backend.revision, backend.environment, answer.status, "primary",
            time.perf_counter() - started,
        )  # fmt: skip
        if answer.status == 200 and generation:
            piece = answer_tokens(answer.body)
            if piece is not None and piece.usage:
                self.metrics.generated(backend.revision, backend.environment, piece.usage)
        copy_to = routing.mirror_for(backend)
        if copy_to is not None:
            self._mirror(copy_to, backend, call, answer)
        # Which revision answered (its errors too): what a user checks during a canary.
        answer.headers.append((REVISION_HEADER, backend.revision))
        reply.answer(answer.status, answer.headers, answer.body)

    async def _stream(
        self,
        request: Request,
        reply: Reply,
        backend: Backend,
        status: int,
        headers: list[tuple[str, str]],
        body: Stream,
        started: float,
        baseline: asyncio.Future[Piece | None] | None = None,
    ) -> None:
        """Pass a streamed answer on as it comes, metering its tokens; count it at its end.
        ``baseline`` (a mirror step) gets the generated text once the answer is complete."""
        headers.append((REVISION_HEADER, backend.revision))
        sse = _header(headers, "content-type").lower().startswith(EVENT_STREAM)
        meter = StreamMeter(started, sse, collect=baseline is not None)
        code, outcome = status, "abandoned"
        timeout = self.settings.timeout
        clock = time.perf_counter
        try:
            reply.start(status, headers)
            while True:
                try:
                    piece = await body.read(timeout)
                except UpstreamError as exc:
                    code, outcome = (504 if isinstance(exc, UpstreamTimeout) else 502), "broken"
                    self._failed(backend)
                    log.warning(
                        "revision %s broke off a streamed answer to %s: %s",
                        backend.revision, request.path, exc,
                    )  # fmt: skip
                    # No last chunk: the client sees an incomplete answer end, not a hang.
                    reply.cut()
                    return
                if not piece:
                    break
                meter.feed(piece, clock())
                await reply.write(piece)
            reply.end()
            outcome = "complete"
        except ConnectionError:
            pass  # the client left while we wrote
        finally:
            # Early (the client left, or a cancel): closing drops the backend's connection.
            body.close()
            env = backend.environment
            self.metrics.observe(backend.revision, env, code, "primary", clock() - started)
            self.metrics.streamed(backend.revision, env, meter, outcome)
            if baseline is not None and not baseline.done():
                whole = outcome == "complete" and code == 200 and sse
                got = Piece(True, meter.text, meter.usage, tuple(meter.ids))
                baseline.set_result(got if whole else None)

    async def _send(
        self, backend: Backend, call: _Call, role: str, timeout: float | None = None
    ) -> _Answer:
        """One round trip to ``backend``, counted; transport failures become 502/504."""
        started = time.perf_counter()
        try:
            status, raw, body = await self.upstream.request(
                backend.url, call.method, call.path_qs, call.headers, call.body,
                timeout or self.settings.timeout,
            )  # fmt: skip
        except UpstreamError as exc:
            return self._outcome(backend, role, started, exc)
        headers = [(k, v) for k, v in raw if k.lower() not in _SKIP_RESPONSE]
        return self._outcome(backend, role, started, _Answer(status, headers, body))

    def _outcome(
        self, backend: Backend, role: str, started: float, got: _Answer | UpstreamError
    ) -> _Answer:
        """A round trip's answer (a transport failure as 502/504), counted; health noted."""
        if isinstance(got, UpstreamTimeout):
            answer = _error(504, f"revision {backend.revision} timed out")
            self._failed(backend)
        elif isinstance(got, UpstreamError):
            answer = _error(502, f"revision {backend.revision} unreachable: {got}")
            self._failed(backend)
        else:
            answer = got
            self.health.ok(backend)
        seconds = time.perf_counter() - started
        self.metrics.observe(backend.revision, backend.environment, answer.status, role, seconds)
        return answer

    def _failed(self, backend: Backend) -> None:
        if self.health.failed(backend):
            self.metrics.ejections.labels(backend.revision, backend.url).inc()
            log.warning(
                "%s (%s) failed %d times in a row: skipped for %.0fs",
                backend.url, backend.revision, self.health.threshold, self.health.cooldown,
            )  # fmt: skip

    # ------------------------------------------------------------ mirroring

    def _mirror(
        self,
        canary: Backend,
        stable: Backend,
        call: _Call,
        answer: _Answer | asyncio.Future[Piece | None],
    ) -> None:
        """Copy ``call`` to the canary, off the user's path; ``answer`` is stable's (a future
        of its generated text when it is being streamed)."""
        if len(self.mirrors) >= self.settings.max_mirrors_in_flight:
            self.metrics.mirror_dropped.inc()
            return
        copy = None
        if call.method == "POST" and is_generation(call.path_qs):
            copy = greedy_copy(call.path_qs, call.body)
        if copy is not None:
            path, body, greedy = copy
            shadow = self._shadow_generation(
                canary, stable, _Call("POST", path, call.headers, body), greedy, answer
            )
            task = asyncio.create_task(shadow)
            self.mirrors.add(task)
            task.add_done_callback(self.mirrors.discard)
            return
        # In callbacks, not a task: a task per copy cost as much as comparing the answers.
        started = time.perf_counter()
        sent = self.upstream.request_soon(
            canary.url, call.method, call.path_qs, call.headers, call.body, self.settings.timeout
        )
        self.mirrors.add(sent)
        baseline = answer if isinstance(answer, _Answer) else None
        sent.add_done_callback(partial(self._shadow, canary, stable, call, baseline, started))

    def _shadow(
        self,
        canary: Backend,
        stable: Backend,
        call: _Call,
        answer: _Answer | None,
        started: float,
        sent: asyncio.Future[tuple[int, list[tuple[str, str]], bytes]],
    ) -> None:
        """The copy is answered: count it, compare the answers; the user has been answered."""
        self.mirrors.discard(sent)
        if sent.cancelled():  # the router is stopping
            return
        try:
            exc = sent.exception()
            if exc is not None and not isinstance(exc, UpstreamError):
                raise exc
            if exc is None:
                status, raw, body = sent.result()
                got: _Answer | UpstreamError = _Answer(status, raw, body)  # only compared
            else:
                got = exc
            copy = self._outcome(canary, "mirror", started, got)
            if answer is None or copy.status != 200 or answer.status != 200:
                return
            if call.method != "POST":
                return
            args = (answer.body, answer.header_length, copy.body, copy.header_length)
            if len(copy.body) > 1 << 20:  # big tensors: decode off the event loop
                compare = self._compare_apart(canary, stable, args)
                task = asyncio.get_running_loop().create_task(compare)
                self.mirrors.add(task)
                task.add_done_callback(self.mirrors.discard)
                return
            self._compared(canary, stable, compare_answers(*args))
        except Exception:  # a mirror must never take the router down
            log.exception("mirror to %s failed", canary.url)

    async def _compare_apart(
        self, canary: Backend, stable: Backend, args: tuple[bytes, int | None, bytes, int | None]
    ) -> None:
        result = await asyncio.get_running_loop().run_in_executor(None, compare_answers, *args)
        self._compared(canary, stable, result)

    def _compared(self, canary: Backend, stable: Backend, result: Comparison | None) -> None:
        if result is not None:
            self.metrics.compared(
                canary.revision, stable.revision, result.cosine, result.top1, result.max_abs_diff
            )

    async def _shadow_generation(
        self,
        canary: Backend,
        stable: Backend,
        copy: _Call,
        greedy: bool,
        answer: _Answer | asyncio.Future[Piece | None],
    ) -> None:
        """The canary generates greedily; its tokens are compared with stable's greedy answer:
        the one the user got when the request was greedy, else a greedy copy sent to stable
        too (not counted as its traffic: a sampled answer is no baseline)."""

        async def stable_greedy() -> Piece | None:
            if greedy:
                if isinstance(answer, _Answer):
                    return answer_tokens(answer.body) if answer.status == 200 else None
                return await answer
            try:
                status, _, out = await self.upstream.request(
                    stable.url, copy.method, copy.path_qs, copy.headers, copy.body, timeout
                )
            except UpstreamError:
                return None
            return answer_tokens(out) if status == 200 else None

        timeout = self.settings.generation_timeout
        try:
            mine, base = await asyncio.gather(
                self._send(canary, copy, "mirror", timeout), stable_greedy()
            )
        except Exception:  # a mirror must never take the router down
            log.exception("mirrored generation to %s failed", canary.url)
            return
        theirs = answer_tokens(mine.body) if mine.status == 200 else None
        if base is None or theirs is None:
            return
        if base.ids and theirs.ids:
            unit, result = "token_ids", compare_tokens(list(base.ids), list(theirs.ids))
        else:  # the servers do not say their token ids: compare words
            unit, result = "words", compare_tokens(base.text.split(), theirs.text.split())
        self.metrics.compared_tokens(canary.revision, stable.revision, result, unit)


# Plain slotted classes, not frozen ones: a frozen dataclass' __init__ sets each field through
# object.__setattr__, and two or three of these are made per request.
@dataclass(slots=True)
class _Call:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def header_length(self) -> int | None:
        value = _header(self.headers, _HEADER_LENGTH)
        try:
            return int(value) if value else None
        except ValueError:
            return None


def _header(headers: list[tuple[str, str]], name: str) -> str:
    """The value of header ``name`` (lower case) in a list of pairs; "" when absent."""
    size = len(name)
    for key, value in headers:
        if len(key) == size and key.lower() == name:  # lower() only where it may match
            return value
    return ""


def _error(status: int, message: str) -> _Answer:
    body = json.dumps({"error": message}).encode()
    return _Answer(status, [("Content-Type", "application/json")], body)


def _has(table: RouteTable, backend: Backend) -> bool:
    return any(
        b.revision == backend.revision and b.environment == backend.environment
        for b in table.backends
    )
