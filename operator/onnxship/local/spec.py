"""Reading a ModelDeployment for local mode.

Local mode accepts what the cluster accepts, plus two conveniences for files on disk:

- a ``file://`` URI without a leading slash (``file://models/v1/model.onnx``) is relative to
  the folder of the YAML file that names it, so an example folder works from anywhere;
- an empty ``spec.artifacts.uri`` means the file:// store in the state folder (``.onnxship/``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onnxship.api import ModelDeployment, ModelDeploymentSpec, SpecError, parse_model_deployment


class SourceMissing(SpecError):
    """The document is valid but names a local file that is not there."""


@dataclass(frozen=True)
class LocalSpec:
    """A parsed deployment with its URIs made absolute."""

    deployment: ModelDeployment
    spec: ModelDeploymentSpec  # URIs absolute
    store_uri: str
    model_path: Path | None  # the source model on disk, when it is a file:// URI

    @property
    def name(self) -> str:
        return self.deployment.metadata.name


def load_document(path: Path) -> dict[str, Any]:
    """The YAML document at ``path``; SpecError (naming the file) when it is not one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), [f"(file): cannot read ({exc.strerror})"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"(file): not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise SpecError(
            str(path), ["(document): expected a mapping with apiVersion, kind, metadata, spec"]
        )
    return doc


def resolve_file_uri(uri: str, base_dir: Path) -> str:
    """``file://rel/path`` -> ``file:///abs/base/rel/path``; other URIs unchanged."""
    if not uri.startswith("file://") or uri.startswith("file:///"):
        return uri
    rest = uri[len("file://") :]
    if rest.startswith("localhost/"):
        return "file:///" + rest[len("localhost/") :]
    return (base_dir / rest).resolve().as_uri()


def uri_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    return None


def parse_local(doc: dict[str, Any], base_dir: Path, state_root: Path, source: str) -> LocalSpec:
    """Validate ``doc`` and resolve its local paths; SpecError names the file and the field."""
    md = parse_model_deployment(doc, source=source)
    spec = md.spec
    model_uri = resolve_file_uri(spec.model.uri, base_dir)
    samples = (
        resolve_file_uri(spec.model.sample_inputs, base_dir) if spec.model.sample_inputs else ""
    )
    model_path = uri_path(model_uri)
    problems: list[str] = []
    # a file, or a folder (a causal LM in ONNX Runtime GenAI's layout)
    if model_path is not None and not (model_path.is_file() or model_path.is_dir()):
        problems.append(f"spec.model.uri: {model_path} does not exist (from {spec.model.uri!r})")
    sample_path = uri_path(samples) if samples else None
    if sample_path is not None and not sample_path.is_file():
        problems.append(f"spec.model.sampleInputs: {sample_path} does not exist")
    store_uri = spec.artifacts.uri
    if not store_uri:
        store_uri = state_root.resolve().as_uri()
    else:
        store_uri = resolve_file_uri(store_uri, base_dir)
    if problems:
        raise SourceMissing(source, problems)
    resolved = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"uri": model_uri, "sample_inputs": samples}),
            "artifacts": spec.artifacts.model_copy(update={"uri": store_uri}),
        }
    )
    return LocalSpec(md, resolved, store_uri, model_path)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, remembered while its size and mtime stay the same."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def model_sha256(path: Path) -> str:
    """The model's digest: a file's SHA-256, or for a folder (a causal LM) the digest compress
    pins a folder by (SHA-256 of the ``sha256sum`` lines of every file in it)."""
    if not path.is_dir():
        return file_sha256(path)
    from onnxship.compress.llm.folder import folder_digest

    files = sorted(p for p in path.rglob("*") if p.is_file())
    return folder_digest({p.relative_to(path).as_posix(): file_sha256(p) for p in files})


def mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
