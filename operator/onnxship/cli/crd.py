"""`onnxship crd`: print the generated CustomResourceDefinition."""

from __future__ import annotations

from onnxship.api.crd import crd_yaml

from .app import app


@app.command("crd")
def crd_command() -> None:
    """Print the ModelDeployment CRD (YAML), generated from the API models."""
    print(crd_yaml(), end="")
