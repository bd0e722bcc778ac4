from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
COMMITTED_CRD = ROOT / "crds" / "modeldeployments.onnxship.io.yaml"


@pytest.fixture(scope="session")
def committed_crd() -> dict[str, Any]:
    return yaml.safe_load(COMMITTED_CRD.read_text())


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())
