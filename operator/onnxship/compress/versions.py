"""The tool versions that go into a cache key, read without importing the tools.

The operator computes cache keys for its store lookups; importing onnx and onnxruntime only to
read ``__version__`` cost its process about 40 MB (issue 21). The installed distributions'
metadata gives the same strings.
"""

from __future__ import annotations

import importlib
import threading
from functools import cache
from importlib import metadata

_lock = threading.Lock()


def tool_versions(execution_provider: str) -> dict[str, str]:
    """What produces the compressed bytes, for the cache key.

    The execution provider is here because the optimizer fuses for the provider it targets.
    """
    return {
        "onnx": installed_version("onnx"),
        "onnxruntime": installed_version("onnxruntime"),
        "optimizedFor": execution_provider,
    }


def installed_version(package: str) -> str:
    """``package.__version__`` as its distribution records it (onnxruntime may come from
    onnxruntime-gpu, -directml...); imports the package only when no distribution names it.

    Once per process, and one thread at a time: the operator's first passes ask from 16
    threads at once, and each scan of every installed distribution's files took seconds
    (42% of the operator's CPU in its first 45 s with 300 ModelDeployments, py-spy).
    """
    with _lock:
        return _installed_version(package)


@cache
def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)  # the distribution named after the package
    except metadata.PackageNotFoundError:
        pass
    for dist in metadata.packages_distributions().get(package, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return str(importlib.import_module(package).__version__)
