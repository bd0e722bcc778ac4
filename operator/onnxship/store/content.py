"""The artifact store: the interface callers use, and the publish/fetch rules every backend shares.

Backends only move bytes (``_find_blob``, ``_put_blob``, ``_read_blob``, ``_get_text``,
``_put_text``, ``_list_manifest_keys``); the rules that make the store safe to share live
here once:

- publish uploads every blob first and writes the manifest last, after checking that each
  blob it names is present, so a reader that finds a manifest finds its blobs;
- a blob already in the store (same digest) is not uploaded again;
- fetch verifies every blob's digest and size while streaming and renames only good files.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import ValidationError

from onnxship.api import ArtifactManifest, Blob

from .digests import receive, sha256_file, worth_zstd
from .errors import IntegrityError, StoreError
from .layout import blob_key, cache_key_of, manifest_key, safe_blob_name
from .progress import Progress, no_progress

log = logging.getLogger(__name__)


@runtime_checkable
class ArtifactStore(Protocol):
    """A content-addressed store of compressed models (S3 or a folder).

    - ``uri``: the store's root, as the user wrote it.
    - ``get_manifest(cache_key)``: the manifest, or None when nothing is stored under that key.
    - ``publish(manifest, folder, progress)``: upload the files ``manifest.blobs`` names (from
      ``folder``), blobs first and the manifest last; returns the manifest as stored (with each
      blob's encoding and stored size). When a manifest already exists under the key, it is
      returned unchanged (first writer wins; both describe the same bytes).
    - ``fetch(manifest, dest_dir, progress)``: download every blob into ``dest_dir``, verified,
      and return the path of the model file.
    - ``list_manifests()``: every readable manifest in the store, oldest first.
    - ``manifest_uri(cache_key)``: where the manifest lives (for status and logs).
    """

    uri: str

    def get_manifest(self, cache_key: str) -> ArtifactManifest | None: ...

    def publish(
        self, manifest: ArtifactManifest, folder: Path, progress: Progress | None = None
    ) -> ArtifactManifest: ...

    def fetch(
        self, manifest: ArtifactManifest, dest_dir: Path, progress: Progress | None = None
    ) -> Path: ...

    def list_manifests(self) -> list[ArtifactManifest]: ...

    def manifest_uri(self, cache_key: str) -> str: ...


class ContentStore(ABC):
    """publish/fetch/list on top of a backend's byte-moving primitives."""

    uri: str

    # ------------------------------------------------------------------ backend primitives

    @abstractmethod
    def _find_blob(self, digest: str) -> tuple[str, int] | None:
        """(encoding, stored size) of the blob with this digest, or None when absent."""

    @abstractmethod
    def _put_blob(self, path: Path, blob: Blob, encoding: str, progress: Progress) -> int:
        """Store ``path`` under the blob's key atomically; return the stored size.

        Must raise IntegrityError (leaving nothing behind) when the bytes read from ``path``
        are not ``blob.digest`` / ``blob.size``.
        """

    @abstractmethod
    def _read_blob(self, blob: Blob) -> Iterator[bytes]:
        """The blob's stored bytes, in order."""

    @abstractmethod
    def _get_text(self, key: str) -> str | None: ...

    @abstractmethod
    def _put_text(self, key: str, text: str) -> None:
        """Write atomically: readers see the old object, or the whole new one."""

    @abstractmethod
    def _list_manifest_keys(self) -> Iterable[str]: ...

    @abstractmethod
    def _where(self, key: str) -> str:
        """A readable location of a key, for messages."""

    # ------------------------------------------------------------------ the interface

    def manifest_uri(self, cache_key: str) -> str:
        return f"{self.uri.rstrip('/')}/{manifest_key(cache_key)}"

    def get_manifest(self, cache_key: str) -> ArtifactManifest | None:
        key = manifest_key(cache_key)
        text = self._get_text(key)
        if text is None:
            return None
        return self._parse(key, text)

    def list_manifests(self) -> list[ArtifactManifest]:
        found = []
        for key in self._list_manifest_keys():
            if cache_key_of(key) is None:
                continue
            text = self._get_text(key)
            if text is None:
                continue  # deleted between list and get
            try:
                found.append(self._parse(key, text))
            except StoreError as exc:
                log.warning("skipping unreadable manifest: %s", exc)
        return sorted(found, key=lambda m: (m.created_at, m.cache_key))

    def publish(
        self, manifest: ArtifactManifest, folder: Path, progress: Progress | None = None
    ) -> ArtifactManifest:
        progress = progress or no_progress
        existing = self.get_manifest(manifest.cache_key)
        if existing is not None:
            return existing
        names = [b.name for b in manifest.blobs]
        if manifest.model_file not in names:
            raise StoreError(
                f"manifest {manifest.cache_key} does not list its model file "
                f"{manifest.model_file!r}"
            )
        stored: list[Blob] = []
        for blob in manifest.blobs:
            safe_blob_name(blob.name)
            found = self._find_blob(blob.digest)
            if found is None:
                encoding = "zstd" if worth_zstd(folder / blob.name) else "identity"
                stored_size = self._put_blob(folder / blob.name, blob, encoding, progress)
                found = (encoding, stored_size)
            else:
                progress(f"upload {blob.name}", blob.size, blob.size)
            stored.append(blob.model_copy(update={"encoding": found[0], "stored_size": found[1]}))
        final = manifest.model_copy(update={"blobs": stored})
        # The manifest is the commit point: check once more that every blob it names is there.
        missing = [b.name for b in stored if self._find_blob(b.digest) is None]
        if missing:
            raise StoreError(
                f"blobs vanished before the manifest was written: {', '.join(missing)}"
            )
        self._put_text(
            manifest_key(final.cache_key), final.model_dump_json(by_alias=True, indent=2)
        )
        return final

    def fetch(
        self, manifest: ArtifactManifest, dest_dir: Path, progress: Progress | None = None
    ) -> Path:
        progress = progress or no_progress
        dest_dir.mkdir(parents=True, exist_ok=True)
        for blob in manifest.blobs:
            dest = dest_dir / safe_blob_name(blob.name)
            # A complete earlier download (renamed only after verification) is kept, but
            # checked again: the folder may have been touched since.
            if (
                dest.is_file()
                and dest.stat().st_size == blob.size
                and sha256_file(dest)[0] == blob.digest
            ):
                progress(f"download {blob.name}", blob.size, blob.size)
                continue
            source = self._where(blob_key(blob.digest, blob.encoding))
            receive(self._read_blob(blob), blob, dest, progress, source)
        return dest_dir / safe_blob_name(manifest.model_file)

    # ------------------------------------------------------------------ helpers

    def _parse(self, key: str, text: str) -> ArtifactManifest:
        try:
            manifest = ArtifactManifest.model_validate_json(text)
        except ValidationError as exc:
            raise IntegrityError(
                f"{self._where(key)}: not a valid ArtifactManifest ({exc.error_count()} errors: "
                f"{exc.errors()[0]['msg']})"
            ) from None
        if cache_key_of(key) != manifest.cache_key:
            raise IntegrityError(
                f"{self._where(key)}: names cache key {manifest.cache_key}, not its own"
            )
        return manifest
