"""Dynamic batching and the bounded queue, through the real server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from .conftest import StartServer
from .server import Server


def metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def token_request(ids: list[int]) -> dict[str, object]:
    n = len(ids)
    mask = [1] * (n - 1) + [0]  # the last token is padding the client already had
    return {
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, n], "data": ids},
            {"name": "attention_mask", "datatype": "INT64", "shape": [1, n], "data": mask},
        ]
    }


async def post_all(url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=20) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def test_concurrent_requests_of_different_lengths_share_batches(
    start_server: StartServer, model_dir: Path
) -> None:
    server = start_server(
        "--model", str(model_dir / "tokens.onnx"), "--name", "tok",
        "--max-batch-size", "16", "--max-batch-delay-ms", "100",
    )  # fmt: skip
    lengths = [1, 2, 3, 4, 5, 6, 7, 8, 3, 3, 9, 2]
    bodies = [token_request(list(range(10, 10 + n))) for n in lengths]
    responses = asyncio.run(post_all(f"{server.url}/v2/models/tok/infer", bodies))
    for n, r in zip(lengths, responses, strict=True):
        assert r.status_code == 200, r.text
        masked, length = r.json()["outputs"]
        ids = list(range(10, 10 + n))
        # Padded to the longest in its batch, then cropped back: each client sees its own length.
        assert masked["shape"] == [1, n]
        assert masked["data"] == [*ids[:-1], 0]
        assert length["data"] == [n - 1]
    rows = metric(server, "onnxship_inference_batch_size_sum")
    runs = metric(server, "onnxship_inference_batch_size_count")
    assert rows == len(lengths)  # the warm-up runs on the session directly, not counted
    assert runs < len(lengths), "requests were not batched"


def test_batched_results_match_unbatched(start_server: StartServer, model_dir: Path) -> None:
    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp",
        "--max-batch-size", "8", "--max-batch-delay-ms", "50",
    )  # fmt: skip
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 3, 32)).astype(np.float32) for i in range(10)]
    bodies = [
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
        for x in xs
    ]
    responses = asyncio.run(post_all(f"{server.url}/v2/models/mlp/infer", bodies))
    session = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [x.shape[0], 16]
        want = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(
            np.array(out["data"], np.float32).reshape(want.shape), want, rtol=1e-5, atol=1e-6
        )
    assert metric(server, "onnxship_inference_batch_size_count") < len(xs)


def test_model_without_batch_dimension_is_served_unbatched(
    start_server: StartServer, model_dir: Path
) -> None:
    server = start_server(
        "--model", str(model_dir / "fixed.onnx"), "--name", "fixed", "--max-batch-size", "8"
    )
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    responses = asyncio.run(post_all(f"{server.url}/v2/models/fixed/infer", [body] * 4))
    assert all(r.json()["outputs"][0]["data"] == [2, 4, 6, 8] for r in responses)
    assert "batching is off" in server.output()


def test_over_the_queue_limit_answers_503_at_once(
    start_server: StartServer, model_dir: Path
) -> None:
    # A long batch delay holds admitted requests in the queue, so the limit is reached for sure.
    # One worker: the limit is each worker process's own queue.
    server = start_server(
        "--model", str(model_dir / "mlp.onnx"), "--name", "mlp", "--workers", "1",
        "--max-batch-size", "64", "--max-batch-delay-ms", "1500", "--max-queue-size", "4",
    )  # fmt: skip
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.1] * 32}]}

    async def timed_post(client: httpx.AsyncClient, delay: float) -> tuple[httpx.Response, float]:
        await asyncio.sleep(delay)
        start = time.monotonic()
        r = await client.post(f"{server.url}/v2/models/mlp/infer", json=body)
        return r, time.monotonic() - start

    async def run() -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=20) as client:
            # The first four are admitted before the rest arrive.
            refused = asyncio.create_task(not_even_read(client))
            answers = await asyncio.gather(
                *(timed_post(client, 0 if i < 4 else 0.3) for i in range(12))
            )
            assert (await refused).status_code == 503
            return answers

    async def not_even_read(client: httpx.AsyncClient) -> httpx.Response:
        # A full queue refuses before the body is read: a broken one gets the 503 too.
        await asyncio.sleep(0.3)
        return await client.post(f"{server.url}/v2/models/mlp/infer", content=b"{not json")

    results = asyncio.run(run())
    codes = sorted(r.status_code for r, _ in results)
    assert codes == [200] * 4 + [503] * 8
    for r, seconds in results:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"
            assert "capacity" in r.json()["error"]
            assert seconds < 1.0, "a refused request must not wait for the queue"
    assert httpx.post(f"{server.url}/v2/models/mlp/infer", json=body, timeout=20).status_code == 200
    assert (
        metric(server, 'onnxship_inference_requests_total{code="503",model="mlp",version="1"}') == 9
    )  # the 8, and the broken one refused unread
