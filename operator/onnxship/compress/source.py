"""Fetch the source model (and sample inputs) from file://, s3:// or http(s)://.

file:// models are used in place: a multi-GB model is not copied. Remote models are streamed
to a work folder with their SHA-256 computed on the way; external-data files named by the
model are then fetched from beside it, after their names were checked (see validate.py).

A model may also be a folder (a causal LM in ONNX Runtime GenAI's layout, see llm/folder.py):
a local folder (used in place), or an s3:// prefix whose every object is fetched (large ones as
parallel ranged GETs, as the store does) and hashed on the way. A single graph with a decoder's
signature (past_key_values in, logits and present out) brings its folder with it. A folder's
digest is ``llm.folder.folder_digest`` over the digests of its files; ``sha256`` pins it, or
the decoder graph alone.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from onnxship.api import ModelKind
from onnxship.store import S3Credentials, file_uri_path, no_progress
from onnxship.store.digests import CHUNK, sha256_file
from onnxship.store.progress import Progress
from onnxship.store.s3 import MULTIPART, explain, parse_s3_uri, ranged_get, s3_client

from .errors import InvalidModelError, SourceError
from .llm.folder import MAX_FILES, declared_graph, folder_digest, graph_is_decoder, list_files
from .llm.folder import safe_name as safe_folder_name
from .validate import MAX_MODEL_BYTES, check_external_data, load_graph

HTTP_TIMEOUT = 60


@dataclass(frozen=True)
class SourceAccess:
    """How to reach remote sources: an S3 endpoint/region/keys, or a bearer token for https.

    Empty values fall back to the environment (AWS_* for S3, ONNXSHIP_HTTP_TOKEN for https).
    """

    endpoint: str = ""
    region: str = ""
    credentials: S3Credentials | None = None
    http_token: str = ""


@dataclass(frozen=True)
class FetchedModel:
    path: Path  # the model file; in a folder, the graph genai_config.json names
    sha256: str  # of the model file itself, or of a folder (folder_digest): what a user pins
    size: int  # of the model file, or of the whole folder
    folder: Path | None = None  # the model is this whole folder (a causal LM)
    digests: dict[str, str] = field(default_factory=dict)  # a folder's files: name -> sha256


def _download(uri: str, dest: Path, access: SourceAccess, progress: Progress, task: str) -> None:
    """Stream ``uri`` to ``dest`` (temporary name, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with tmp.open("wb") as out:
            for done, chunk in _chunks(uri, access):
                out.write(chunk)
                progress(task, done[0], done[1])
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _chunks(uri: str, access: SourceAccess) -> Any:
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        key = key.rstrip("/")
        client = s3_client(access.endpoint, access.region, access.credentials)
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"NoSuchKey", "404"}:
                raise SourceError(f"{uri}: no such object in the bucket") from None
            raise SourceError(str(explain(exc, uri))) from None
        except (BotoCoreError, OSError) as exc:
            raise SourceError(str(explain(exc, uri))) from None
        total = int(obj.get("ContentLength", 0)) or None
        done = 0
        try:
            for chunk in obj["Body"].iter_chunks(CHUNK):
                done += len(chunk)
                yield (done, total), chunk
        except (BotoCoreError, OSError) as exc:
            raise SourceError(f"{uri}: download interrupted ({exc})") from None
        return
    request = urllib.request.Request(uri, headers={"User-Agent": "onnxship"})
    token = access.http_token or os.environ.get("ONNXSHIP_HTTP_TOKEN", "")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length", 0)) or None
            done = 0
            while chunk := response.read(CHUNK):
                done += len(chunk)
                yield (done, total), chunk
            if total is not None and done != total:
                raise SourceError(f"{uri}: connection closed after {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{uri}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"{uri}: cannot download ({reason})") from None


def _sibling(uri: str, name: str) -> str:
    return uri.rsplit("/", 1)[0] + "/" + str(PurePosixPath(name))


def fetch_model(
    uri: str,
    work_dir: Path,
    *,
    expected_sha256: str = "",
    access: SourceAccess | None = None,
    progress: Progress = no_progress,
    kind: ModelKind | str | None = None,
) -> FetchedModel:
    """The model at ``uri`` as a local file (with its external data beside it), or as a local
    folder when it is one (or a causal LM's graph), pin checked. ``kind``: spec.model.kind;
    ``onnx`` keeps a decoder graph a single model, ``causal-lm`` fetches its folder."""
    access = access or SourceAccess()
    single = kind == ModelKind.onnx
    if uri.startswith("file://"):
        path = file_uri_path(uri)
        if path.is_dir():
            if single:
                path = path / "model.onnx"
            else:
                return _pinned(uri, _local_folder(path, progress), expected_sha256)
        if not path.is_file():
            raise SourceError(f"{uri}: no such file ({path})")
        if not single and (kind == ModelKind.causal_lm or _decoder_file(path)):
            return _pinned(uri, _local_folder(path.parent, progress, path.name), expected_sha256)
        digest, size = sha256_file(path, progress, "hash source")
    elif uri.startswith("s3://"):
        if not single and (uri.endswith("/") or _s3_is_prefix(uri, access)):
            return _pinned(uri, _s3_folder(uri, work_dir, access, progress), expected_sha256)
        name = PurePosixPath(uri.split("?", 1)[0]).name or "model.onnx"
        path = work_dir / "source" / name
        _download(uri, path, access, progress, "download source")
        if not single and (kind == ModelKind.causal_lm or graph_is_decoder(load_graph(path))):
            parent = uri.rsplit("/", 1)[0] + "/"
            fetched = _s3_folder(parent, work_dir / "folder", access, progress, name)
            return _pinned(uri, fetched, expected_sha256)
        digest, size = sha256_file(path)
    elif uri.startswith(("http://", "https://")):
        name = PurePosixPath(uri.split("?", 1)[0]).name or "model.onnx"
        path = work_dir / "source" / name
        _download(uri, path, access, progress, "download source")
        if kind == ModelKind.causal_lm or (not single and graph_is_decoder(load_graph(path))):
            raise SourceError(
                f"{uri}: a causal LM is a folder (graph, genai_config.json, tokenizer), and an "
                "http(s) folder cannot be listed; give an s3:// prefix or a local folder"
            )
        digest, size = sha256_file(path)
    else:
        raise SourceError(f"{uri!r}: a model URI starts with s3://, http(s)://, or file://")
    _check_pin(uri, expected_sha256, digest)
    if not uri.startswith("file://"):
        # Only after the names were checked: a hostile model must not make us fetch
        # (or write) files outside its folder.
        for ext in check_external_data_names(path):
            _download(_sibling(uri, ext), path.parent / ext, access, progress, f"download {ext}")
    return FetchedModel(path, digest, size)


def _check_pin(uri: str, expected: str, *digests: str) -> None:
    if expected and expected.lower() not in digests:
        what = "the file has" if len(digests) == 1 else "the folder has (folder digest, graph)"
        raise SourceError(
            f"{uri}: sha256 mismatch: {what} {', '.join(digests)}, the pin (spec.model.sha256 "
            f"or --sha256) is {expected}; nothing was compressed (fix the pin or the file)"
        )


def _pinned(uri: str, fetched: FetchedModel, expected: str) -> FetchedModel:
    """A folder's pin is its folder digest, or its graph's digest."""
    assert fetched.folder is not None
    graph = fetched.path.relative_to(fetched.folder).as_posix()
    _check_pin(uri, expected, fetched.sha256, fetched.digests.get(graph, ""))
    return fetched


def _decoder_file(path: Path) -> bool:
    try:
        return graph_is_decoder(load_graph(path))
    except InvalidModelError:
        return False  # not a graph we can read: validation says so, as for any model


def _local_folder(folder: Path, progress: Progress, graph: str = "") -> FetchedModel:
    names = list_files(folder)
    digests = {}
    for name in names:
        digests[name] = sha256_file(folder / name, progress, f"hash {name}")[0]
    size = sum((folder / name).stat().st_size for name in names)
    graph = graph or declared_graph(folder)
    return FetchedModel(folder / graph, folder_digest(digests), size, folder, digests)


def _s3_is_prefix(uri: str, access: SourceAccess) -> bool:
    """Whether ``s3://bucket/key`` names no object but a "folder" of objects under ``key/``."""
    bucket, key = parse_s3_uri(uri)
    client = s3_client(access.endpoint, access.region, access.credentials)
    try:
        client.head_object(Bucket=bucket, Key=key.rstrip("/"))
        return False
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in {"NoSuchKey", "404", "NotFound"}:
            raise SourceError(str(explain(exc, uri))) from None
    except (BotoCoreError, OSError) as exc:
        raise SourceError(str(explain(exc, uri))) from None
    try:
        page = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except (ClientError, BotoCoreError, OSError) as exc:
        raise SourceError(str(explain(exc, uri))) from None
    return bool(page.get("Contents"))


def _s3_folder(
    uri: str, work_dir: Path, access: SourceAccess, progress: Progress, graph: str = ""
) -> FetchedModel:
    """Every object under the prefix ``uri``, into ``work_dir/source/``, hashed on the way."""
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(access.endpoint, access.region, access.credentials)
    objects: dict[str, int] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if not name or name.endswith("/"):
                    continue  # the prefix itself, or a "folder" marker
                safe_folder_name(name, f"{uri} (object {obj['Key']!r})")
                objects[name] = int(obj["Size"])
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise SourceError(f"{uri}: the bucket does not exist") from None
        raise SourceError(str(explain(exc, uri))) from None
    except (BotoCoreError, OSError) as exc:
        raise SourceError(str(explain(exc, uri))) from None
    if not objects:
        raise SourceError(f"{uri}: no objects under this prefix")
    if len(objects) > MAX_FILES:
        raise InvalidModelError(f"{uri}: more than {MAX_FILES} objects; is this a model folder?")
    if sum(objects.values()) > MAX_MODEL_BYTES:
        raise InvalidModelError(f"{uri}: {sum(objects.values())} bytes in all, over the limit")
    folder = work_dir / "source"
    digests = {}
    for name, size in sorted(objects.items()):
        digests[name] = _s3_file(client, bucket, prefix + name, size, folder / name, progress)
    graph = graph or declared_graph(folder)
    size = sum(objects.values())
    return FetchedModel(folder / graph, folder_digest(digests), size, folder, digests)


def _s3_file(client: Any, bucket: str, key: str, size: int, dest: Path, progress: Progress) -> str:
    """One object to ``dest`` (a temporary name, renamed when complete); its SHA-256."""
    where = f"s3://{bucket}/{key}"
    task = f"download {dest.name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    h = hashlib.sha256()
    done = 0
    try:
        with tmp.open("wb") as out:
            if size > MULTIPART:
                chunks: Any = ranged_get(client, bucket, key, size)
            else:
                chunks = client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(CHUNK)
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                progress(task, done, size)
        if done != size:
            raise SourceError(f"{where}: got {done} of {size} bytes (the object changed?)")
        os.replace(tmp, dest)
    except ClientError as exc:
        raise SourceError(str(explain(exc, where))) from None
    except (BotoCoreError, OSError) as exc:
        raise SourceError(f"{where}: download interrupted ({explain(exc, where)})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest()


def check_external_data_names(path: Path) -> list[str]:
    """External-data names of a freshly downloaded model, checked before anything is fetched."""
    model = load_graph(path)
    # Validation proper runs later; here only the names matter, so the files are not there yet.
    names: list[str] = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in names:
                names.append(entry.value)
    if names:
        placeholder = path.parent
        for name in names:
            rel = PurePosixPath(name.replace("\\", "/"))
            if rel.is_absolute() or ".." in rel.parts or not name:
                check_external_data(model, placeholder, str(path))  # raises with the full message
    return names


def fetch_samples(uri: str, work_dir: Path, access: SourceAccess | None = None) -> Path:
    """The .npz of sample inputs as a local file."""
    if uri.startswith("file://"):
        path = file_uri_path(uri)
        if not path.is_file():
            raise SourceError(f"{uri}: sample inputs not found ({path})")
        return path
    if "://" not in uri:
        path = Path(uri)
        if not path.is_file():
            raise SourceError(f"{uri}: sample inputs not found")
        return path
    path = work_dir / "samples" / "samples.npz"
    _download(uri, path, access or SourceAccess(), no_progress, "download samples")
    return path


def digest_of_files(folder: Path, names: list[str]) -> str:
    """One SHA-256 over several files (the source of a model with external data)."""
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{sha256_file(folder / name)[0]}\n".encode())
    return h.hexdigest()
