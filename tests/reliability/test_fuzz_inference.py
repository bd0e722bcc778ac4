"""Property-based fuzzing of the inference decoders: a client's mistake is never a 5xx.

The fast tests drive the real front ends in-process (``RestFrontEnd.infer`` with a minimal
request object, ``InferenceServicer.ModelInfer`` with a minimal context) over real ONNX
Runtime sessions; a smaller share goes over real HTTP and gRPC to a running `onnxship serve`,
which must still answer afterwards. Counts: FAST_* per default run, SLOW_* more under
``-m slow``; together they exceed 10,000 generated requests.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from onnxship.serve.dataplane import DataPlane
from onnxship.serve.datatypes import WIRE_DTYPE
from onnxship.serve.grpc_service import InferenceServicer
from onnxship.serve.proto import oip_pb2_grpc as pb_grpc
from onnxship.serve.rest import HEADER_LENGTH, RestFrontEnd
from tests.serve.server import Server, free_port, start

from .fuzz import Case, GrpcCase, grpc_cases, json_cases

FAST_JSON, FAST_BINARY, FAST_GRPC, FAST_WIRE = 1000, 1000, 800, 200
SLOW_JSON, SLOW_BINARY, SLOW_GRPC = 3000, 3000, 3000
WIRE_TYPES = ["FP32", "INT64", "BYTES"]
COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                              HealthCheck.data_too_large],
    "database": None,
}  # fmt: skip
CLIENT_CODES = {400, 413}
# Request-level problems whose messages name a part of the request rather than an input.
REQUEST_LEVEL = ("request", "'inputs'", "inputs[", "'parameters'", "'outputs'", "outputs[",
                 "output", HEADER_LENGTH, "binary data", "binary_data", "raw_input_contents",
                 "disagree", "the model rejected")  # fmt: skip


class FakeRequest:
    """What RestFrontEnd reads from an aiohttp request, and nothing else."""

    def __init__(self, name: str, body: bytes, headers: dict[str, str]) -> None:
        self.match_info = {"name": name}
        self.content_length = len(body)
        self.headers = headers
        self.content = FakePayload(body)


class FakePayload:
    """aiohttp's payload stream as RestFrontEnd reads it: the body in chunks (two when it has
    more than one byte, so the joining path is fuzzed too), then b""."""

    def __init__(self, body: bytes) -> None:
        half = len(body) // 2
        self._chunks = [c for c in (body[:half], body[half:]) if c]

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class FakeContext:
    """What the servicer calls on a grpc.aio context: abort raises, as grpc.aio does."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, md: Any) -> None:
        pass


def decode_outputs(status: int, body: bytes, headers: Any) -> tuple[dict[str, Any], bytes]:
    n = headers.get(HEADER_LENGTH)
    if n is None:
        return json.loads(body), b""
    return json.loads(body[: int(n)]), body[int(n) :]


def check_http_answer(case: Case, status: int, body: bytes, headers: Any) -> None:
    """The property every HTTP answer must have, in-process or over the wire."""
    assert status < 500, f"{status} for a client mistake: {body[:300]!r}\nrequest {case.doc!r}"
    doc, binary = decode_outputs(status, body, headers)
    if case.valid:
        assert status == 200, f"a valid request was refused: {doc}\nrequest {case.doc!r}"
    if status != 200:
        assert status in CLIENT_CODES, (status, doc)
        message = doc["error"]
        assert isinstance(message, str) and message
        structured = isinstance(case.doc, dict) and isinstance(case.doc.get("inputs"), list)
        if structured and status == 400:
            named = any(repr(n) in message for n in [*case.names, "x"])
            assert named or any(p in message for p in REQUEST_LEVEL), (
                f"message names neither the input nor the part at fault: {message!r}"
            )
        return
    if case.expect is not None:
        (out,) = doc["outputs"]
        assert out["shape"] == list(case.expect.shape)
        if "data" in out:
            got = np.asarray(out["data"], dtype=case.expect.dtype)
        elif case.datatype == "BYTES":
            got = case.expect  # BYTES binary outputs: checked by size below
            assert len(binary) == out["parameters"]["binary_data_size"]
        else:
            got = np.frombuffer(binary, WIRE_DTYPE[case.datatype])
        np.testing.assert_array_equal(got.reshape(case.expect.shape), case.expect)


