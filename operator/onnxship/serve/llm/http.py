"""The HTTP transport of generation: OpenAI's /v1 routes and the OIP generate extension on
the server's aiohttp app, answers as JSON or server-sent events.

Thin, as rest.py is for inference: read the body, let ``protocol`` parse it and the service
queue it, then write what the engine's events say. It also watches the client: a connection
that closes cancels its sequence, which ends before the engine's next decode step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..dataplane import DataPlane, State
from ..errors import BodyTooLarge, InvalidInput, ModelNotFound, NotReady, ServeError
from . import protocol
from .engine import Delta, Finished, Sequence

if TYPE_CHECKING:
    from .service import LlmService

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
WATCH_S = 0.2  # how often a request waiting for tokens checks that its client is still there


class LlmRoutes:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            app.router.add_post(f"{base}/generate", self.generate)
            app.router.add_post(f"{base}/generate_stream", self.generate_stream)

    # ------------------------------------------------------------------ OpenAI

    async def models(self, request: web.Request) -> web.Response:
        try:
            svc = self._service(None)
        except ServeError as exc:
            return _openai_error(exc)
        return web.json_response(
            protocol.models_list(self.dp.name, svc.created, svc.runtime.max_len)
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        with self.dp.tracking() as outcome:
            try:
                doc = await _read_json(request)
                model = doc.get("model") if isinstance(doc, dict) else None
                if model is not None and not isinstance(model, str):
                    raise protocol.BadField("model", "must be a string")
                svc = self._service(model)
                if chat:
                    messages, gen = protocol.parse_chat(doc, svc.defaults)
                    prompt = svc.chat_prompt(messages)
                else:
                    text, gen = protocol.parse_completion(doc, svc.defaults)
                    prompt = svc.encode(text) if isinstance(text, str) else text
                seq = svc.submit(
                    prompt,
                    max_tokens=gen.max_tokens,
                    sampling=gen.sampling,
                    stop=gen.stop,
                    min_tokens=gen.min_tokens,
                )
            except ServeError as exc:
                outcome.code = exc.http_status
                return _openai_error(exc)
            outcome.code = 200
            rid = protocol.new_id("chatcmpl" if chat else "cmpl")
            name = self.dp.name
            if not gen.stream:
                text, end = await _collect(request, svc, seq)
                if end is None:  # the client left
                    outcome.code = 499
                    return web.Response(status=499)
                if end.reason == "error":
                    outcome.code = 500
                    return _openai_error(ServeError(end.error or "generation failed"))
                make = protocol.chat_answer if chat else protocol.completion_answer
                return _json(make(rid, name, text, end.reason, end.prompt_tokens,
                                  end.completion_tokens))  # fmt: skip

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                if chat:
                    delta = {} if text is None else {"content": text}
                    return protocol.chat_chunk(rid, name, delta, finish)
                return protocol.completion_answer(rid, name, text or "", finish, 0, 0)

            first = [protocol.chat_chunk(rid, name, {"role": "assistant", "content": ""})]
            obj = "chat.completion.chunk" if chat else "text_completion"

            def last(end: Finished) -> list[dict[str, Any]]:
                out = [chunk(None, end.reason) if chat else chunk("", end.reason)]
                if gen.include_usage:
                    out.append(protocol.usage_chunk(rid, name, obj, end.prompt_tokens,
                                                    end.completion_tokens))  # fmt: skip
                return out

            return await _stream(
                request, svc, seq, first if chat else [], lambda t: chunk(t, None), last, True
            )

    # ------------------------------------------------------------------ OIP generate

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, stream=False)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, stream=True)

    async def _generate(self, request: web.Request, stream: bool) -> web.StreamResponse:
        with self.dp.tracking() as outcome:
            try:
                self.dp.check_model(request.match_info["name"], request.match_info.get("version"))
                svc = self._service(None)
                doc = await _read_json(request)
                text, gen = protocol.parse_generate(doc, svc.defaults, stream)
                seq = svc.submit(
                    svc.encode(text),
                    max_tokens=gen.max_tokens,
                    sampling=gen.sampling,
                    stop=gen.stop,
                    min_tokens=gen.min_tokens,
                )
            except ServeError as exc:
                outcome.code = exc.http_status
                return _oip_error(exc)
            outcome.code = 200
            name, version = self.dp.name, self.dp.version
            if not stream:
                out, end = await _collect(request, svc, seq)
                if end is None:
                    outcome.code = 499
                    return web.Response(status=499)
                if end.reason == "error":
                    outcome.code = 500
                    return _oip_error(ServeError(end.error or "generation failed"))
                return _json(protocol.generate_answer(
                    name, version, out, end.reason, end.prompt_tokens, end.completion_tokens
                ))  # fmt: skip

            def last(end: Finished) -> list[dict[str, Any]]:
                return [protocol.generate_answer(
                    name, version, "", end.reason, end.prompt_tokens, end.completion_tokens
                )]  # fmt: skip

            return await _stream(
                request, svc, seq, [],
                lambda t: protocol.generate_answer(name, version, t, None, 0, 0), last, False,
            )  # fmt: skip

    # ------------------------------------------------------------------ shared

    def _service(self, model: str | None) -> LlmService:
        """The model, if it generates and is ready: 404 for another name or a model that does
        not generate, 503 while loading or draining."""
        if model is not None and model != self.dp.name:
            raise ModelNotFound(f"unknown model {model!r}; this server serves {self.dp.name!r}")
        svc = self.dp.llm
        if self.dp.state is State.ready and svc is not None:
            return svc
        if self.dp.state is State.ready:
            raise ModelNotFound(
                f"model {self.dp.name!r} does not generate text (it is not a causal LM): use "
                f"POST /v2/models/{self.dp.name}/infer"
            )
        if self.dp.state is State.draining:
            raise NotReady("server is shutting down; retry on another replica")
        raise NotReady(f"model {self.dp.name!r} is not ready; retry shortly")


async def _read_json(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(
            f"request body is over the limit of {request.app._client_max_size} bytes "
            "(--max-body-bytes)"
        ) from None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _events(
    request: web.Request, svc: LlmService, seq: Sequence
) -> AsyncGenerator[Any, None]:
    """The sequence's events until it finishes; cancels it when the client goes away."""
    done = False
    try:
        while True:
            try:
                event = await asyncio.wait_for(seq.events.get(), WATCH_S)
            except TimeoutError:
                if _gone(request):
                    return
                continue
            if isinstance(event, Finished):
                done = True
            elif _gone(request):
                return
            yield event
            if done:
                return
    finally:
        if not done:
            svc.cancel(seq)


