"""The file:// store: the S3 layout in a local folder, for local mode and tests.

Atomicity comes from the file system: everything is written to a temporary name in the
target's own folder and renamed into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from onnxship.api import Blob

from .content import ContentStore
from .digests import CHUNK, ZSTD_LEVEL, CountingReader, HashingReader, check_sent
from .errors import StoreAccessDenied, StoreError, StoreNotFound
from .layout import MANIFESTS, ZSTD_SUFFIX, blob_key
from .progress import Progress


class FileStore(ContentStore):
    """An artifact store in a folder (``file:///path/to/store``)."""

    def __init__(self, root: Path, uri: str = "") -> None:
        self.root = root
        self.uri = uri or root.as_uri()

    def _where(self, key: str) -> str:
        return str(self.root / key)

    def _find_blob(self, digest: str) -> tuple[str, int] | None:
        for encoding in ("identity", "zstd"):
            path = self.root / blob_key(digest, encoding)
            if path.is_file():
                return encoding, path.stat().st_size
        return None

    def _put_blob(self, path: Path, blob: Blob, encoding: str, progress: Progress) -> int:
        target = self.root / blob_key(blob.digest, encoding)
        task = f"upload {blob.name}"
        with self._writing(target) as tmp, path.open("rb") as src, tmp.open("wb") as out:
            reader = HashingReader(src, lambda n: progress(task, n, blob.size))
            if encoding == "zstd":
                packed = CountingReader(
                    zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(cast(BinaryIO, reader))
                )
                shutil.copyfileobj(packed, out, CHUNK)
            else:
                shutil.copyfileobj(reader, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
            check_sent(blob, reader)
        return target.stat().st_size

    def _read_blob(self, blob: Blob) -> Iterator[bytes]:
        path = self.root / blob_key(blob.digest, blob.encoding)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise StoreError(
                f"{path}: blob {blob.name} named by the manifest is missing from the store"
            ) from None
        with f:
            while chunk := f.read(CHUNK):
                yield chunk

    def _get_text(self, key: str) -> str | None:
        try:
            return (self.root / key).read_text()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise StoreAccessDenied(f"{self.root / key}: permission denied") from None

    def _put_text(self, key: str, text: str) -> None:
        target = self.root / key
        with self._writing(target) as tmp:
            tmp.write_text(text)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())

    def _list_manifest_keys(self) -> Iterable[str]:
        folder = self.root / MANIFESTS
        if not folder.is_dir():
            return []
        return sorted(MANIFESTS + p.name for p in folder.iterdir() if p.name.endswith(".json"))

    def _writing(self, target: Path) -> _AtomicWrite:
        return _AtomicWrite(self.root, target)


class _AtomicWrite:
    """``with`` block yielding a temporary path that is renamed to ``target`` on success."""

    def __init__(self, root: Path, target: Path) -> None:
        self.root = root
        self.target = target
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.root.exists() and not self.root.is_dir():
            raise StoreNotFound(f"{self.root}: the store path exists and is not a folder")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{self.target.name}.", suffix=".part", dir=self.target.parent
            )
        except PermissionError:
            raise StoreAccessDenied(f"{self.target.parent}: permission denied") from None
        except OSError as exc:
            raise StoreError(f"{self.target.parent}: cannot write ({exc.strerror})") from None
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


__all__ = ["ZSTD_SUFFIX", "FileStore"]
