"""Models are untrusted input: each bad file is refused with a message naming it, and nothing
is published. External-data models go through every step."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxship.api import Compression
from onnxship.compress import InvalidModelError, SourceError, compress
from onnxship.store import ArtifactStore
from tests.compress import models
from tests.compress.conftest import ModelOnDisk
from tests.helpers import models as base_models


def refused(path: Path, store: ArtifactStore, match: str) -> InvalidModelError:
    with pytest.raises(InvalidModelError, match=match) as err:
        compress(path.as_uri(), Compression(), store)
    assert str(path) in str(err.value)  # the message names the file
    assert store.list_manifests() == []
    return err.value


def test_a_file_that_is_not_onnx(tmp_path: Path, file_store: ArtifactStore) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("<html>404 Not Found</html>")
    refused(path, file_store, "not an ONNX model")


def test_a_truncated_model(mlp: ModelOnDisk, file_store: ArtifactStore) -> None:
    data = mlp.path.read_bytes()
    mlp.path.write_bytes(data[: len(data) // 3])
    refused(mlp.path, file_store, "truncated")


def test_an_empty_file(tmp_path: Path, file_store: ArtifactStore) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    refused(path, file_store, "empty")


def test_an_opset_newer_than_supported(tmp_path: Path, file_store: ArtifactStore) -> None:
    model = base_models.mlp()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    path = base_models.save(model, tmp_path / "m" / "model.onnx")
    refused(path, file_store, r"opset ai.onnx \d+ is newer")


def test_an_unknown_operator_domain(tmp_path: Path, file_store: ArtifactStore) -> None:
    model = base_models.mlp()
    model.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    path = base_models.save(model, tmp_path / "m" / "model.onnx")
    refused(path, file_store, "unknown operator domain 'com.example.custom'")


def test_a_model_with_no_inputs(tmp_path: Path, file_store: ArtifactStore) -> None:
    const = helper.make_node(
        "Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1.0, 2.0])
    )
    graph = helper.make_graph(
        [const], "noinput", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = base_models.save(model, tmp_path / "m" / "model.onnx")
    refused(path, file_store, "no inputs")


def test_a_graph_the_checker_refuses(tmp_path: Path, file_store: ArtifactStore) -> None:
    model = base_models.mlp()
    model.graph.node[0].input[1] = "does_not_exist"
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(model.SerializeToString())
    refused(path, file_store, "checker refused")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_that_leaves_the_folder(
    external: ModelOnDisk, file_store: ArtifactStore, location: str
) -> None:
    (external.path.parent.parent / "outside.bin").write_bytes(b"\0" * 100_000)
    models.set_external_location(external.path, location)
    refused(external.path, file_store, "relative path inside the model's folder")


def test_external_data_behind_a_symlink_that_leaves_the_folder(
    external: ModelOnDisk, file_store: ArtifactStore
) -> None:
    data = external.path.parent / "weights.bin"
    outside = external.path.parent.parent / "elsewhere.bin"
    os.replace(data, outside)
    data.symlink_to(outside)
    refused(external.path, file_store, "leaves the model's folder")


def test_external_data_declared_beyond_the_end_of_its_file(
    external: ModelOnDisk, file_store: ArtifactStore
) -> None:
    data = external.path.parent / "weights.bin"
    with data.open("r+b") as f:
        f.truncate(data.stat().st_size - 4096)
    refused(external.path, file_store, r"has only \d+ bytes")


def test_missing_external_data_file(external: ModelOnDisk, file_store: ArtifactStore) -> None:
    (external.path.parent / "weights.bin").unlink()
    refused(external.path, file_store, "missing beside the model")


@pytest.mark.parametrize(
    "spec",
    [
        {"quantize": {"mode": "dynamic"}},
        {"quantize": {"mode": "static"}},
        {"quantize": {"mode": "fp16"}},
        {"prune": {"sparsity": 0.3}, "quantize": {"mode": "dynamic"}, "accuracyGate": {"min": 0.9}},
    ],
    ids=["dynamic", "static", "fp16", "prune+dynamic"],
)
def test_a_model_with_external_data_goes_through_every_step(
    external: ModelOnDisk, file_store: ArtifactStore, tmp_path: Path, spec: dict[str, object]
) -> None:
    outcome = compress(
        external.uri,
        Compression.model_validate(spec),
        file_store,
        sample_inputs=str(external.samples),
    )
    m = outcome.manifest
    assert (
        m.report.original_bytes
        == sum(p.stat().st_size for p in external.path.parent.glob("*.onnx"))
        + (external.path.parent / "weights.bin").stat().st_size
    )
    model_file = file_store.fetch(m, tmp_path / "serve")
    sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    with np.load(external.samples) as z:
        y = sess.run(None, {"x": z["x"]})[0]
    assert y.shape == (16, 8, 64) and np.isfinite(y).all()


def test_the_external_data_file_is_part_of_the_source_digest(
    external: ModelOnDisk, file_store: ArtifactStore
) -> None:
    first = compress(external.uri, Compression(), file_store)
    # Same .onnx file, different weights: must not be a cache hit.
    data = external.path.parent / "weights.bin"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    second = compress(external.uri, Compression(), file_store)
    assert not second.cache_hit and second.manifest.cache_key != first.manifest.cache_key


def test_a_missing_source_is_a_source_error(tmp_path: Path, file_store: ArtifactStore) -> None:
    with pytest.raises(SourceError, match="no such file"):
        compress((tmp_path / "nope.onnx").as_uri(), Compression(), file_store)
