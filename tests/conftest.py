"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import models
from tests.helpers import tiny_llm as tiny_llm_builder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function that returns a free TCP port on 127.0.0.1 each time it is called."""
    return _free_port


@pytest.fixture
def mlp_model(tmp_path: Path) -> Path:
    """A small float32 MLP saved as model.onnx in a temporary folder."""
    return models.save(models.mlp(), tmp_path / "src" / "model.onnx")


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX Runtime GenAI decoder folder (tests/helpers/tiny_llm.py), built once per
    session and shared: copy it before changing or damaging any of its files."""
    return tiny_llm_builder.build_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))
