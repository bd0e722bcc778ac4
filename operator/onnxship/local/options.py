"""The options of one `onnxship up` (its command line), shared by the driver's parts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    tick_seconds: float = 0.25
    watch: bool = True  # re-apply the source file when it changes
    serve_threads: int = 0  # 0 = the spec's serving.threads (0 = let the server pick)
