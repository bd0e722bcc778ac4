"""`onnxship serve --revision NAME`: every answer names the revision, as the router's do.

A Service that selects the model's pods directly (one revision, no router pod) leaves the
pod's own answer as all a user sees; ``onnxship-revision`` must be on it whichever path
answered: the httptools inference route, aiohttp's routes (health, metadata, metrics, errors,
the LLM API with its streamed answers), gRPC's initial metadata, and with one worker or two.
"""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from .conftest import StartServer
from .server import CLI, Server

HEADER = "onnxship-revision"
X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": X.ravel().tolist()}]}


@pytest.fixture(scope="module")
def single(start_server: StartServer, model_dir: Path) -> Server:
    return start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--workers", "1",
        "--threads", "1", "--max-body-bytes", "4096", "--revision", "r7",
    )  # fmt: skip


def test_every_http_answer_names_the_revision(single: Server) -> None:
    with httpx.Client(base_url=single.url, timeout=20) as client:
        answers = {
            "inference": client.post("/v2/models/mlp/infer", json=BODY),
            "inference, versioned": client.post("/v2/models/mlp/versions/1/infer", json=BODY),
            "bad body": client.post("/v2/models/mlp/infer", content=b"{not json"),
            # Refused by the httptools server itself, before any handler runs.
            "too large": client.post("/v2/models/mlp/infer", content=b" " * 8192),
            "no inputs": client.post("/v2/models/mlp/infer", json={"inputs": []}),
            "unknown model": client.post("/v2/models/nope/infer", json=BODY),
            "unknown path": client.get("/nowhere"),
            "wrong method": client.delete("/v2/health/ready"),
            "ready": client.get("/v2/health/ready"),
            "live": client.get("/v2/health/live"),
            "server metadata": client.get("/v2"),
            "model metadata": client.get("/v2/models/mlp"),
            "metrics": client.get("/metrics"),
            "gzip inference": client.post(  # aiohttp's inference route
                "/v2/models/mlp/infer",
                content=gzip.compress(json.dumps(BODY).encode()),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            ),
        }
    codes = {what: r.status_code for what, r in answers.items()}
    assert codes == {
        "inference": 200, "inference, versioned": 200, "bad body": 400, "too large": 413,
        "no inputs": 400,
        "unknown model": 404, "unknown path": 404, "wrong method": 405, "ready": 200,
        "live": 200, "server metadata": 200, "model metadata": 200, "metrics": 200,
        "gzip inference": 200,
    }  # fmt: skip
    named = {what: r.headers.get(HEADER) for what, r in answers.items()}
    assert named == dict.fromkeys(answers, "r7")
    # A single process names no worker: the revision header comes alone.
    assert all("onnxship-worker" not in r.headers for r in answers.values())


def test_keep_alive_answers_after_a_hand_over_name_it_too(single: Server) -> None:
    # One connection: the fast path first, then aiohttp takes the connection over.
    conn = http.client.HTTPConnection("127.0.0.1", single.http_port, timeout=20)
    try:
        seen = []
        for method, path, body in [
            ("POST", "/v2/models/mlp/infer", json.dumps(BODY)),
            ("GET", "/v2/health/ready", None),
            ("POST", "/v2/models/mlp/infer", json.dumps(BODY)),
        ]:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            seen.append((resp.status, resp.getheader(HEADER)))
    finally:
        conn.close()
    assert seen == [(200, "r7")] * 3


def test_a_malformed_request_is_refused_with_the_revision(single: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", single.http_port, timeout=20)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        resp = http.client.HTTPResponse(conn.sock)
        resp.begin()
        assert (resp.status, resp.getheader(HEADER)) == (400, "r7")
    finally:
        conn.close()


def test_grpc_answers_carry_the_revision_in_initial_metadata(single: Server) -> None:
    with grpc.insecure_channel(single.grpc_addr) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )
        _, call = ready.with_call(None, timeout=20)
        assert (HEADER, "r7") in call.initial_metadata()
    with grpc.insecure_channel(single.grpc_addr) as channel:
        meta = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=lambda _: b"\n\x04nope",  # ModelMetadataRequest(name="nope")
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as error:
            meta.with_call(None, timeout=20)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert (HEADER, "r7") in error.value.initial_metadata()


def test_without_revision_no_answer_names_one(start_server: StartServer, model_dir: Path) -> None:
    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--workers", "1",
        "--threads", "1",
    )  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=20) as client:
        answers = [
            client.post("/v2/models/mlp/infer", json=BODY),
            client.post("/v2/models/nope/infer", json=BODY),
            client.get("/v2/health/ready"),
        ]
    assert [r.status_code for r in answers] == [200, 404, 200]
    assert all(HEADER not in r.headers for r in answers)
    with grpc.insecure_channel(server.grpc_addr) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )
        _, call = ready.with_call(None, timeout=20)
        assert HEADER not in dict(call.initial_metadata())


def test_every_worker_of_a_pod_names_the_revision(
    start_server: StartServer, model_dir: Path
) -> None:
    pod = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--workers", "2",
        "--threads", "1", "--revision", "r7",
    )  # fmt: skip
    answers = []
    for _ in range(24):  # a client per request: a connection each, spread over the workers
        with httpx.Client(base_url=pod.url, timeout=20) as client:
            answers.append(client.post("/v2/models/mlp/infer", json=BODY))
            answers.append(client.post("/v2/models/mlp/infer", content=b"{"))
            answers.append(client.get("/v2/health/ready"))
    assert {r.status_code for r in answers} == {200, 400}
    assert {r.headers.get(HEADER) for r in answers} == {"r7"}
    # Both workers answered (1 in 8 million runs would land all 24 connections on one).
    assert {r.headers.get("onnxship-worker") for r in answers} == {"0", "1"}


def test_the_llm_api_names_the_revision_streamed_or_not(
    start_server: StartServer, tiny_llm: Path
) -> None:
    server = start_server("--model", str(tiny_llm), "--name", "tiny", "--revision", "r7")
    messages = [{"role": "user", "content": "Hello"}]
    seen = {}
    for stream in (False, True):
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
        body = {"model": "tiny", "messages": messages, "max_tokens": 4, "temperature": 0,
                "stream": stream}  # fmt: skip
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        raw = resp.read().decode()
        conn.close()
        seen["streamed" if stream else "whole"] = (resp.status, resp.getheader(HEADER))
        if stream:
            assert raw.rstrip().endswith("data: [DONE]")
    with httpx.Client(base_url=server.url, timeout=20) as client:
        models = client.get("/v1/models")
        unknown = client.post("/v1/chat/completions", json={"model": "nope", "messages": messages})
    seen["models"] = (models.status_code, models.headers.get(HEADER))
    seen["unknown model"] = (unknown.status_code, unknown.headers.get(HEADER))
    assert seen == {
        "whole": (200, "r7"), "streamed": (200, "r7"), "models": (200, "r7"),
        "unknown model": (404, "r7"),
    }  # fmt: skip


def test_a_revision_that_cannot_be_a_header_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "serve", "--model", str(tmp_path / "m.onnx"), "--revision", "r7\r\nx: y"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert b"revision" in done.stdout + done.stderr
