"""The gRPC front end: the protocol's GRPCInferenceService on grpc's thread-pool server,
its methods run on the event loop (``ThreadedServer``).

Inputs arrive as ``raw_input_contents`` (what tritonclient and KServe clients send) or as
typed ``contents``; outputs always go back as ``raw_output_contents``, as Triton does.

ModelInfer takes and returns the message's bytes (no protobuf (de)serializer on the method):
the tensor bytes are the bulk of a request and of an answer, and protobuf would copy each
twice (into its own memory when parsing, into a new ``bytes`` on each access; into the
message, then into its serialised form). Here the inputs are NumPy views of the bytes gRPC
received, the small rest is parsed by protobuf, and each output is copied once, into the
answer's bytes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from . import tensors
from .dataplane import DataPlane, InferRequest, InferResult, RequestTensor
from .errors import InvalidInput, ServeError
from .proto import oip_pb2 as pb
from .proto import oip_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Which typed field of InferTensorContents carries each datatype (FP16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


async def _abort(context: grpc.aio.ServicerContext, exc: ServeError) -> None:
    if exc.retry_after is not None:
        context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
    await context.abort(exc.grpc_code, str(exc))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return pb.ModelReadyResponse(
                ready=self.dp.model_ready(request.name, request.version or None)
            )
        except ServeError as exc:
            await _abort(context, exc)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**self.dp.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self.dp.model_metadata(request.name, request.version or None)
        except ServeError as exc:
            await _abort(context, exc)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        with self.dp.tracking() as outcome:
            try:
                result = await self.dp.infer(_decode(*split_raw_inputs(request)))
                response = _encode(result)
                outcome.code = 200
                return response
            except ServeError as exc:
                outcome.code = exc.http_status
                await _abort(context, exc)
            except asyncio.CancelledError:
                outcome.code = 499
                raise
            except Exception:
                log.exception("unexpected error in an inference request")
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")


# ModelInferRequest.raw_input_contents and ModelInferResponse.raw_output_contents: their field
# numbers with wire type 2 (length-delimited), as oip.proto declares them.
_RAW_INPUT_FIELD = 7
_RAW_OUTPUT_KEY = bytes([6 << 3 | 2])


def split_raw_inputs(data: bytes) -> tuple[Any, list[memoryview]]:
    """A serialised ModelInferRequest as the message without its raw_input_contents, parsed,
    and those contents as views of ``data`` (no copy), in order.

    Only the top-level fields are walked (a handful: names, tensors, the raw contents),
    by the protobuf wire format's rules; the rest is left to protobuf.
    """
    view = memoryview(data)
    raws: list[memoryview] = []
    kept: list[memoryview] = []
    pos, end, kept_from = 0, len(data), 0
    try:
        while pos < end:
            start = pos
            key, pos = _varint(data, pos)
            wire = key & 7
            if wire == 2:
                length, pos = _varint(data, pos)
                value, pos = pos, pos + length
            elif wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                raise ValueError(f"wire type {wire}")
            if pos > end:
                raise ValueError("a field runs past the end")
            if key >> 3 == _RAW_INPUT_FIELD and wire == 2:
                kept.append(view[kept_from:start])
                raws.append(view[value:pos])
                kept_from = pos
        rest = data if not raws else b"".join([*kept, view[kept_from:]])
        return pb.ModelInferRequest.FromString(rest), raws
    except (ValueError, IndexError, DecodeError) as exc:
        raise InvalidInput(f"the request is not a ModelInferRequest message ({exc})") from None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _encode(result: InferResult) -> bytes:
    """A serialised ModelInferResponse: the metadata from protobuf, then each output's bytes
    as a raw_output_contents field, copied once from the array's memory."""
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id or ""
    )
    parts: list[bytes | memoryview] = []
    for name, datatype, arr in result.outputs:
        response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        raw = tensors.to_raw(datatype, arr)
        size = len(raw) if isinstance(raw, bytes) else raw.nbytes
        parts += (_RAW_OUTPUT_KEY, _varint_bytes(size), raw)
    return b"".join([response.SerializeToString(), *parts])


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode(request: Any, raw: list[memoryview]) -> InferRequest:
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs: list[RequestTensor] = []
    for i, t in enumerate(request.inputs):
        if raw:
            inputs.append(RequestTensor(t.name, t.datatype, list(t.shape), raw=raw[i]))
            continue
        field = CONTENTS_FIELD.get(t.datatype)
        if field is None:
            if t.datatype == "FP16":
                raise InvalidInput(
                    f"input {t.name!r}: FP16 data must be sent in raw_input_contents"
                )
            # An unknown datatype: the data plane names what the input expects.
            inputs.append(RequestTensor(t.name, t.datatype, list(t.shape), data=[]))
            continue
        inputs.append(
            RequestTensor(t.name, t.datatype, list(t.shape), data=getattr(t.contents, field))
        )
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version or None,
        inputs=inputs,
        outputs=[o.name for o in request.outputs] or None,
        id=request.id or None,
    )


