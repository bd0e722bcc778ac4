"""Warm-up cannot kill a good server, and a model that cannot load exits 4 with ORT's words.

The model here is built like silero-vad's trouble spot: an If on a scalar sample rate whose
branches reflect-pad the audio by 128 or 256 frames. Zeros at 1 or 64 frames (what any server
can make up) fail in ONNX Runtime; real requests (16 kHz, 512 frames) are answered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto
from onnx import helper as oh

from onnxship.serve.signature import ModelSignature
from onnxship.serve.warmup import load_warmup_rows, made_up_feeds

from .conftest import StartServer
from .test_lifecycle import run_cli


def _branch(name: str, pad: int) -> onnx.GraphProto:
    pads = oh.make_tensor(f"{name}_p", TensorProto.INT64, [4], [0, pad, 0, pad])
    return oh.make_graph(
        [
            oh.make_node("Constant", [], [f"{name}_pads"], value=pads),
            oh.make_node("Pad", ["x", f"{name}_pads"], [f"{name}_padded"], mode="reflect"),
            oh.make_node("ReduceMean", [f"{name}_padded"], [f"{name}_y"], axes=[1], keepdims=1),
        ],
        name,
        [],
        [oh.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
    )


def picky_model() -> onnx.ModelProto:
    k = oh.make_tensor("k", TensorProto.INT64, [], [16000])
    graph = oh.make_graph(
        [
            oh.make_node("Constant", [], ["k"], value=k),
            oh.make_node("Equal", ["sr", "k"], ["is16k"]),
            oh.make_node(
                "If",
                ["is16k"],
                ["y"],
                then_branch=_branch("then", 256),
                else_branch=_branch("else", 128),
            ),
        ],
        "picky",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "frames"]),
            oh.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def picky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("picky")
    onnx.save(picky_model(), folder / "model.onnx")
    return folder


def _infer(server_addr: str, x: np.ndarray, sr: int) -> np.ndarray:
    client = httpclient.InferenceServerClient(server_addr)
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32"),
              httpclient.InferInput("sr", [], "INT64")]  # fmt: skip
    inputs[0].set_data_from_numpy(x, binary_data=False)
    inputs[1].set_data_from_numpy(np.array(sr, np.int64), binary_data=False)
    wanted = [httpclient.InferRequestedOutput("y", binary_data=False)]
    result = client.infer("picky", inputs, outputs=wanted)
    return result.as_numpy("y")


def _expected(model: Path, x: np.ndarray, sr: int) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "sr": np.array(sr, np.int64)})[0]


def _log_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_made_up_warmup_that_fails_is_a_warning_naming_the_inputs(
    start_server: StartServer, picky: Path
) -> None:
    server = start_server("--model", str(picky), "--name", "picky")
    x = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    answer = _infer(server.http_addr, x, 16000)
    assert np.allclose(answer, _expected(picky / "model.onnx", x, 16000), atol=1e-6)
    output = server.output()
    assert "Traceback" not in output
    warnings = [e for e in _log_lines(output) if e["level"] == "warning"]
    assert len(warnings) == 1, output
    message = str(warnings[0]["message"])
    assert "'x'" in message and "'sr'" in message
    assert "Pad" in message  # ONNX Runtime's own reason
    ready = next(e for e in _log_lines(output) if e["message"] == "model ready")
    assert ready["warmup"] == "made-up (failed)"


def test_warmup_npz_beside_the_model_is_used(
    start_server: StartServer, picky: Path, tmp_path: Path
) -> None:
    (tmp_path / "model.onnx").write_bytes((picky / "model.onnx").read_bytes())
    np.savez(tmp_path / "warmup.npz", x=np.ones((1, 600), np.float32), sr=np.array(16000))
    server = start_server("--model", str(tmp_path), "--name", "picky")
    entries = _log_lines(server.output())
    assert not [e for e in entries if e["level"] == "warning"], server.output()
    ready = next(e for e in entries if e["message"] == "model ready")
    assert ready["warmup"] == "warmup.npz (ok)"


def test_warmup_npz_that_does_not_fit_is_named_and_skipped(
    start_server: StartServer, picky: Path, tmp_path: Path
) -> None:
    (tmp_path / "model.onnx").write_bytes((picky / "model.onnx").read_bytes())
    # sr as int32: the model takes int64. Not ours to guess a cast: say so, go on made up.
    np.savez(tmp_path / "warmup.npz", x=np.ones((1, 600), np.float32),
             sr=np.array(16000, np.int32))  # fmt: skip
    server = start_server("--model", str(tmp_path), "--name", "picky")
    x = np.linspace(-1, 1, 1024, dtype=np.float32)[None]
    expected = _expected(picky / "model.onnx", x, 16000)
    assert np.allclose(_infer(server.http_addr, x, 16000), expected)
    warnings = [str(e["message"]) for e in _log_lines(server.output()) if e["level"] == "warning"]
    assert "warmup.npz does not fit the model: input 'sr': int32[]" in warnings[0]
    assert "int64" in warnings[0]


def test_a_model_ort_cannot_load_exits_4_with_its_message(tmp_path: Path) -> None:
    graph = oh.make_graph(
        [oh.make_node("NoSuchOperator", ["x"], ["y"])],
        "broken",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    result = run_cli("--model", str(tmp_path), "--http-port", "0", "--grpc-port", "-1")
    assert result.returncode == 4, result.stderr
    assert "cannot load the model" in result.stderr
    assert "NoSuchOperator" in result.stderr  # ONNX Runtime's message, as it said it
    assert "Traceback" not in result.stderr


def test_made_up_inputs_honour_fixed_dimensions_and_dtypes(tmp_path: Path) -> None:
    graph = oh.make_graph(
        [
            oh.make_node("Identity", ["image"], ["out"]),
            oh.make_node("Identity", ["state"], ["s"]),
            oh.make_node("Identity", ["sr"], ["r"]),
        ],
        "shapes",
        [
            oh.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 64, "width"]),
            oh.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 128]),
            oh.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            oh.make_tensor_value_info("out", TensorProto.FLOAT, None),
            oh.make_tensor_value_info("s", TensorProto.FLOAT, None),
            oh.make_tensor_value_info("r", TensorProto.INT64, None),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    feeds = made_up_feeds(ModelSignature.from_session(session), 64)
    assert {k: (v.shape, v.dtype) for k, v in feeds.items()} == {
        "image": ((1, 1, 64, 1), np.float32),
        "state": ((2, 1, 128), np.float32),
        "sr": ((), np.int64),
    }


def test_warmup_rows_are_untrusted_input(picky: Path, tmp_path: Path) -> None:
    session = ort.InferenceSession(str(picky / "model.onnx"), providers=["CPUExecutionProvider"])
    signature = ModelSignature.from_session(session)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object), sr=np.array(16000))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_warmup_rows(pickled, signature)
    # 80 MB of zeros compress to under 1 MB: refused before numpy inflates them.
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.zeros((1, 20_000_000), np.float32), sr=np.array(16000))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="inflates to"):
        load_warmup_rows(bomb, signature)
    missing = tmp_path / "missing.npz"
    np.savez(missing, x=np.ones((1, 600), np.float32))
    with pytest.raises(ValueError, match="no array for input 'sr'"):
        load_warmup_rows(missing, signature)
