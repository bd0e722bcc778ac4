"""Entry point of the `onnxship` console script.

Each command lives in its own module and registers itself on ``app``; importing them here is
the only wiring. Nothing else runs at import time.
"""

from __future__ import annotations

import logging

import typer

from onnxship import __version__
from onnxship.logs import configure_logging

from . import crd, run_operator, validate  # noqa: F401  (command registration)
from .app import app
from .compress import compress_command  # noqa: F401  (command registration: onnxship compress)
from .local_commands import status_command  # noqa: F401  (status, promote, abort, apply, ...)
from .route import route_command  # noqa: F401  (command registration: onnxship route)
from .serve import serve_command  # noqa: F401  (command registration: onnxship serve)
from .up import up_command  # noqa: F401  (command registration: onnxship up)


@app.callback()
def _root(
    log_level: str = typer.Option("INFO", "--log-level", envvar="ONNXSHIP_LOG_LEVEL"),
    log_format: str = typer.Option(
        "auto", "--log-format", envvar="ONNXSHIP_LOG_FORMAT", help="auto | json | text"
    ),
) -> None:
    configure_logging(log_level, log_format)
    logging.getLogger("onnxship").debug("onnxship %s", __version__)


@app.command("version")
def version_command() -> None:
    """Print the onnxship version."""
    print(__version__)


def main() -> None:
    app()
