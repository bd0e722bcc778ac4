"""A causal-LM model folder (ONNX Runtime GenAI's layout), treated as untrusted input.

What makes a model a causal LM (``kind: causal-lm``), unless ``spec.model.kind`` says otherwise:
- the model is a folder (a local folder, or an s3:// prefix): a folder is a GenAI folder;
- or its graph has a decoder's signature: ``past*`` inputs, ``present*`` outputs and ``logits``
  (then the folder around the graph is the model).
A GenAI folder must hold ``genai_config.json``; its graph is the one the config's
``model.decoder.filename`` names (``model.onnx`` when the config is missing, for the message).

The folder's digest (``spec.model.sha256`` may pin it, or the main graph alone) is the SHA-256 of
``sha256sum``'s output over every file, names sorted bytewise, paths relative to the folder:
``cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import onnx

from onnxship.compress.errors import InvalidModelError
from onnxship.compress.validate import MAX_MODEL_BYTES, ModelInfo, load_graph, validate_model

GENAI_CONFIG = "genai_config.json"
DEFAULT_GRAPH = "model.onnx"
TOKENIZER_JSON = "tokenizer.json"
# Tokenizer files ONNX Runtime GenAI reads: Hugging Face's tokenizer.json, or a SentencePiece model.
TOKENIZERS = (TOKENIZER_JSON, "tokenizer.model")
MAX_FILES = 1000
# A model may have more embedding rows than its tokenizer has tokens (rows padded to a multiple
# of 64 or 128: Phi-3 32,011 tokens for 32,064 rows, Qwen2 151,665 for 151,936). More spare
# rows than this means the tokenizer is another model's.
SPARE_ROWS = 1024


def is_decoder_signature(inputs: Iterable[str], outputs: Iterable[str]) -> bool:
    """past_key_values (or past.*) in, logits and present.* out: a decoder with a KV cache."""
    outs = list(outputs)
    return (
        any(name.startswith("past") for name in inputs)
        and "logits" in outs
        and any(name.startswith("present") for name in outs)
    )


def graph_is_decoder(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    return is_decoder_signature(
        (i.name for i in model.graph.input if i.name not in inits),
        (o.name for o in model.graph.output),
    )


def folder_digest(digests: Mapping[str, str]) -> str:
    """SHA-256 of the ``sha256sum`` lines (``<hex>  <name>``) of every file, names sorted."""
    lines = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests, key=_bytewise))
    return hashlib.sha256(lines.encode()).hexdigest()


def _bytewise(name: str) -> bytes:
    return name.encode()


def safe_name(name: str, where: str) -> PurePosixPath:
    """A file name from untrusted input as a relative path that stays inside the folder."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if (
        not name
        or "\0" in name
        or name.startswith("~")
        or rel.is_absolute()
        or ".." in rel.parts
        or "\\" in name
    ):
        raise InvalidModelError(
            f"{where}: {name!r} is not a relative path inside the model's folder "
            "(no '..', no absolute paths)"
        )
    return rel


