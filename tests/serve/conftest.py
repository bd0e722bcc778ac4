"""Fixtures that start real `onnxship serve` processes on free ports, once per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import models as helper_models

from . import models
from .server import Server, free_port, start

StartServer = Callable[..., Server]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve-models")
    helper_models.save(helper_models.mlp(), folder / "mlp.onnx")
    helper_models.save(models.echo_all_dtypes(), folder / "echo.onnx")
    helper_models.save(models.tokens(), folder / "tokens.onnx")
    helper_models.save(models.fixed_shape(), folder / "fixed.onnx")
    helper_models.save(models.lookup(), folder / "lookup.onnx")
    helper_models.save(models.add_three(), folder / "add3.onnx")
    return folder


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """``start_server(*cli_args, wait_ready=True) -> Server``; all are stopped at module end."""
    started: list[Server] = []
    logs = tmp_path_factory.mktemp("serve-logs")

    def _start(*args: str, wait_ready: bool = True) -> Server:
        log = logs / f"server-{len(started)}.log"
        server = start(list(args), free_port(), free_port(), log, wait_ready=wait_ready)
        started.append(server)
        return server

    yield _start
    for server in started:
        if server.proc.poll() is None:
            server.terminate()