async def _collect(
    request: web.Request, svc: LlmService, seq: Sequence
) -> tuple[str, Finished | None]:
    parts: list[str] = []
    async for event in _events(request, svc, seq):
        if isinstance(event, Finished):
            parts.append(event.text)
            return "".join(parts), event
        parts.append(event.text)
    return "".join(parts), None


async def _stream(
    request: web.Request,
    svc: LlmService,
    seq: Sequence,
    first: list[dict[str, Any]],
    piece: Callable[[str], dict[str, Any]],
    last: Callable[[Finished], list[dict[str, Any]]],
    done_marker: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    send: Callable[[bytes], Awaitable[None]] = response.write
    events = _events(request, svc, seq)
    try:
        for doc in first:
            await send(b"data: " + orjson.dumps(doc) + b"\n\n")
        async for event in events:
            if isinstance(event, Delta):
                if event.text:
                    await send(b"data: " + orjson.dumps(piece(event.text)) + b"\n\n")
                continue
            if event.text:
                await send(b"data: " + orjson.dumps(piece(event.text)) + b"\n\n")
            if event.reason == "error":
                error = protocol.openai_error(ServeError(event.error or "generation failed"))
                await send(b"data: " + orjson.dumps(error) + b"\n\n")
            else:
                for doc in last(event):
                    await send(b"data: " + orjson.dumps(doc) + b"\n\n")
            if done_marker:
                await send(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client went away mid-stream: closing the generator cancels the sequence
    finally:
        await events.aclose()
    return response


def _json(doc: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _openai_error(exc: ServeError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return web.Response(
        body=orjson.dumps(protocol.openai_error(exc)),
        status=exc.http_status,
        headers=headers,
        content_type="application/json",
    )


def _oip_error(exc: ServeError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return web.json_response({"error": str(exc)}, status=exc.http_status, headers=headers)
