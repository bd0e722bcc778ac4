"""The compression pipeline: fetch, validate, optimize, prune, quantize, check, publish.

Call ``compress(source_uri, compression, store, sample_inputs=..., execution_provider=...,
expected_sha256=..., progress=...)``; it returns a ``CompressionOutcome`` with ``.manifest``
(the ArtifactManifest in the store) and ``.cache_hit``. Failures raise ``InvalidModelError``,
``SourceError``, ``InvalidSettingsError``, ``AccuracyGateError`` or ``StoreError``; nothing is
published when any is raised.
"""

from __future__ import annotations

from .errors import (
    AccuracyGateError,
    CompressError,
    InvalidModelError,
    InvalidSettingsError,
    SourceError,
    StoreError,
)
from .pipeline import CompressionOutcome, compress, tool_versions
from .source import SourceAccess
from .validate import ModelInfo, validate_model

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
