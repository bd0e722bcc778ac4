"""onnxship: compress, verify, store and canary ONNX models on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxship")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
