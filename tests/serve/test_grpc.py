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
