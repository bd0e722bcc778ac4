"""Serving causal LMs (ONNX Runtime GenAI folders): generation on the same port as the OIP.

Layers, as for the other models: ``runtime`` (the graph and its KV cache over ONNX Runtime),
``engine`` (the iteration-level scheduler on its own thread), ``service`` (tokenizer, chat
template, admission), ``protocol`` (OpenAI and the OIP generate extension: requests, answers
and errors as plain dicts) and ``http`` (aiohttp routes, server-sent events). Importing this
package costs nothing: the heavy modules load only when a causal LM is served.
"""

from __future__ import annotations

from pathlib import Path

GENAI_CONFIG = "genai_config.json"


def causal_lm_folder(path: Path) -> Path | None:
    """The folder, when ``path`` (a model file or folder) is an ONNX Runtime GenAI folder."""
    folder = path if path.is_dir() else path.parent
    return folder if (folder / GENAI_CONFIG).is_file() else None
