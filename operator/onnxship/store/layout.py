"""Where things live in a store, the same for every backend (DESIGN.md "The artifact store").

    <root>/blobs/sha256/<digest>        a blob stored as is
    <root>/blobs/sha256/<digest>.zst    a blob stored zstd-compressed (digest of the plain bytes)
    <root>/manifests/<cache-key>.json   an ArtifactManifest, written last

Names that come from a manifest are checked here, because a manifest in a shared bucket is
input we did not write: a blob name must stay inside the folder it is fetched into.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from .errors import IntegrityError, StoreError

BLOBS = "blobs/sha256/"
MANIFESTS = "manifests/"
ZSTD_SUFFIX = ".zst"

_DIGEST = re.compile(r"^[a-f0-9]{64}$")
_CACHE_KEY = re.compile(r"^[a-f0-9]{8,64}$")


def blob_key(digest: str, encoding: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise IntegrityError(f"{digest!r} is not a hex SHA-256 digest")
    return BLOBS + digest + (ZSTD_SUFFIX if encoding == "zstd" else "")


def manifest_key(cache_key: str) -> str:
    if not _CACHE_KEY.fullmatch(cache_key):
        raise StoreError(f"{cache_key!r} is not a cache key (8 to 64 lowercase hex digits)")
    return f"{MANIFESTS}{cache_key}.json"


def cache_key_of(key: str) -> str | None:
    """The cache key in a manifest's object key, or None for anything else under manifests/."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".json"):
        return None
    stem = name[: -len(".json")]
    return stem if _CACHE_KEY.fullmatch(stem) else None


def safe_blob_name(name: str) -> PurePosixPath:
    """A manifest's blob name as a relative path that cannot leave the destination folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or name.startswith("~"):
        raise IntegrityError(
            f"manifest names blob {name!r}: a blob name must be a relative path inside "
            "the model folder"
        )
    return path