def http_request(case: Case) -> tuple[bytes, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if case.header_length is not None:
        headers[HEADER_LENGTH] = case.header_length
        headers["Content-Type"] = "application/octet-stream"
    return case.body(), headers


def run_rest(planes: dict[str, DataPlane], loop: asyncio.AbstractEventLoop, case: Case) -> None:
    dp = planes[case.datatype]
    body, headers = http_request(case)
    front = RestFrontEnd(dp, dp.config.max_body_bytes)
    response = loop.run_until_complete(front.infer(FakeRequest(dp.name, body, headers)))  # type: ignore[arg-type]
    check_http_answer(case, response.status, bytes(response.body), response.headers)  # type: ignore[arg-type]


def check_grpc_answer(
    case: GrpcCase, code: grpc.StatusCode | None, details: str, resp: Any
) -> None:
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        f"{code}: {details}\nrequest {case.request}"
    )
    if case.valid:
        assert code is None, f"a valid request was refused: {code} {details}\n{case.request}"
    if code is not None:
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert details
        return
    if case.expect is not None and case.datatype != "BYTES":
        (out,) = resp.outputs
        assert list(out.shape) == list(case.expect.shape)
        got = np.frombuffer(resp.raw_output_contents[0], WIRE_DTYPE[case.datatype])
        np.testing.assert_array_equal(got.reshape(case.expect.shape), case.expect)


def model_infer(servicer: InferenceServicer, loop: asyncio.AbstractEventLoop, req: Any) -> Any:
    """ModelInfer as grpc.aio calls it: the request's wire bytes in, the answer's bytes out."""
    from onnxship.serve.proto import oip_pb2 as pb

    answer = loop.run_until_complete(servicer.ModelInfer(req.SerializeToString(), FakeContext()))  # type: ignore[arg-type]
    return pb.ModelInferResponse.FromString(answer)


def run_grpc(planes: dict[str, DataPlane], loop: asyncio.AbstractEventLoop, case: GrpcCase) -> None:
    servicer = InferenceServicer(planes[case.datatype])
    try:
        resp = model_infer(servicer, loop, case.request)
    except Aborted as exc:
        check_grpc_answer(case, exc.code, exc.details, None)
    else:
        check_grpc_answer(case, None, "", resp)


def still_answers(planes: dict[str, DataPlane], loop: asyncio.AbstractEventLoop) -> None:
    for dt, dp in planes.items():
        assert dp.ready() and dp.in_flight == 0, dt
        assert dp.scheduler is not None and dp.scheduler.depth == 0, dt


# ---------------------------------------------------------------- fast, in-process


@settings(max_examples=FAST_JSON, **COMMON)
@given(case=json_cases())
def test_json_requests_never_get_a_5xx(planes: Any, loop: Any, case: Case) -> None:
    run_rest(planes, loop, case)


@settings(max_examples=FAST_BINARY, **COMMON)
@given(case=json_cases(binary=True))
def test_binary_requests_never_get_a_5xx(planes: Any, loop: Any, case: Case) -> None:
    run_rest(planes, loop, case)


@settings(max_examples=FAST_GRPC, **COMMON)
@given(case=grpc_cases())
def test_grpc_requests_never_get_internal(planes: Any, loop: Any, case: GrpcCase) -> None:
    run_grpc(planes, loop, case)


