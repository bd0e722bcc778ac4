"""The tool versions in a cache key, read from package metadata (the operator does not import
onnx or onnxruntime): they must stay the strings the tools report, or every artifact already
in a store would miss and be compressed again."""

from __future__ import annotations

import onnx
import onnxruntime as ort

from onnxship.compress.versions import tool_versions


def test_tool_versions_are_the_versions_the_tools_report() -> None:
    assert tool_versions("CUDA") == {
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "optimizedFor": "CUDA",
    }
