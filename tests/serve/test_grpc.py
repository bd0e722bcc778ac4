"""gRPC (GRPCInferenceService) with tritonclient[grpc]: metadata, inference, every datatype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from tests.helpers.models import sample_inputs

from .conftest import StartServer
from .server import Server
from .test_http import ECHO_VALUES


@pytest.fixture(scope="module")
def server(start_server: StartServer, model_dir: Path) -> Server:
    return start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--model-version", "v1"
    )


def test_health_and_metadata(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "v1")
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["versions"] == ["v1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "32"]}]
    assert client.get_server_metadata(as_json=True)["name"] == "onnxship"


def test_the_grpc_core_knows_the_settings_serve_gives_it(server: Server) -> None:
    """`serve` turns two of grpcio's experiments off (cli/serve.py GRPC_CORE_ENV: a thread
    hand-over less per call); a grpcio whose core no longer knows them says so at start, and
    the setting would silently do nothing. Bumping grpcio past the pin fails here first."""
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    assert client.is_server_ready()
    assert "Unknown experiment" not in server.output()


def test_infer_matches_onnxruntime(server: Server, model_dir: Path) -> None:
    x = sample_inputs(n=4)["x"]
    session = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "mlp", [inp], outputs=[grpcclient.InferRequestedOutput("y")], request_id="g1"
    )
    np.testing.assert_allclose(result.as_numpy("y"), session.run(None, {"x": x})[0], rtol=1e-6)
    assert result.get_response().id == "g1"


def test_every_datatype_and_output_selection(start_server: StartServer, model_dir: Path) -> None:
    server = start_server("--model", str(model_dir / "echo.onnx"), "--name", "echo")
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    inputs = []
    for dt, value in ECHO_VALUES.items():
        inp = grpcclient.InferInput(f"in_{dt}", list(value.shape), dt)
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    wanted = ["out_FP16", "out_BYTES", "out_UINT64"]
    result = client.infer(
        "echo", inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in wanted]
    )
    assert [o.name for o in result.get_response().outputs] == wanted
    full = client.infer("echo", inputs)
    for dt, value in ECHO_VALUES.items():
        got = full.as_numpy(f"out_{dt}")
        if dt == "BYTES":
            got = np.vectorize(lambda b: b.decode(), otypes=[object])(got)
        assert got.tolist() == value.tolist(), dt


def test_typed_contents_are_accepted_too(server: Server) -> None:
    """KServe clients may send typed ``contents`` instead of raw bytes; both are accepted."""
    import grpc

    from onnxship.serve.proto import oip_pb2 as pb
    from onnxship.serve.proto import oip_pb2_grpc as pb_grpc

    x = sample_inputs(n=1)["x"]
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 32])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.grpc_addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 16)
        assert list(response.outputs[0].shape) == [1, 16]
        tensor.contents.fp32_contents.pop()
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 32 elements" in err.value.details()
    assert np.isfinite(y).all()


def test_raw_inputs_are_views_of_the_received_bytes_in_any_field_order() -> None:
    from onnxship.serve.dataplane import InferResult
    from onnxship.serve.grpc_service import _encode, split_raw_inputs
    from onnxship.serve.proto import oip_pb2 as pb

    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.arange(300, dtype="<i8")  # over 127 bytes: a two-byte length
    head = pb.ModelInferRequest(model_name="m", id="r1")
    head.inputs.add(name="a", datatype="FP32", shape=[2, 3])
    head.inputs.add(name="b", datatype="INT64", shape=[300])
    head.outputs.add(name="y")
    first = pb.ModelInferRequest(raw_input_contents=[a.tobytes()])
    last = pb.ModelInferRequest(raw_input_contents=[b.tobytes()])
    # Protobuf merges concatenated messages: a raw content may come before the other fields.
    data = first.SerializeToString() + head.SerializeToString() + last.SerializeToString()
    rest, raws = split_raw_inputs(data)
    assert [bytes(r) for r in raws] == [a.tobytes(), b.tobytes()]
    assert all(r.obj is data for r in raws)  # views of what gRPC handed over: no copy
    assert (rest.model_name, rest.id, [t.name for t in rest.inputs]) == ("m", "r1", ["a", "b"])
    assert [o.name for o in rest.outputs] == ["y"] and not rest.raw_input_contents

    result = InferResult("m", "1", "r1", [("y", "FP32", a), ("z", "INT64", b)])
    answer = pb.ModelInferResponse.FromString(_encode(result))
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("y", "FP32", [2, 3]),
        ("z", "INT64", [300]),
    ]
    assert list(answer.raw_output_contents) == [a.tobytes(), b.tobytes()]


def test_a_message_that_is_not_a_request_is_invalid_argument(server: Server) -> None:
    import grpc

    with grpc.insecure_channel(server.grpc_addr) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for garbage in (b"\x3a\xff\xff\x01", b"\x07", b"\x3a\x05ab"):
            with pytest.raises(grpc.RpcError) as err:
                infer(garbage)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a ModelInferRequest" in err.value.details()
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    assert client.is_server_ready()


def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones(
    start_server: StartServer, model_dir: Path
) -> None:
    """Calls wait on grpc's threads for the event loop's answer: three held together by a
    1.5 s batch delay are all answered after SIGTERM, a later one is UNAVAILABLE, exit 0."""
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from onnxship.serve.proto import oip_pb2 as pb
    from onnxship.serve.proto import oip_pb2_grpc as pb_grpc

    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp",
        "--max-batch-size", "64", "--max-batch-delay-ms", "1500",
    )  # fmt: skip
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 32])
    request.raw_input_contents.append(sample_inputs(n=1)["x"].tobytes())
    with grpc.insecure_channel(server.grpc_addr) as channel, ThreadPoolExecutor(4) as pool:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        in_flight = [pool.submit(stub.ModelInfer, request, timeout=20) for _ in range(3)]
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(request, timeout=10)
        answers = [f.result() for f in in_flight]
    assert [list(a.outputs[0].shape) for a in answers] == [[1, 16]] * 3
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in late.value.details()
    assert server.proc.wait(20) == 0