def create_server(
    dataplane: DataPlane, host: str, port: int, max_message_bytes: int, reuse_port: bool = False
) -> tuple[ThreadedServer, int]:
    """A gRPC server (not started) and the port it bound (useful when ``port`` is 0).
    Call it on the event loop the data plane runs on.

    ``reuse_port``: the pod's worker processes share the port (serve/workers.py)."""
    server = ThreadedServer(
        InferenceServicer(dataplane),
        asyncio.get_running_loop(),
        # A thread per call waiting for its answer: as many as the data plane admits (more
        # are refused with UNAVAILABLE there, as over HTTP), and a few for probes.
        threads=dataplane.config.max_queue_size + 8,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    bound = server.grpc.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound


class ThreadedServer:
    """grpc's thread-pool server in front of the servicer's coroutines on the event loop.

    grpc.aio cost 290-330 us of CPU per call on one core with a handler that returns a fixed
    answer (its poller thread wakes the loop for each of a call's operations): more than our
    whole HTTP JSON request. The thread-pool server's floor was 190-205 us. Each call's pool
    thread starts the servicer's coroutine in a task on the loop, where the data plane lives
    (its counters, batcher and metrics are the loop's alone), and waits for it. Running the
    data plane on the pool threads instead cost 60-100 us more per call, a dozen threads
    taking the GIL in turn on one core.
    bench/serve_frontend_bench.py, ModelInfer on an MLP: 400-460 -> 295-300 us per call.
    """

    def __init__(
        self,
        servicer: InferenceServicer,
        loop: asyncio.AbstractEventLoop,
        threads: int,
        options: list[tuple[str, Any]],
    ) -> None:
        self.servicer = servicer
        self.loop = loop
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnxship-grpc")
        self.grpc = grpc.server(self.pool, options=options)
        _add_servicer(self, self.grpc)

    async def start(self) -> None:
        self.grpc.start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in progress finish within ``grace`` seconds."""
        stopped = self.grpc.stop(grace)
        await self.loop.run_in_executor(None, stopped.wait)
        self.pool.shutdown(wait=False)

    def call(self, method: Any) -> Any:
        """A grpc handler (on a pool thread) running ``method``, a servicer coroutine, in a
        task on the loop; an abort there becomes this call's status."""
        loop = self.loop

        def start(coro: Any, call: _Call) -> None:
            call.task = loop.create_task(coro)
            call.task.add_done_callback(call.finished)

        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(loop)
            try:
                loop.call_soon_threadsafe(start, method(request, _LoopContext()), call)
            except RuntimeError:  # the loop is closed: the process is exiting
                context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            # A client that gives up cancels the task (ModelInfer counts a 499), as grpc.aio
            # did; after a call that ended normally, this finds the task done.
            context.add_callback(call.cancel)
            call.done.acquire()
            task = call.task
            assert task is not None
            if task.cancelled():
                context.abort(grpc.StatusCode.CANCELLED, "cancelled")
            exc = task.exception()
            if exc is None:
                return task.result()
            if isinstance(exc, _Aborted):
                if exc.trailing:
                    context.set_trailing_metadata(exc.trailing)
                context.abort(exc.code, exc.details)
            raise exc

        return handler


class _Call:
    """One call's task on the loop, and the lock its pool thread waits on until the task is
    done (a bare lock: the cheapest hand-over between threads measured here, 6% less CPU per
    call than ``run_coroutine_threadsafe``'s future)."""

    __slots__ = ("done", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.done = threading.Lock()
        self.done.acquire()

    def finished(self, task: asyncio.Task[Any]) -> None:
        self.done.release()

    def cancel(self) -> None:
        task = self.task
        if task is not None and not task.done():
            self.loop.call_soon_threadsafe(task.cancel)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        super().__init__(code, details)
        self.code, self.details, self.trailing = code, details, trailing


class _LoopContext:
    """What the servicer calls on its context on the loop: an abort (with any trailing
    metadata set before it) is carried to the pool thread, which aborts the call."""

    __slots__ = ("trailing",)

    def __init__(self) -> None:
        self.trailing: Any = None

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details, self.trailing)


def _add_servicer(server: ThreadedServer, grpc_server: grpc.Server) -> None:
    """As the generated ``add_GRPCInferenceServiceServicer_to_server``, but ModelInfer takes
    and returns bytes (see the module's docstring)."""
    servicer = server.servicer
    handlers = {}
    for method in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata"):
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            server.call(getattr(servicer, method)),
            request_deserializer=getattr(pb, f"{method}Request").FromString,
            response_serializer=getattr(pb, f"{method}Response").SerializeToString,
        )
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(server.call(servicer.ModelInfer))
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    grpc_server.add_registered_method_handlers(SERVICE, handlers)


SERVICE = "inference.GRPCInferenceService"
