"""HTTP: health, metadata and inference in JSON and binary tensors, with tritonclient and raw."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from onnxship.serve.errors import BodyTooLarge
from tests.helpers.models import sample_inputs

from .conftest import StartServer
from .server import Server

ECHO_VALUES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, 8, 9]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [7, 8, 9]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, 8, 9]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, 8, 9]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3.4e38], [1, 2, 3]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300], [1, 2, 3]], dtype=np.float64),
    "BYTES": np.array([["a", "", "héllo"], ["x y", "z", "0"]], dtype=object),
}


@pytest.fixture(scope="module")
def mlp_server(start_server: StartServer, model_dir: Path) -> Server:
    return start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--model-version", "v3"
    )


@pytest.fixture(scope="module")
def echo_server(start_server: StartServer, model_dir: Path) -> Server:
    return start_server("--model", str(model_dir / "echo.onnx"), "--name", "echo")


def reference(model_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_health_and_metadata(mlp_server: Server) -> None:
    live = httpx.get(f"{mlp_server.url}/v2/health/live")
    ready = httpx.get(f"{mlp_server.url}/v2/health/ready")
    assert (live.status_code, ready.status_code) == (200, 200)
    server = httpx.get(f"{mlp_server.url}/v2").json()
    assert server["name"] == "onnxship"
    assert "binary_tensor_data" in server["extensions"]
    meta = httpx.get(f"{mlp_server.url}/v2/models/mlp").json()
    assert meta == {
        "name": "mlp",
        "versions": ["v3"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 32]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
    }
    assert httpx.get(f"{mlp_server.url}/v2/models/mlp/versions/v3").json() == meta
    assert httpx.get(f"{mlp_server.url}/v2/models/mlp/ready").status_code == 200
    assert httpx.get(f"{mlp_server.url}/v2/models/mlp/versions/v3/ready").status_code == 200


def test_tritonclient_metadata(mlp_server: Server) -> None:
    client = httpclient.InferenceServerClient(mlp_server.http_addr)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp", "v3")
    assert client.get_model_metadata("mlp")["versions"] == ["v3"]


def test_json_infer_flat_and_nested_matches_onnxruntime(
    mlp_server: Server, model_dir: Path
) -> None:
    x = sample_inputs(n=3)["x"]
    want = reference(model_dir, x)
    for data in (x.ravel().tolist(), x.tolist()):
        body = {
            "id": "req-7",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 32], "data": data}],
        }
        r = httpx.post(f"{mlp_server.url}/v2/models/mlp/infer", json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["id"] == "req-7"
        assert (doc["model_name"], doc["model_version"]) == ("mlp", "v3")
        (out,) = doc["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("y", "FP32", [3, 16])
        np.testing.assert_allclose(
            np.array(out["data"], dtype=np.float32).reshape(3, 16), want, rtol=1e-6
        )
    versioned = httpx.post(f"{mlp_server.url}/v2/models/mlp/versions/v3/infer", json=body)
    assert versioned.status_code == 200


def test_tritonclient_binary_and_json(mlp_server: Server, model_dir: Path) -> None:
    x = sample_inputs(n=5)["x"]
    want = reference(model_dir, x)
    client = httpclient.InferenceServerClient(mlp_server.http_addr)
    for binary in (True, False):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("y", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out], request_id="abc")
        np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-6)
        assert result.get_response()["id"] == "abc"
        params = result.get_output("y").get("parameters", {})
        assert ("binary_data_size" in params) is binary


def test_binary_request_raw(mlp_server: Server, model_dir: Path) -> None:
    """The binary extension by hand: JSON header, then the tensor bytes; binary output back."""
    x = sample_inputs(n=2)["x"]
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 32],
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    r = httpx.post(
        f"{mlp_server.url}/v2/models/mlp/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    doc = json.loads(r.content[:n])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 2 * 16 * 4}
    y = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 16)
    np.testing.assert_allclose(y, reference(model_dir, x), rtol=1e-6)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(echo_server: Server, binary: bool) -> None:
    client = httpclient.InferenceServerClient(echo_server.http_addr)
    inputs, outputs = [], []
    for dt, value in ECHO_VALUES.items():
        inp = httpclient.InferInput(f"in_{dt}", list(value.shape), dt)
        inp.set_data_from_numpy(value, binary_data=binary)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{dt}", binary_data=binary))
    result = client.infer("echo", inputs, outputs=outputs)
    for dt, value in ECHO_VALUES.items():
        got = result.as_numpy(f"out_{dt}")
        if dt == "BYTES":
            got = np.vectorize(
                lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object]
            )(got)
        assert got.shape == value.shape, dt
        assert got.tolist() == value.tolist(), dt


def test_nan_and_infinity_survive_a_json_response(echo_server: Server) -> None:
    # Fast JSON output (orjson) would write them as null; they must come back as sent.
    client = httpclient.InferenceServerClient(echo_server.http_addr)
    value = np.array([[np.nan, np.inf, -np.inf], [1, 2, 3]], dtype=np.float32)
    inputs, outputs = [], []
    for dt, v in {**ECHO_VALUES, "FP32": value}.items():
        inp = httpclient.InferInput(f"in_{dt}", list(v.shape), dt)
        inp.set_data_from_numpy(v, binary_data=False)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{dt}", binary_data=False))
    result = client.infer("echo", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), value)
    assert result.as_numpy("out_FP64").tolist() == ECHO_VALUES["FP64"].tolist()


def test_unknown_paths_and_methods_answer_in_the_protocols_error_shape(mlp_server: Server) -> None:
    for method, path, status, reason in [
        ("GET", "/v2/nope", 404, "Not Found"),
        ("POST", "/v3/models/mlp/infer", 404, "Not Found"),
        ("GET", "/v2/models/mlp/infer", 405, "Method Not Allowed"),
        ("PUT", "/v2/models/mlp/versions/v3/infer", 405, "Method Not Allowed"),
        ("DELETE", "/v2/health/ready", 405, "Method Not Allowed"),
    ]:
        r = httpx.request(method, mlp_server.url + path)
        assert r.status_code == status, (method, path)
        assert r.json() == {"error": f"{method} {path}: {reason}"}


def test_a_request_id_that_reads_null_keeps_a_finite_answer_exact(mlp_server: Server) -> None:
    # Spotting NaN by the word "null" in orjson's output must not misfire on an id.
    body = {
        "id": "null",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.25] * 32}],
    }
    r = httpx.post(f"{mlp_server.url}/v2/models/mlp/infer", json=body)
    doc = r.json()
    assert doc["id"] == "null" and all(isinstance(v, float) for v in doc["outputs"][0]["data"])


def test_outputs_selection(start_server: StartServer, model_dir: Path) -> None:
    server = start_server("--model", str(model_dir / "tokens.onnx"), "--name", "tok")
    ids = [[5, 6, 7]]
    body = {
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": ids},
            {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": [[1, 1, 0]]},
        ],
        "outputs": [{"name": "length"}],
    }
    doc = httpx.post(f"{server.url}/v2/models/tok/infer", json=body).json()
    assert doc["outputs"] == [{"name": "length", "datatype": "INT64", "shape": [1], "data": [2]}]
    del body["outputs"]
    doc = httpx.post(f"{server.url}/v2/models/tok/infer", json=body).json()
    assert [o["name"] for o in doc["outputs"]] == ["masked", "length"]
    assert doc["outputs"][0]["data"] == [5, 6, 0]


def test_metrics_count_requests_by_code(mlp_server: Server) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32}]}
    assert httpx.post(f"{mlp_server.url}/v2/models/mlp/infer", json=body).status_code == 200
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 31], "data": [0.0] * 31}]}
    assert httpx.post(f"{mlp_server.url}/v2/models/mlp/infer", json=bad).status_code == 400
    text = httpx.get(f"{mlp_server.url}/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    ok = 'onnxship_inference_requests_total{code="200",model="mlp",version="v3"}'
    bad_key = 'onnxship_inference_requests_total{code="400",model="mlp",version="v3"}'
    assert samples[ok] >= 1 and samples[bad_key] >= 1
    assert (
        samples['onnxship_inference_request_duration_seconds_count{model="mlp",version="v3"}'] >= 1
    )
    assert samples['onnxship_model_load_seconds{model="mlp",version="v3"}'] > 0
    assert samples['onnxship_model_ready{model="mlp",version="v3"}'] == 1
    assert 'onnxship_inference_queue_depth{model="mlp",version="v3"}' in samples
    assert 'onnxship_inference_in_flight{model="mlp",version="v3"}' in samples
    assert any(k.startswith("onnxship_inference_batch_size_count") for k in samples)


def test_compressed_request_body(mlp_server: Server, model_dir: Path) -> None:
    x = sample_inputs(n=2)["x"]
    client = httpclient.InferenceServerClient(mlp_server.http_addr)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("mlp", [inp], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("y"), reference(model_dir, x), rtol=1e-6)


async def test_a_body_in_one_chunk_is_not_copied() -> None:
    from unittest import mock

    from aiohttp import streams
    from aiohttp.test_utils import make_mocked_request

    from onnxship.serve.rest import _read_body

    async def body_of(chunks: list[bytes], limit: int = 1 << 20) -> bytes:
        protocol = mock.Mock(_reading_paused=False)
        stream = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
        for chunk in chunks:
            stream.feed_data(chunk)
        stream.feed_eof()
        return await _read_body(make_mocked_request("POST", "/", payload=stream), limit)

    tensor = np.arange(4096, dtype="<f4").tobytes()
    assert await body_of([tensor]) is tensor  # the tensor bytes as the parser handed them
    assert await body_of([tensor[:100], tensor[100:]]) == tensor
    with pytest.raises(BodyTooLarge):
        await body_of([tensor, tensor], limit=len(tensor) + 1)


def test_one_connection_mixing_inference_and_other_routes(
    mlp_server: Server, model_dir: Path
) -> None:
    # The inference route and the others are served by two servers on one port (rest.py):
    # pipelined on one keep-alive connection, every request is answered, in order, whichever
    # of them reads it, also after the connection has gone over to the second.
    x = sample_inputs(n=2)["x"]
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()

    def post(path: str, chunked: bool = False) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        if not chunked:
            return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        half = len(body) // 2
        parts = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:half], body[half:]))
        return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + parts + b"0\r\n\r\n"

    requests = [
        post("/v2/models/mlp/infer"),
        post("/v2/models/mlp/infer", chunked=True),
        b"GET /v2/models/mlp HTTP/1.1\r\nHost: x\r\n\r\n",
        post("/v2/models/mlp/versions/v3/infer", chunked=True),
        post("/v2/models/nope/infer"),
        post("/v2/models/mlp/infer"),
    ]
    with socket.create_connection(("127.0.0.1", mlp_server.http_port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        answers = _read_answers(sock, len(requests))
        # Now the second server's: a chunked body that arrives in pieces, passed on as read.
        chunked = post("/v2/models/mlp/infer", chunked=True)
        for i in range(0, len(chunked), 700):
            sock.sendall(chunked[i : i + 700])
            time.sleep(0.01)
        answers += _read_answers(sock, 1)
    assert [status for status, _ in answers] == [200, 200, 200, 200, 404, 200, 200]
    want = reference(model_dir, x)
    for i in (0, 1, 3, 5, 6):
        got = np.asarray(json.loads(answers[i][1])["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, want.ravel(), rtol=1e-6)
    assert json.loads(answers[2][1])["name"] == "mlp"
    assert "unknown model 'nope'" in json.loads(answers[4][1])["error"]


def _read_answers(sock: socket.socket, n: int) -> list[tuple[int, bytes]]:
    buf, answers = b"", []
    while len(answers) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in head[1:])
            length = int(fields["content-length"])
            if len(buf) >= end + 4 + length:
                answers.append((int(head[0].split()[1]), buf[end + 4 : end + 4 + length]))
                buf = buf[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {len(answers)} answers"
        buf += chunk
    return answers
