"""The HTTP/REST front end: OIP JSON and Triton's binary tensor data extension.

Thin by design: parse the wire format into an ``InferRequest``, call the data plane, encode
the result. Status codes come from the error classes, never from here.

Two servers share the port (server.py). This model's inference route is answered by the
httptools server (http1/server.py, ``handle``); every other route, and a compressed body, by
the aiohttp app (``app``), which takes over the connection at its first such request. Under
bench/serve_frontend_bench.py's load (server pinned to one core, uvloop, the same run), a
trivial handler cost 60-63 us of CPU a request on aiohttp's server and 22-23 us on httptools'.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..http1.server import Reply, Request
from . import tensors
from .dataplane import DataPlane, InferRequest, InferResult, RequestTensor
from .errors import BodyTooLarge, InvalidInput, ServeError
from .llm.http import LlmRoutes
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .pod import REVISION_HEADER, WORKER_HEADER

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")  # a name that is its own URL path segment
JSON_TYPE = "application/json"
TOO_LARGE = "request body is over the limit of {limit} bytes (--max-body-bytes)"


def error_response(exc: ServeError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return web.json_response({"error": str(exc)}, status=exc.http_status, headers=headers)


async def _not_found(request: web.Request) -> web.Response:
    return web.json_response({"error": f"{request.method} {request.path}: Not Found"}, status=404)


async def _method_not_allowed(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": f"{request.method} {request.path}: Method Not Allowed"}, status=405
    )


def _protocol_errors(app: web.Application) -> None:
    """aiohttp's own 404/405 answers, in the protocol's ``{"error": ...}`` shape.

    Routes rather than a middleware: any middleware makes aiohttp wrap every request's
    handler in two more layers (``functools.partial`` and ``update_wrapper`` per request),
    which on a small model cost more than our own checks. Each resource gets a catch-all
    method (405), and a last resource catches every other path (404).
    """
    for resource in list(app.router.resources()):
        if isinstance(resource, web.Resource):  # all of ours: plain and {name} paths
            resource.add_route("*", _method_not_allowed)
    app.router.add_route("*", "/{path:.*}", _not_found)


class RestFrontEnd:
    def __init__(
        self,
        dataplane: DataPlane,
        max_body_bytes: int,
        worker: str | None = None,
        revision: str = "",
        max_connection_age: float | None = None,
    ) -> None:
        self.dp = dataplane
        self.max_connection_age = max_connection_age  # http1's max_age, on aiohttp's side
        self.max_body_bytes = max_body_bytes
        # This model's own inference paths: what the httptools server answers (``serves``).
        name, version = dataplane.name, dataplane.version
        self._own: dict[str, str | None] = {}
        if _URL_SAFE.fullmatch(name) and _URL_SAFE.fullmatch(version):
            self._own = {
                f"/v2/models/{name}/infer": None,
                f"/v2/models/{name}/versions/{version}/infer": version,
            }
        # A pod's worker, and the revision, name themselves on every answer (``app`` does the
        # same for aiohttp's): with no router in front, the pod's answer is all a user sees.
        self._extra: list[tuple[str, str]] = []
        if worker is not None:
            self._extra.append((WORKER_HEADER, worker))
        if revision:
            self._extra.append((REVISION_HEADER, revision))
        self._json = [("Content-Type", JSON_TYPE), *self._extra]
        self.extra_headers = self._extra  # for http1's own refusals (413, 400)
        self._server: Any = None  # the aiohttp server whose protocol takes other routes

    # ------------------------------------------------------------------ the httptools side

    def fallback(self, server: Any) -> RestFrontEnd:
        """As http1's Fallback: ``server`` (aiohttp's, from ``AppRunner.server``) makes the
        protocol that takes over a connection at its first request for another route."""
        self._server = server
        return self

    def serves(self, method: str, url: str, headers: dict[str, str]) -> bool:
        # A compressed body goes to aiohttp, which inflates it within the size limit.
        return method == "POST" and url in self._own and "content-encoding" not in headers

    def protocol(self) -> asyncio.Protocol:
        protocol: asyncio.Protocol = self._server()
        return protocol

    async def handle(self, request: Request, reply: Reply) -> None:
        """One inference request on this model's own path, as ``_infer`` does on aiohttp."""
        with self.dp.tracking() as outcome:
            try:
                version = self._own[request.url]
                self.dp.admit(self.dp.name, version)
                header_len = request.get("inference-header-content-length")
                infer_request, binary_outputs = _parse_body(
                    request.body, header_len, self.dp.name, version
                )
                result = await self.dp.infer(infer_request)
                headers, body = _encode_body(result, binary_outputs)
                outcome.code = 200
                reply.answer(200, headers + self._extra, body)
            except ServeError as exc:
                outcome.code = exc.http_status
                headers = self._json
                if exc.retry_after is not None:
                    headers = [*headers, ("Retry-After", str(exc.retry_after))]
                reply.answer(exc.http_status, headers, orjson.dumps({"error": str(exc)}))
            except asyncio.CancelledError:
                outcome.code = 499  # the client went away
                raise
            except Exception:
                log.exception("unexpected error in an inference request")
                reply.answer(500, self._json, b'{"error": "internal server error"}')

    # ------------------------------------------------------------------ the aiohttp side

    def app(self) -> web.Application:
        # aiohttp enforces client_max_size when the body is read; we turn its 413 into ours.
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/models/{name}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/versions/{version}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/ready", self.model_ready)
        app.router.add_get("/v2/models/{name}/versions/{version}/ready", self.model_ready)
        for path in self._own:
            # This model's own paths as plain routes: aiohttp finds those with one dict
            # lookup, where the {name} routes below cost a regular expression each, tried
            # in turn (~20 us a request on a 2-vCPU VM). The routes below answer the rest.
            app.router.add_post(path, self.infer_own)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self.infer)
        app.router.add_get("/metrics", self.metrics)
        LlmRoutes(self.dp).add_to(app)  # generation, when the model is a causal LM
        _protocol_errors(app)  # last: it answers what no route above does
        if self._extra:
            # Which worker and revision answered: how a user (and the tests) can see the pod
            # spread connections over its workers, and which revision a Service sent them to.
            # Set after the handler has run, so errors and streamed (SSE) answers carry them.
            extra = self._extra

            async def name_worker(request: web.Request, response: web.StreamResponse) -> None:
                for header, value in extra:
                    response.headers[header] = value

            app.on_response_prepare.append(name_worker)
        if self.max_connection_age:
            app.on_response_prepare.append(_closing_after(self.max_connection_age))
        return app

    # ------------------------------------------------------------------ health and metadata

    async def live(self, request: web.Request) -> web.Response:
        live = self.dp.live()
        return web.json_response({"live": live}, status=200 if live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        if self.dp.ready():
            return web.json_response({"ready": True})
        return web.json_response({"ready": False}, status=503, headers={"Retry-After": "1"})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.dp.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            meta = self.dp.model_metadata(
                request.match_info["name"], request.match_info.get("version")
            )
        except ServeError as exc:
            return error_response(exc)
        return web.json_response(meta)

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            ready = self.dp.model_ready(name, request.match_info.get("version"))
        except ServeError as exc:
            return error_response(exc)
        body = {"name": name, "ready": ready}
        if ready:
            return web.json_response(body)
        return web.json_response(body, status=503, headers={"Retry-After": "1"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.dp.metrics_text(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    # ------------------------------------------------------------------ inference

    async def infer(self, request: web.Request) -> web.Response:
        match = request.match_info
        return await self._infer(request, match["name"], match.get("version"))

    async def infer_own(self, request: web.Request) -> web.Response:
        return await self._infer(request, self.dp.name, None)

    async def _infer(self, request: web.Request, name: str, version: str | None) -> web.Response:
        with self.dp.tracking() as outcome:
            try:
                infer_request, binary_outputs = await self._parse(request, name, version)
                result = await self.dp.infer(infer_request)
                response = _encode(result, binary_outputs)
                outcome.code = 200
                return response
            except ServeError as exc:
                outcome.code = exc.http_status
                return error_response(exc)
            except asyncio.CancelledError:
                outcome.code = 499  # the client went away
                raise
            except Exception:
                log.exception("unexpected error in an inference request")
                return web.json_response({"error": "internal server error"}, status=500)

    async def _parse(
        self, request: web.Request, name: str, version: str | None
    ) -> tuple[InferRequest, dict[str, bool]]:
        # An unknown model or version is a 404 whatever the body holds, and a full queue a
        # 503 before the body costs anything to read and decode.
        self.dp.admit(name, version)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise _too_large(request.content_length, self.max_body_bytes)
        body = await _read_body(request, self.max_body_bytes)
        return _parse_body(body, request.headers.get(HEADER_LENGTH), name, version)


def _closing_after(max_age: float) -> Any:
    """An on_response_prepare hook: the first answer on a connection older than ``max_age``
    (counted from its first answer here) closes it, as http1's server does on its side."""
    born: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def close_if_old(request: web.Request, response: web.StreamResponse) -> None:
        transport = request.transport
        if transport is None:
            return
        now = time.monotonic()
        if now - born.setdefault(transport, now) >= max_age:
            response.force_close()
            # aiohttp wrote its Connection header before this hook: say it, or the client
            # would send its next request on a connection about to close.
            response.headers["Connection"] = "close"

    return close_if_old


def _parse_body(
    body: bytes, header_len: str | None, name: str, version: str | None
) -> tuple[InferRequest, dict[str, bool]]:
    if header_len is None:
        header, binary = body, memoryview(b"")
    else:
        try:
            n = int(header_len)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header_len!r}") from None
        if not 0 <= n <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        view = memoryview(body)
        header, binary = bytes(view[:n]), view[n:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError:
        try:  # NaN and Infinity: not JSON, but what Python's json (tritonclient) writes
            doc = json.loads(header)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    return _parse_infer(doc, binary, name, version)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body as it came off the parser: the one chunk itself when it came in one (most
    requests), else the chunks joined once. ``request.read()`` would copy it twice (into a
    bytearray, then into bytes), the tensor bytes with it."""
    stream = request.content
    if limit and hasattr(stream, "set_read_chunk_size"):  # aiohttp >= 3.13, as read() does
        stream.set_read_chunk_size(limit)  # compressed bodies inflate in large chunks
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > limit:
            raise _too_large(None, limit)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int | None, limit: int) -> BodyTooLarge:
    got = f"{size} bytes" if size is not None else "more"
    return BodyTooLarge(f"request body is {got}; the limit is {limit} bytes (--max-body-bytes)")


def _parse_infer(
    doc: Any, binary: memoryview, name: str, version: str | None
) -> tuple[InferRequest, dict[str, bool]]:
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request needs 'inputs', a non-empty list of tensors")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    offset = 0
    inputs: list[RequestTensor] = []
    for i, t in enumerate(raw_inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise InvalidInput(f"inputs[{i}] must be an object with a 'name'")
        tname = t["name"]
        shape = t.get("shape")
        if not isinstance(shape, list):
            raise InvalidInput(f"input {tname!r}: 'shape' must be a list of integers")
        datatype = t.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input {tname!r}: 'datatype' must be a string such as FP32")
        tparams = t.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(
                    f"input {tname!r}: binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {tname!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            inputs.append(RequestTensor(tname, datatype, shape, raw=binary[offset : offset + size]))
            offset += size
        elif "data" in t:
            inputs.append(RequestTensor(tname, datatype, shape, data=t["data"]))
        else:
            raise InvalidInput(
                f"input {tname!r} has neither 'data' nor parameters.binary_data_size"
            )
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )

    default_binary = bool(params.get("binary_data_output", False))
    outputs: list[str] | None = None
    binary_outputs: dict[str, bool] = {}
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list of {name: ...} objects")
        outputs = []
        for i, o in enumerate(raw_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidInput(f"outputs[{i}] must be an object with a 'name'")
            oparams = o.get("parameters") or {}
            outputs.append(o["name"])
            flag = oparams.get("binary_data") if isinstance(oparams, dict) else None
            binary_outputs[o["name"]] = default_binary if flag is None else bool(flag)
    request_id = doc.get("id")
    infer_request = InferRequest(
        model_name=name,
        model_version=version,
        inputs=inputs,
        outputs=outputs or None,
        id=str(request_id) if request_id is not None else None,
        parameters=params,
    )
    binary_outputs.setdefault("*", default_binary)
    return infer_request, binary_outputs


def _encode(result: InferResult, binary_outputs: dict[str, bool]) -> web.Response:
    headers, body = _encode_body(result, binary_outputs)
    return web.Response(body=body, headers=CIMultiDict(headers))


def _encode_body(
    result: InferResult, binary_outputs: dict[str, bool]
) -> tuple[list[tuple[str, str]], bytes]:
    default = binary_outputs["*"]
    floats: list[np.ndarray] = []  # JSON tensors that may hold NaN or Infinity
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for name, datatype, arr in result.outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary_outputs.get(name, default):
            raw = tensors.to_raw(datatype, arr)
            entry["parameters"] = {
                "binary_data_size": len(raw) if isinstance(raw, bytes) else raw.nbytes
            }
            buffers.append(raw)
        elif arr.dtype.kind in "biuf":
            entry["data"] = np.ascontiguousarray(arr).ravel()
            if arr.dtype.kind == "f":
                floats.append(arr)
        else:
            entry["data"] = tensors.to_data(datatype, arr)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id is not None:
        doc["id"] = result.id
    doc["outputs"] = outputs
    header = _json_header(doc, floats)
    if not buffers:
        return [("Content-Type", JSON_TYPE)], header
    return [
        (HEADER_LENGTH, str(len(header))),
        ("Content-Type", "application/octet-stream"),
    ], b"".join([header, *buffers])


def _json_header(doc: dict[str, Any], floats: list[np.ndarray]) -> bytes:
    """orjson writes numpy arrays in C, ~25x faster than ``json`` over ``tolist()`` (a 384-float
    embedding: 13 us against 335 us), and float32 in its shortest form. It writes NaN and
    Infinity as null, though: a response holding them goes through ``json``, which keeps
    them as Python's json and tritonclient read them. Looking for "null" in what orjson
    wrote costs nothing next to testing every float (an id may hold the word: then test)."""
    out = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" not in out or all(np.isfinite(a).all() for a in floats):
        return out
    for entry in doc["outputs"]:
        if isinstance(entry.get("data"), np.ndarray):
            entry["data"] = entry["data"].tolist()
    return json.dumps(doc, separators=(",", ":")).encode()
