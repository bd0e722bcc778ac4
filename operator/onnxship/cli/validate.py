"""`onnxship validate`: check ModelDeployment files before they reach a cluster."""

from __future__ import annotations

from pathlib import Path

import typer

from onnxship.api import SpecError, parse_model_deployment

from .app import ExitCode, app, console, load_yaml_file


@app.command("validate")
def validate_command(
    files: list[Path] = typer.Argument(..., help="ModelDeployment YAML files."),
) -> None:
    """Validate ModelDeployment files; each problem names its field."""
    bad = 0
    for path in files:
        try:
            md = parse_model_deployment(load_yaml_file(path), source=str(path))
        except SpecError as exc:
            bad += 1
            console.print(f"[red]✗[/] {exc}", highlight=False)
            continue
        envs = ", ".join(e.name for e in md.spec.serving.effective_environments())
        console.print(
            f"[green]✓[/] {path}: {md.metadata.name} (environments: {envs})", highlight=False
        )
    if bad:
        raise typer.Exit(int(ExitCode.invalid_spec))
