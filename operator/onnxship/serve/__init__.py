"""`onnxship serve`: an Open Inference Protocol (KServe v2) server over ONNX Runtime.

``run(ServeConfig(...))`` serves until SIGTERM; the CLI command is the usual way in.
Nothing runs at import time.
"""

from __future__ import annotations

from .config import ServeConfig
from .errors import StartupError
from .server import run, serve

__all__ = ["ServeConfig", "StartupError", "run", "serve"]