@pytest.mark.parametrize(
    ("datatype", "shape", "raw"),
    [
        ("BYTES", [10**11, 3], None),  # was a MemoryError allocating before counting: 500
        ("BYTES", [10**11, 3], b"\x01\x00\x00\x00a"),
        ("FP32", [0, 3], b""),  # an empty batch: the gRPC encoder could not cast it: 500
        ("INT64", [0, 3], None),
    ],
)
def test_regressions_found_by_fuzzing(
    planes: Any, loop: Any, datatype: str, shape: list[int], raw: bytes | None
) -> None:
    from onnxship.serve.proto import oip_pb2 as pb

    req = pb.ModelInferRequest(model_name=f"echo_{datatype}")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    elif datatype == "BYTES":
        t.contents.bytes_contents.append(b"a")
    valid = shape[0] == 0
    expect = np.zeros((0, 3), dtype=np.int64 if datatype == "INT64" else np.float32)
    run_grpc(planes, loop, GrpcCase(datatype, req, valid, expect if valid else None))
    data: Any = ["a"] if datatype == "BYTES" else []
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}],
           "parameters": {"binary_data_output": True}}  # fmt: skip
    run_rest(planes, loop, Case(datatype, doc, valid=valid, expect=expect if valid else None))


# JSON data NumPy would have coerced silently (issue 12): each is a 400 naming the input
# and the element, in-process over REST and as typed gRPC contents where the field allows.
COERCED = [
    ("FP32", ["1.5", 2, 3], ["element 0", "'1.5'"]),
    ("FP32", [1, 2, None], ["element 2", "null"]),
    ("FP32", [[1, 2, 3], [4, "5", 6]], ["element 4", "'5'"]),
    ("FP64", [{"v": 1}, 2, 3], ["element 0", "an object"]),
    ("FP32", [True, False, True], ["element 0", "true"]),
    ("FP16", [1, 2, "nan"], ["element 2", "'nan'"]),
    ("INT64", [1, 2.5, 3], ["element 1", "2.5", "integer"]),
    ("INT64", ["1", "2", "3"], ["element 0", "'1'"]),
    ("INT8", [1, 2, 300], ["300", "out of range", "INT8"]),
    ("UINT8", [1, -2, 3], ["-2", "out of range"]),
    ("BOOL", [1, 0, 1], ["element 0", "true or false"]),
    ("BOOL", ["true", "false", "true"], ["element 0", "'true'"]),
]


@pytest.mark.parametrize(("datatype", "data", "fragments"), COERCED)
def test_coercible_json_data_is_refused(
    planes: Any, loop: Any, datatype: str, data: Any, fragments: list[str]
) -> None:
    rows = 2 if isinstance(data[0], list) else 1
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [rows, 3], "data": data}]}
    dp = planes[datatype]
    body = json.dumps(doc).encode()
    front = RestFrontEnd(dp, dp.config.max_body_bytes)
    response = loop.run_until_complete(
        front.infer(FakeRequest(dp.name, body, {"Content-Type": "application/json"}))  # type: ignore[arg-type]
    )
    message = json.loads(response.body)["error"]  # type: ignore[arg-type]
    assert response.status == 400, message
    assert "input 'x'" in message and datatype in message, message
    for fragment in fragments:
        assert fragment in message, message
    # the same values, well typed, are answered
    good = [[1, 2, 3], [4, 5, 6]] if rows == 2 else [1, 2, 3]
    if datatype == "BOOL":
        good = [True, False, True]
    doc["inputs"][0]["data"] = good
    ok = loop.run_until_complete(
        front.infer(FakeRequest(dp.name, json.dumps(doc).encode(), {}))  # type: ignore[arg-type]
    )
    assert ok.status == 200, ok.body


def test_typed_grpc_contents_keep_their_ranges(planes: Any, loop: Any) -> None:
    """int_contents carries INT8 values as int32: out of INT8's range is a 400, not a wrap."""
    from onnxship.serve.proto import oip_pb2 as pb

    req = pb.ModelInferRequest(model_name="echo_INT8")
    t = req.inputs.add(name="x", datatype="INT8", shape=[1, 3])
    t.contents.int_contents.extend([1, 2, 200])
    run_grpc(planes, loop, GrpcCase("INT8", req, False, None))
    with pytest.raises(Aborted, match="out of range"):
        model_infer(InferenceServicer(planes["INT8"]), loop, req)
    # uint64_contents past 2**63: NumPy infers float64 from the container; still exact
    req = pb.ModelInferRequest(model_name="echo_UINT64")
    t = req.inputs.add(name="x", datatype="UINT64", shape=[1, 3])
    t.contents.uint64_contents.extend([0, 2**63, 2**64 - 1])
    expect = np.array([[0, 2**63, 2**64 - 1]], dtype=np.uint64)
    run_grpc(planes, loop, GrpcCase("UINT64", req, True, expect))


