"""Bad requests over raw HTTP and gRPC: each gets its status and a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import StartServer
from .server import Server

GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.5] * 32}]}


def x_input(**overrides: Any) -> dict[str, Any]:
    return {"inputs": [{**GOOD["inputs"][0], **overrides}]}


@pytest.fixture(scope="module")
def server(start_server: StartServer, model_dir: Path) -> Server:
    return start_server(
        "--model",
        str(model_dir / "mlp.onnx"),
        "--name",
        "mlp",
        "--model-version",
        "2",
        "--max-body-bytes",
        "65536",
    )


CASES: list[tuple[str, Any, int, list[str]]] = [
    (
        "wrong input name",
        {"inputs": [{**GOOD["inputs"][0], "name": "input"}]},
        400,
        ["unknown input 'input'", "x (FP32 [-1, 32])"],
    ),
    (
        "wrong datatype",
        x_input(datatype="FP64"),
        400,
        ["input 'x'", "expected datatype FP32", "FP64"],
    ),
    ("wrong rank", x_input(shape=[32]), 400, ["input 'x'", "expected shape [-1, 32]", "[32]"]),
    (
        "wrong fixed dim",
        x_input(shape=[2, 16]),
        400,
        ["input 'x'", "expected shape [-1, 32]", "[2, 16]"],
    ),
    ("negative dim", x_input(shape=[-1, 32]), 400, ["input 'x'", "[-1, 32]"]),
    ("too few values", x_input(data=[0.5] * 31), 400, ["input 'x'", "needs 32 elements", "31"]),
    (
        "too many values",
        x_input(shape=[1, 32], data=[0.5] * 64),
        400,
        ["input 'x'", "needs 32", "64"],
    ),
    ("ragged data", x_input(shape=[2, 32], data=[[0.5] * 32, [0.5] * 31]), 400, ["input 'x'"]),
    ("strings for FP32", x_input(data=["a"] * 32), 400, ["input 'x'", "FP32"]),
    # NumPy would coerce these silently (issue 12): "1.5" to 1.5 and null to NaN.
    (
        "numeric strings for FP32",
        x_input(data=[0.5] * 5 + ["1.5"] + [0.5] * 26),
        400,
        ["input 'x'", "element 5", "'1.5'", "FP32"],
    ),
    (
        "null for FP32",
        x_input(data=[[0.5] * 31 + [None]]),
        400,
        ["input 'x'", "element 31", "null", "FP32"],
    ),
    ("booleans for FP32", x_input(data=[True] * 32), 400, ["input 'x'", "element 0", "true"]),
    (
        "missing input",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32]}]},
        400,
        ["input 'x'", "neither 'data'"],
    ),
    ("no inputs", {"inputs": []}, 400, ["'inputs'"]),
    ("duplicate input", {"inputs": GOOD["inputs"] * 2}, 400, ["'x' given more than once"]),
    ("unknown output", {**GOOD, "outputs": [{"name": "z"}]}, 400, ["unknown output 'z'", "y"]),
    ("shape not a list", x_input(shape="1,32"), 400, ["input 'x'", "shape"]),
    ("not JSON", b"{nope", 400, ["not valid JSON"]),
    ("JSON array", [1, 2], 400, ["JSON object"]),
]


@pytest.mark.parametrize(
    ("body", "status", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_named_and_server_keeps_serving(
    server: Server, body: Any, status: int, fragments: list[str]
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server.url}/v2/models/mlp/infer", content=content)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    for fragment in fragments:
        assert fragment in message
    assert httpx.post(f"{server.url}/v2/models/mlp/infer", json=GOOD).status_code == 200


def test_unknown_model_or_version_is_404(server: Server) -> None:
    for path in ("/v2/models/nope/infer", "/v2/models/mlp/versions/9/infer"):
        r = httpx.post(server.url + path, json=GOOD)
        assert r.status_code == 404
        assert "unknown" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/mlp/versions/1/ready").status_code == 404
    assert httpx.get(f"{server.url}/v2/nowhere").json()["error"]


def test_body_over_the_limit_is_413(server: Server) -> None:
    big = x_input(shape=[1000, 32], data=[0.5] * 32_000)
    r = httpx.post(f"{server.url}/v2/models/mlp/infer", json=big)
    assert r.status_code == 413
    assert "65536" in r.json()["error"]
    # Chunked, so the server only learns the size while reading.
    chunks = iter([json.dumps(big).encode()[i : i + 8192] for i in range(0, 300_000, 8192)])
    r = httpx.post(f"{server.url}/v2/models/mlp/infer", content=chunks)
    assert r.status_code == 413
    assert httpx.post(f"{server.url}/v2/models/mlp/infer", json=GOOD).status_code == 200


@pytest.mark.parametrize(
    ("header", "tail", "fragment"),
    [
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 32],
                "parameters": {"binary_data_size": 128},
            },
            bytes(100),
            "runs past the end",
        ),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 32],
                "parameters": {"binary_data_size": 100},
            },
            bytes(100),
            "needs 128 bytes",
        ),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 32],
                "parameters": {"binary_data_size": 128},
            },
            bytes(130),
            "not claimed",
        ),
    ],
    ids=["short body", "wrong size", "extra bytes"],
)
def test_bad_binary_tensors(
    server: Server, header: dict[str, Any], tail: bytes, fragment: str
) -> None:
    head = json.dumps({"inputs": [header]}).encode()
    r = httpx.post(
        f"{server.url}/v2/models/mlp/infer",
        content=head + tail,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400
    assert fragment in r.json()["error"]


def test_grpc_errors_have_matching_codes(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    bad = grpcclient.InferInput("x", [1, 31], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 31), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", [bad])
    assert err.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "expected shape [-1, 32]" in err.value.message()
    good = grpcclient.InferInput("x", [1, 32], "FP32")
    good.set_data_from_numpy(np.zeros((1, 32), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("other", [good])
    assert err.value.status() == str(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", [good], model_version="7")
    assert err.value.status() == str(grpc.StatusCode.NOT_FOUND)
    assert client.infer("mlp", [good]).as_numpy("y").shape == (1, 16)


def test_errors_raised_inside_onnxruntime(start_server: StartServer, model_dir: Path) -> None:
    """ORT's INVALID_ARGUMENT (an id past the vocabulary) is a 400; any other failure is a 500."""
    lookup = start_server("--model", str(model_dir / "lookup.onnx"), "--name", "lookup")
    body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [2], "data": [1, 10]}]}
    r = httpx.post(f"{lookup.url}/v2/models/lookup/infer", json=body)
    assert r.status_code == 400
    assert "the model rejected the inputs" in r.json()["error"]
    assert "out of data bounds" in r.json()["error"]

    add3 = start_server("--model", str(model_dir / "add3.onnx"), "--name", "add3")
    url = f"{add3.url}/v2/models/add3/infer"
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    r = httpx.post(url, json=bad)
    assert r.status_code == 500
    assert r.json()["error"].startswith("inference failed:")
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 1, 1]}]}
    assert httpx.post(url, json=good).json()["outputs"][0]["data"] == [2, 3, 4]
    metrics = httpx.get(f"{add3.url}/metrics").text
    assert 'onnxship_inference_requests_total{code="500",model="add3",version="1"} 1.0' in metrics
    assert "[E:onnxruntime" not in add3.output()  # reported once, in our log format
