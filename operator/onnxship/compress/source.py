"""Fetch the source model (and sample inputs) from file://, s3:// or http(s)://.

file:// models are used in place: a multi-GB model is not copied. Remote models are streamed
to a work folder with their SHA-256 computed on the way; external-data files named by the
model are then fetched from beside it, after their names were checked (see validate.py).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from onnxship.store import S3Credentials, file_uri_path, no_progress
from onnxship.store.digests import CHUNK, sha256_file
from onnxship.store.progress import Progress
from onnxship.store.s3 import explain, parse_s3_uri, s3_client

from .errors import SourceError
from .validate import check_external_data, load_graph

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
    path: Path
    sha256: str  # of the model file itself: what a user pins
    size: int


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
) -> FetchedModel:
    """The model at ``uri`` as a local file (with its external data beside it), pin checked."""
    access = access or SourceAccess()
    if uri.startswith("file://"):
        path = file_uri_path(uri)
        if not path.is_file():
            raise SourceError(f"{uri}: no such file ({path})")
        digest, size = sha256_file(path, progress, "hash source")
    elif uri.startswith(("s3://", "http://", "https://")):
        name = PurePosixPath(uri.split("?", 1)[0]).name or "model.onnx"
        path = work_dir / "source" / name
        _download(uri, path, access, progress, "download source")
        digest, size = sha256_file(path)
    else:
        raise SourceError(f"{uri!r}: a model URI starts with s3://, http(s)://, or file://")
    if expected_sha256 and digest != expected_sha256.lower():
        raise SourceError(
            f"{uri}: sha256 mismatch: the file has {digest}, the pin (spec.model.sha256 or "
            f"--sha256) is "
            f"{expected_sha256}; nothing was compressed (fix the pin or the file)"
        )
    if not uri.startswith("file://"):
        # Only after the names were checked: a hostile model must not make us fetch
        # (or write) files outside its folder.
        for ext in check_external_data_names(path):
            _download(_sibling(uri, ext), path.parent / ext, access, progress, f"download {ext}")
    return FetchedModel(path, digest, size)


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
