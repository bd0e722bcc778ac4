"""Echo models (one per OIP datatype) and data planes loaded over them, once per module."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import helper

from onnxship.serve.config import ServeConfig
from onnxship.serve.dataplane import DataPlane
from tests.controller.conftest import cluster, operator  # noqa: F401  (fixtures)
from tests.helpers.models import OPSET
from tests.serve.models import DTYPES
from tests.store.conftest import s3_server  # noqa: F401  (fixture: moto on 127.0.0.1)


def echo(elem: int) -> onnx.ModelProto:
    """``x: <elem> [batch, 3] -> y = x``."""
    x = helper.make_tensor_value_info("x", elem, ["batch", 3])
    y = helper.make_tensor_value_info("y", elem, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def echo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("echo-models")
    paths = {}
    for name, elem in DTYPES.items():
        paths[name] = folder / f"echo_{name}.onnx"
        onnx.save(echo(elem), paths[name])
    return paths


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a whole module: hypothesis examples are sync functions."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def planes(
    echo_models: dict[str, Path], loop: asyncio.AbstractEventLoop
) -> Iterator[dict[str, DataPlane]]:
    """A loaded data plane per datatype, named ``echo_<DT>``, with dynamic batching on."""
    planes = {}
    for dt, path in echo_models.items():
        config = ServeConfig(
            model_path=path, name=f"echo_{dt}", max_batch_size=4, max_batch_delay_ms=0.5,
            threads=1, max_body_bytes=1 << 20,
        )  # fmt: skip
        planes[dt] = DataPlane(config)
        loop.run_until_complete(planes[dt].load())
    yield planes
    for dp in planes.values():
        loop.run_until_complete(dp.close())
