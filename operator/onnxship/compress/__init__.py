"""The compression pipeline: fetch, validate, optimize, prune, quantize, check, publish.

Call ``compress(source_uri, compression, store, sample_inputs=..., execution_provider=...,
expected_sha256=..., progress=...)``; it returns a ``CompressionOutcome`` with ``.manifest``
(the ArtifactManifest in the store) and ``.cache_hit``. Failures raise ``InvalidModelError``,
``SourceError``, ``InvalidSettingsError``, ``AccuracyGateError`` or ``StoreError``; nothing is
published when any is raised.

The names below load on first use (PEP 562): the operator imports ``compress.result`` and
``compress.versions`` for its store lookups, and must not pay for onnx, onnxruntime and numpy
that the pipeline imports (about 40 MB a process, issue 21).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import (
        AccuracyGateError,
        CompressError,
        InvalidModelError,
        InvalidSettingsError,
        SourceError,
        StoreError,
    )
    from .pipeline import CompressionOutcome, compress
    from .source import SourceAccess
    from .validate import ModelInfo, validate_model
    from .versions import tool_versions

# name -> the submodule that defines it
_HOMES = {
    "AccuracyGateError": "errors",
    "CompressError": "errors",
    "InvalidModelError": "errors",
    "InvalidSettingsError": "errors",
    "SourceError": "errors",
    "StoreError": "errors",
    "CompressionOutcome": "pipeline",
    "compress": "pipeline",
    "SourceAccess": "source",
    "ModelInfo": "validate",
    "validate_model": "validate",
    "tool_versions": "versions",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{home}", __name__), name)


__all__ = [
    "AccuracyGateError",
    "CompressError",
    "CompressionOutcome",
    "InvalidModelError",
    "InvalidSettingsError",
    "ModelInfo",
    "SourceAccess",
    "SourceError",
    "StoreError",
    "compress",
    "tool_versions",
    "validate_model",
]