def test_data_planes_are_idle_and_ready_after_fuzzing(planes: Any, loop: Any) -> None:
    still_answers(planes, loop)


# ---------------------------------------------------------------- slow, more of the same


@pytest.mark.slow
@settings(max_examples=SLOW_JSON, **COMMON)
@given(case=json_cases())
def test_json_requests_never_get_a_5xx_long(planes: Any, loop: Any, case: Case) -> None:
    run_rest(planes, loop, case)


@pytest.mark.slow
@settings(max_examples=SLOW_BINARY, **COMMON)
@given(case=json_cases(binary=True))
def test_binary_requests_never_get_a_5xx_long(planes: Any, loop: Any, case: Case) -> None:
    run_rest(planes, loop, case)


@pytest.mark.slow
@settings(max_examples=SLOW_GRPC, **COMMON)
@given(case=grpc_cases())
def test_grpc_requests_never_get_internal_long(planes: Any, loop: Any, case: GrpcCase) -> None:
    run_grpc(planes, loop, case)


# ---------------------------------------------------------------- over the wire


@pytest.fixture(scope="module")
def servers(
    echo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """Real `onnxship serve` processes for three datatypes (one each: start-up costs)."""
    logs = tmp_path_factory.mktemp("fuzz-logs")
    started: dict[str, Server] = {}
    try:
        for dt in WIRE_TYPES:
            args = ["--model", str(echo_models[dt]), "--name", f"echo_{dt}",
                    "--max-batch-size", "4", "--threads", "1"]  # fmt: skip
            started[dt] = start(args, free_port(), free_port(), logs / f"{dt}.log")
        yield started
    finally:
        for server in started.values():
            server.terminate()


def post(server: Server, name: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(
        f"{server.url}/v2/models/{name}/infer", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@settings(max_examples=FAST_WIRE, **COMMON)
@given(case=json_cases(datatypes=WIRE_TYPES) | json_cases(binary=True, datatypes=WIRE_TYPES))
def test_real_http_server_never_answers_5xx(servers: dict[str, Server], case: Case) -> None:
    server = servers[case.datatype]
    body, headers = http_request(case)
    status, answer, answer_headers = post(server, f"echo_{case.datatype}", body, headers)
    check_http_answer(case, status, answer, answer_headers)


@settings(max_examples=FAST_WIRE, **COMMON)
@given(case=grpc_cases(datatypes=WIRE_TYPES))
def test_real_grpc_server_never_answers_internal(
    servers: dict[str, Server], case: GrpcCase
) -> None:
    server = servers[case.datatype]
    with grpc.insecure_channel(server.grpc_addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            resp = stub.ModelInfer(case.request, timeout=30)
        except grpc.RpcError as exc:
            check_grpc_answer(case, exc.code(), exc.details() or "", None)
        else:
            check_grpc_answer(case, None, "", resp)


def test_real_servers_still_answer_after_fuzzing(servers: dict[str, Server]) -> None:
    for dt, server in servers.items():
        assert server.proc.poll() is None, f"{dt} server died:\n{server.output()[-2000:]}"
        data = [0, 1, 2] if dt != "BYTES" else ["a", "b", "c"]
        doc = {"inputs": [{"name": "x", "datatype": dt, "shape": [1, 3], "data": data}]}
        status, body, _ = post(
            server, f"echo_{dt}", json.dumps(doc).encode(), {"Content-Type": "application/json"}
        )
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["data"] == data
        assert "Traceback" not in server.output(), server.output()[-3000:]
