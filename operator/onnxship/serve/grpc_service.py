"""The gRPC front end: the protocol's GRPCInferenceService on grpc.aio.

Inputs arrive as ``raw_input_contents`` (what tritonclient and KServe clients send) or as
typed ``contents``; outputs always go back as ``raw_output_contents``, as Triton does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from . import tensors
from .dataplane import DataPlane, InferRequest, RequestTensor
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

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        with self.dp.tracking() as outcome:
            try:
                result = await self.dp.infer(_decode(request))
                response = pb.ModelInferResponse(
                    model_name=result.model_name,
                    model_version=result.model_version,
                    id=result.id or "",
                )
                for name, datatype, arr in result.outputs:
                    response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
                    response.raw_output_contents.append(bytes(tensors.to_raw(datatype, arr)))
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


def _decode(request: Any) -> InferRequest:
    raw = request.raw_input_contents
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
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) and the port it bound (useful when ``port`` is 0).

    ``reuse_port``: the pod's worker processes share the port (serve/workers.py)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    servicer = InferenceServicer(dataplane)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound
