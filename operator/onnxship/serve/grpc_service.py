"""The gRPC front end: the protocol's GRPCInferenceService, its methods run on the event loop
over gRPC's core (``CoreServer``).

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
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc._cython import cygrpc

from . import tensors
from .dataplane import DataPlane, InferRequest, InferResult, RequestTensor
from .errors import InvalidInput, ServeError
from .pod import REVISION_HEADER
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
    dataplane: DataPlane,
    host: str,
    port: int,
    max_message_bytes: int,
    reuse_port: bool = False,
    revision: str = "",
) -> tuple[CoreServer, int]:
    """A gRPC server (not started) and the port it bound (useful when ``port`` is 0).
    Call it on the event loop the data plane runs on.

    ``reuse_port``: the pod's worker processes share the port (serve/workers.py).
    ``revision``: named in every call's initial metadata, as HTTP names it in a header."""
    server = CoreServer(
        InferenceServicer(dataplane),
        asyncio.get_running_loop(),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        initial_metadata=((REVISION_HEADER, revision),) if revision else None,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound


class CoreServer:
    """The servicer's coroutines on the event loop, over gRPC's core without grpc's Python
    servers.

    CPU per call on one core with a handler that answers fixed bytes
    (bench/serve_frontend_bench.py): grpc.aio 280-330 us (its poller thread wakes the loop
    for each of a call's operations), grpc's thread-pool server 175-235 us (a pool thread
    per call, locks and condition variables between it and the polling thread), both more
    than our whole HTTP JSON request; this server 90 us. One thread polls the completion
    queue (without the GIL while it waits); a call's message is handed to the event loop
    once, where a task runs the servicer's coroutine, and the answer goes to the core from
    the loop. It drives the core as grpc's own servers do (grpc/_server.py, through
    ``grpc._cython.cygrpc``). ModelInfer on the bench's MLP: 392-408 -> 158-174 us per call.
    """

    def __init__(
        self,
        servicer: InferenceServicer,
        loop: asyncio.AbstractEventLoop,
        options: list[tuple[str, Any]],
        initial_metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self.loop = loop
        self.initial_metadata = initial_metadata  # sent with every call's answer, errors too
        self.cq = cygrpc.CompletionQueue()
        self.core = cygrpc.Server(tuple(options), False)
        self.core.register_completion_queue(self.cq)
        self.methods = _methods(servicer)
        self.calls: set[_CoreCall] = set()  # the poll thread's alone
        self.stopping = False
        self.stopped = threading.Event()
        # Asking the core for the next call and shutting it down, one at a time: no request
        # for a call may reach a core that is shutting down (as in grpc/_server.py).
        self._lock = threading.Lock()
        self._waiting_for_call = False
        self._thread = threading.Thread(target=self._poll, name="onnxship-grpc", daemon=True)

    def add_insecure_port(self, address: str) -> int:
        return int(self.core.add_http2_port(address.encode()))

    async def start(self) -> None:
        self.core.start()
        self._request_call()
        self._thread.start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in progress finish within ``grace`` seconds (then
        cancel them), and wait until the core is done with all of them."""
        if not self._thread.is_alive():
            return
        with self._lock:
            self.stopping = True
            self.core.shutdown(self.cq, _SHUTDOWN)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.stopped.wait, grace or 0):
            self.core.cancel_all_calls()
            # Cancelled calls end at once; a call whose answer never came (its task lost
            # with the loop) would hold the core forever: the process is exiting anyway.
            if not await loop.run_in_executor(None, self.stopped.wait, 5.0):
                log.warning("gRPC calls still open at exit", extra={"calls": len(self.calls)})

    # ------------------------------------------------------------------ the poll thread

    def _request_call(self) -> None:
        self.core.request_call(self.cq, self.cq, _NEW_CALL)
        self._waiting_for_call = True

    def _poll(self) -> None:
        shut_down = False
        while True:
            event = self.cq.poll(time.time() + 1.0)
            tag = event.tag
            if tag is None:  # the poll timed out
                continue
            if tag is _NEW_CALL:
                self._waiting_for_call = False
                if event.success:
                    self._new_call(event)
                with self._lock:
                    if not self.stopping:
                        self._request_call()
            elif tag is _SHUTDOWN:
                shut_down = True
            else:
                try:
                    tag(event)
                except Exception:  # this thread must go on: every call depends on it
                    log.exception("unexpected error in a gRPC call")
            event = None  # no reference to a call past its last event
            if shut_down and not self.calls and not self._waiting_for_call:
                self.core.destroy()
                self.stopped.set()
                return

    def _new_call(self, event: Any) -> None:
        call = _CoreCall(self, event.call, self.methods.get(event.call_details.method))
        # Its batches: the close, the message (unless refused) and the answer, whichever
        # thread starts them; counted down here only (``_done``).
        call.due = 3 if call.method is not None else 2
        self.calls.add(call)
        # The close comes first, so a client that gives up (or a deadline) is seen at once.
        call.start((cygrpc.ReceiveCloseOnServerOperation(0),), call.closed)
        if call.method is None:
            call.finish(grpc.StatusCode.UNIMPLEMENTED, "method not found", None)
        else:
            call.start((cygrpc.ReceiveMessageOperation(0),), call.received)


class _CoreCall:
    """One call, from its arrival to the core's last event for it."""

    __slots__ = ("call", "due", "method", "server", "task")

    def __init__(self, server: CoreServer, call: Any, method: Any) -> None:
        self.server = server
        self.call = call
        self.method = method
        self.task: asyncio.Task[Any] | None = None
        self.due = 0  # batches not completed, set by the poll thread

    def start(self, operations: tuple[Any, ...], tag: Any) -> None:
        self.call.start_server_batch(operations, tag)

    # --- on the poll thread

    def received(self, event: Any) -> None:
        self._done()
        message = event.batch_operations[0].message() if event.success else None
        if message is None:  # the client closed or cancelled without a message
            self.finish(grpc.StatusCode.INVALID_ARGUMENT, "no request message", None)
            return
        try:
            self.server.loop.call_soon_threadsafe(self._run, message)
        except RuntimeError:  # the loop is closed: the process is exiting
            self.finish(grpc.StatusCode.UNAVAILABLE, "server is shutting down", None)

    def closed(self, event: Any) -> None:
        self._done()
        task = self.task
        if event.batch_operations[0].cancelled() and task is not None and not task.done():
            # The client gave up or its deadline passed: ModelInfer counts a 499.
            self.server.loop.call_soon_threadsafe(task.cancel)

    def sent(self, event: Any) -> None:
        self._done()

    def _done(self) -> None:
        self.due -= 1
        if self.due == 0:
            self.server.calls.discard(self)

    # --- on the event loop

    def _run(self, message: bytes) -> None:
        coroutine, deserialize, _ = self.method
        try:
            request = message if deserialize is None else deserialize(message)
        except DecodeError as exc:
            self.finish(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the request: {exc}", None)
            return
        self.task = self.server.loop.create_task(coroutine(request, _LoopContext()))
        self.task.add_done_callback(self._answer)

    def _answer(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.finish(grpc.StatusCode.CANCELLED, "cancelled", None)
            return
        exc = task.exception()
        if isinstance(exc, _Aborted):
            self.finish(exc.code, exc.details, exc.trailing)
        elif exc is not None:
            log.error("unexpected error in a gRPC call", exc_info=exc)
            self.finish(grpc.StatusCode.INTERNAL, "internal server error", None)
        else:
            serialize = self.method[2]
            answer = task.result()
            self.start(
                (
                    cygrpc.SendInitialMetadataOperation(self.server.initial_metadata, 0),
                    cygrpc.SendMessageOperation(
                        answer if serialize is None else serialize(answer), 0
                    ),
                    cygrpc.SendStatusFromServerOperation(None, _OK, b"", 0),
                ),
                self.sent,
            )

    # --- either

    def finish(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        self.start(
            (
                cygrpc.SendInitialMetadataOperation(self.server.initial_metadata, 0),
                cygrpc.SendStatusFromServerOperation(
                    trailing, _CORE_CODES[code], details.encode(), 0
                ),
            ),
            self.sent,
        )


_NEW_CALL = object()
_SHUTDOWN = object()
_OK = cygrpc.StatusCode.ok
_CORE_CODES = {code: cygrpc.StatusCode(code.value[0]) for code in grpc.StatusCode}


def _methods(servicer: InferenceServicer) -> dict[bytes, tuple[Any, Any, Any]]:
    """Each method's coroutine with its request parser and answer serialiser; ModelInfer
    takes and returns bytes (see the module's docstring)."""
    methods: dict[bytes, tuple[Any, Any, Any]] = {}
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata"):
        methods[f"/{SERVICE}/{name}".encode()] = (
            getattr(servicer, name),
            getattr(pb, f"{name}Request").FromString,
            lambda message: message.SerializeToString(),
        )
    methods[f"/{SERVICE}/ModelInfer".encode()] = (servicer.ModelInfer, None, None)
    return methods


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


SERVICE = "inference.GRPCInferenceService"
