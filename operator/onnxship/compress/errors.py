"""Why a compression did not publish anything, as types the CLI maps to exit codes.

Every message names the file or field at fault and says what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxship.store import StoreError

if TYPE_CHECKING:
    from onnxship.api import AccuracyReport, CompressionReport


class CompressError(Exception):
    """Base of the errors below."""


class InvalidModelError(CompressError):
    """The model file is not ONNX, is truncated, unsafe (external data leaving its folder) or
    unsupported (unknown opset, no inputs)."""


class SourceError(CompressError):
    """The source model or the sample inputs could not be fetched, or failed their sha256 pin."""


class InvalidSettingsError(CompressError):
    """The compression settings cannot apply to this model (e.g. static quantization of a model
    with no float inputs to calibrate)."""


class AccuracyGateError(CompressError):
    """The compressed model answers too differently from the original; nothing was published."""

    def __init__(
        self, message: str, report: AccuracyReport, summary: CompressionReport | None = None
    ) -> None:
        super().__init__(message)
        self.report = report
        # sizes, steps and every candidate measured: what the user weighs against the gate
        self.summary = summary


__all__ = [
    "AccuracyGateError",
    "CompressError",
    "InvalidModelError",
    "InvalidSettingsError",
    "SourceError",
    "StoreError",
]
