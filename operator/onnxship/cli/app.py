"""The typer application every command module registers on, and shared CLI helpers."""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console

app = typer.Typer(
    name="onnxship",
    help="Compress, verify, store and canary ONNX models, on Kubernetes or on one machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# soft_wrap: file paths and field paths in messages must stay on one line for grep and CI logs.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class ExitCode(IntEnum):
    """Distinct exit codes, so scripts and Jobs can tell what went wrong."""

    ok = 0
    failure = 1  # unexpected
    usage = 2  # typer/click usage errors
    invalid_spec = 3  # a ModelDeployment or settings file is wrong
    invalid_model = 4  # the model file is malformed, unsafe or unsupported
    accuracy_gate = 5  # compression worked but the result answers too differently
    store_error = 6  # the artifact store failed or holds corrupt data
    source_error = 7  # the source model or sample inputs could not be fetched
    not_found = 8  # a named deployment, revision or artifact does not exist
    conflict = 9  # the request does not fit the current state (e.g. promote with no canary)


def fail(message: str, code: ExitCode) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(int(code))


def load_yaml_file(path: Path) -> Any:
    """A YAML document from ``path``; a missing or unreadable file is the user's to fix."""
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"{path}: cannot read ({exc.strerror})", ExitCode.invalid_spec)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        fail(f"{path}: not valid YAML: {exc}", ExitCode.invalid_spec)
