"""Fixtures for the compression tests: models on disk with their sample inputs, and stores.

The moto S3 server fixture is shared with tests/store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onnxship.store import ArtifactStore, open_store
from tests.compress import models
from tests.helpers import models as base_models
from tests.store.conftest import s3_server  # noqa: F401  (fixture re-export)


@dataclass(frozen=True)
class ModelOnDisk:
    name: str
    path: Path
    samples: Path

    @property
    def uri(self) -> str:
        return self.path.as_uri()


def _write(tmp: Path, name: str, model, inputs: dict[str, np.ndarray]) -> ModelOnDisk:  # type: ignore[no-untyped-def]
    path = base_models.save(model, tmp / name / "model.onnx")
    samples = tmp / name / "samples.npz"
    np.savez(samples, **inputs)
    return ModelOnDisk(name, path, samples)


@pytest.fixture
def mlp(tmp_path: Path) -> ModelOnDisk:
    return _write(tmp_path, "mlp", base_models.mlp(), base_models.sample_inputs())


@pytest.fixture
def encoder(tmp_path: Path) -> ModelOnDisk:
    return _write(tmp_path, "encoder", models.encoder_block(), models.inputs_for("encoder"))


@pytest.fixture
def cnn(tmp_path: Path) -> ModelOnDisk:
    return _write(tmp_path, "cnn", models.cnn(), models.inputs_for("cnn"))


@pytest.fixture
def external(tmp_path: Path) -> ModelOnDisk:
    """The encoder block with its weights in weights.bin beside model.onnx."""
    path = models.save_external(models.encoder_block(), tmp_path / "ext" / "model.onnx")
    samples = tmp_path / "ext" / "samples.npz"
    np.savez(samples, **models.inputs_for("encoder"))
    return ModelOnDisk("external", path, samples)


@pytest.fixture
def file_store(tmp_path: Path) -> ArtifactStore:
    return open_store((tmp_path / "store").as_uri())
