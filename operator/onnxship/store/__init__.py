"""The content-addressed artifact store: S3 (boto3) and file:// backends with one layout.

Call ``open_store(uri, endpoint=..., region=..., credentials=...)`` and use the
``ArtifactStore`` it returns:

- ``get_manifest(cache_key) -> ArtifactManifest | None``
- ``publish(manifest, folder, progress=None) -> ArtifactManifest`` (blobs first, manifest last)
- ``fetch(manifest, dest_dir, progress=None) -> Path`` (verified; returns the model file's path)
- ``list_manifests() -> list[ArtifactManifest]``
- ``manifest_uri(cache_key) -> str``

Errors are ``StoreError`` subclasses: ``StoreNotFound``, ``StoreAccessDenied``,
``StoreUnavailable`` (retry later), ``IntegrityError`` (corrupt or mismatching data).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from .content import ArtifactStore, ContentStore
from .digests import describe, sha256_file
from .errors import IntegrityError, StoreAccessDenied, StoreError, StoreNotFound, StoreUnavailable
from .files import FileStore
from .progress import Progress, no_progress
from .s3 import S3Credentials, S3Store, s3_client


def file_uri_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (``file:///abs`` or ``file://relative/path``)."""
    parsed = urlparse(uri)
    return (
        Path(unquote(parsed.netloc + parsed.path)) if parsed.netloc else Path(unquote(parsed.path))
    )


def open_store(
    uri: str,
    *,
    endpoint: str = "",
    region: str = "",
    credentials: S3Credentials | None = None,
) -> ArtifactStore:
    """The store at ``uri``: ``s3://bucket/prefix/`` or ``file:///path``.

    For S3, ``endpoint`` selects an S3-compatible server (MinIO, Ceph; empty = AWS),
    ``region`` the signing region, and ``credentials`` explicit keys (otherwise boto3's chain:
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, instance roles). Nothing is contacted
    until the first call.
    """
    if uri.startswith("s3://"):
        return S3Store(uri, s3_client(endpoint, region, credentials))
    if uri.startswith("file://"):
        return FileStore(file_uri_path(uri), uri)
    raise StoreError(f"{uri!r}: an artifact store URI starts with s3:// or file://")


__all__ = [
    "ArtifactStore",
    "ContentStore",
    "FileStore",
    "IntegrityError",
    "Progress",
    "S3Credentials",
    "S3Store",
    "StoreAccessDenied",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
    "describe",
    "file_uri_path",
    "no_progress",
    "open_store",
    "sha256_file",
]