def list_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` (relative POSIX names, sorted); symbolic links that
    leave the folder, and folders with too many files or bytes, are refused."""
    real = folder.resolve()
    names: list[str] = []
    total = 0
    for path in _walk(folder):
        name = path.relative_to(folder).as_posix()
        if not path.resolve().is_relative_to(real):
            raise InvalidModelError(
                f"{folder}/{name}: a symbolic link that leaves the model's folder"
            )
        if not path.is_file():
            continue
        names.append(name)
        total += path.stat().st_size
        if len(names) > MAX_FILES:
            raise InvalidModelError(
                f"{folder}: more than {MAX_FILES} files; is this a model folder?"
            )
    if total > MAX_MODEL_BYTES:
        raise InvalidModelError(f"{folder}: {total} bytes in all, over the limit")
    if not names:
        raise InvalidModelError(f"{folder}: the folder is empty")
    return sorted(names, key=_bytewise)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root)
        for d in list(dirs):
            if (base / d).is_symlink():
                dirs.remove(d)  # checked as an entry below, never entered
                yield base / d
        for f in files:
            yield base / f


def declared_graph(folder: Path) -> str:
    """The graph genai_config.json names, or model.onnx; never raises (checks come later)."""
    try:
        config = json.loads((folder / GENAI_CONFIG).read_text())
        name = config["model"]["decoder"]["filename"]
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return DEFAULT_GRAPH


@dataclass(frozen=True)
class LlmFolder:
    """A checked causal-LM folder."""

    path: Path
    graph: str  # the decoder's file, relative to path
    info: ModelInfo  # of the decoder graph
    files: list[str]  # every file, relative, sorted
    graphs: list[str]  # every graph genai_config names (the decoder first)
    vocab: int  # rows of the model's embedding / logits
    config: dict[str, Any] = field(default_factory=dict)
    total_bytes: int = 0

    @property
    def graph_path(self) -> Path:
        return self.path / self.graph

    def graph_data(self) -> set[str]:
        """The decoder graph and its external-data files: what a quantizer rewrites."""
        return {self.graph, *self.info.external_files}


def check_folder(folder: Path, info: ModelInfo | None = None) -> LlmFolder:
    """Check an untrusted GenAI folder; raise InvalidModelError naming the file at fault.

    ``info``: the decoder graph's ModelInfo when it was validated already.
    """
    files = list_files(folder)
    configs = {name: _read_json(folder, name) for name in files if name.endswith(".json")}
    if GENAI_CONFIG not in configs:
        raise InvalidModelError(
            f"{folder / GENAI_CONFIG}: missing. A causal-LM folder (a folder, or a graph with "
            "past_key_values/present and logits) is loaded by ONNX Runtime GenAI, which needs "
            "genai_config.json beside the graph (its model builder writes it); add it, or set "
            "spec.model.kind: onnx (--kind onnx) to treat the graph as a plain ONNX model"
        )
    config = configs[GENAI_CONFIG]
    where = str(folder / GENAI_CONFIG)
    decoder = _dig(config, ("model", "decoder"), where)
    graph = decoder.get("filename")
    if not isinstance(graph, str) or not graph:
        raise InvalidModelError(f"{where}: model.decoder.filename is missing or not a file name")
    graphs = [graph] + [g for g in _filenames(config.get("model", {})) if g != graph]
    for name in graphs:
        safe_name(name, where)
        if not (folder / name).is_file():
            raise InvalidModelError(
                f"{where}: names the graph {name!r}, which is not in the folder "
                f"({', '.join(f for f in files if f.endswith('.onnx')) or 'no .onnx file'})"
            )
    if info is None or info.path.resolve() != (folder / graph).resolve():
        info = validate_model(folder / graph, onnx_checker=False)
    for name in graphs[1:]:
        validate_model(folder / name, onnx_checker=False)
    inputs = [t.name for t in info.inputs]
    outputs = [t.name for t in info.outputs]
    if not is_decoder_signature(inputs, outputs):
        raise InvalidModelError(
            f"{folder / graph}: genai_config.json's decoder has no decoder signature (needs "
            "past_key_values.* inputs, logits and present.* outputs; it has inputs "
            f"{', '.join(inputs)[:200]} and outputs {', '.join(outputs)[:200]})"
        )
    vocab = model_vocab(folder / graph, info)
    _check_tokenizer(folder, files, configs, config, vocab, graph)
    total = sum((folder / name).stat().st_size for name in files)
    return LlmFolder(folder, graph, info, files, graphs, vocab, config, total)


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidModelError(f"{path}: not UTF-8 text, so not JSON") from None
    except json.JSONDecodeError as exc:
        raise InvalidModelError(
            f"{path}: malformed JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix or replace the file"
        ) from None


def _dig(config: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    node = config
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            raise InvalidModelError(f"{where}: no {'.'.join(keys[: i + 1])} section")
        node = node[key]
    return node  # type: ignore[no-any-return]


def _filenames(node: Any) -> Iterator[str]:
    """Every ``filename`` value under a genai_config section (decoder, embedding, vision...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str) and value.endswith(".onnx"):
                yield value
            else:
                yield from _filenames(value)
    elif isinstance(node, list):
        for item in node:
            yield from _filenames(item)


def model_vocab(graph_path: Path, info: ModelInfo) -> int:
    """Rows of the vocabulary: the logits' last dimension, else the lm_head weight's."""
    logits = next(t for t in info.outputs if t.name == "logits")
    last = logits.shape[-1] if logits.shape else None
    if isinstance(last, int) and last > 0:
        return last
    model = load_graph(graph_path)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if "logits" in node.output and node.op_type == "MatMul" and node.input[1] in inits:
            return int(inits[node.input[1]].dims[-1])
        if "logits" in node.output and node.op_type == "MatMulNBits":
            n = next((a.i for a in node.attribute if a.name == "N"), 0)
            if n > 0:
                return int(n)
    raise InvalidModelError(
        f"{graph_path}: cannot tell the vocabulary size (logits has no fixed last dimension and "
        "no MatMul with a constant weight produces it)"
    )


def tokenizer_size(tokenizer: Any, where: str) -> int:
    """Highest token id + 1 in a tokenizer.json: its model's vocabulary and its added tokens."""
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise InvalidModelError(f"{where}: no 'model' section: not a Hugging Face tokenizer.json")
    vocab = tokenizer["model"].get("vocab")
    ids: list[int] = []
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        ids = [v for v in vocab.values() if isinstance(v, int)]
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], ids are positions
        ids = [len(vocab) - 1] if vocab else []
    for token in tokenizer.get("added_tokens") or []:
        if isinstance(token, dict) and isinstance(token.get("id"), int):
            ids.append(token["id"])
    if not ids:
        raise InvalidModelError(f"{where}: the tokenizer has no vocabulary")
    return max(ids) + 1


def _check_tokenizer(
    folder: Path,
    files: list[str],
    configs: dict[str, Any],
    config: dict[str, Any],
    vocab: int,
    graph: str,
) -> None:
    if not any(name in files for name in TOKENIZERS):
        raise InvalidModelError(
            f"{folder / TOKENIZER_JSON}: missing: ONNX Runtime GenAI reads the tokenizer from "
            f"{' or '.join(TOKENIZERS)} beside the graph; copy the model's tokenizer files in"
        )
    where = str(folder / GENAI_CONFIG)
    model = config.get("model", {})
    declared = model.get("vocab_size")
    if isinstance(declared, int) and declared != vocab:
        raise InvalidModelError(
            f"{where}: model.vocab_size is {declared}, but {graph}'s logits have {vocab} entries: "
            "the config belongs to another model"
        )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        values = model.get(key)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, int) and not 0 <= value < vocab:
                raise InvalidModelError(
                    f"{where}: model.{key} {value} is outside the vocabulary (0 to {vocab - 1})"
                )
    if TOKENIZER_JSON not in configs:
        return
    size = tokenizer_size(configs[TOKENIZER_JSON], str(folder / TOKENIZER_JSON))
    if size > vocab or vocab - size > SPARE_ROWS:
        raise InvalidModelError(
            f"{folder / TOKENIZER_JSON}: the tokenizer's ids go up to {size - 1} ({size} tokens "
            f"with its added tokens), but {graph} has {vocab} vocabulary rows (logits): the "
            "tokenizer belongs to another model; copy this model's own tokenizer files"
        )
