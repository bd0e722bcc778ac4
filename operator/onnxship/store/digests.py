"""Streaming SHA-256 and zstd: multi-GB files pass through in chunks, never whole in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import zstandard

from onnxship.api import Blob

from .errors import IntegrityError
from .progress import Progress, no_progress

CHUNK = 8 * 1024 * 1024
ZSTD_LEVEL = 3
# zstd only pays when it saves this much; dense float weights compress by a few percent,
# pruned or int8 weights by much more.
ZSTD_MIN_SAVING = 0.10
ZSTD_MIN_SIZE = 64 * 1024
_SAMPLE = 1024 * 1024
_SAMPLES = 4


def sha256_file(path: Path, progress: Progress = no_progress, task: str = "") -> tuple[str, int]:
    """Hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    total = path.stat().st_size
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if task:
                progress(task, size, total)
    return h.hexdigest(), size


def describe(folder: Path, names: Iterable[str], progress: Progress = no_progress) -> list[Blob]:
    """Blobs (name, digest, size) for files in ``folder``; encoding is decided at publish."""
    blobs = []
    for name in names:
        digest, size = sha256_file(folder / name, progress, f"hash {name}")
        blobs.append(Blob(name=name, digest=digest, size=size))
    return blobs


def worth_zstd(path: Path) -> bool:
    """Whether zstd saves enough on this file, judged on a few evenly spaced samples."""
    size = path.stat().st_size
    if size < ZSTD_MIN_SIZE:
        return False
    plain = packed = 0
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    with path.open("rb") as f:
        for i in range(_SAMPLES):
            f.seek(max(0, (size - _SAMPLE) * i // max(1, _SAMPLES - 1)))
            sample = f.read(_SAMPLE)
            plain += len(sample)
            packed += len(cctx.compress(sample))
    return packed < plain * (1 - ZSTD_MIN_SAVING)


class HashingReader:
    """A read-only stream over a file that hashes and counts what is read through it.

    It has no ``seek``: uploaders then read it once, in order, so the digest covers exactly
    the bytes that were sent.
    """

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None] | None = None) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.size = 0
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        self.size += len(data)
        if self._on_read and data:
            self._on_read(self.size)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class CountingReader:
    """Counts the bytes read through a stream (the stored size of a zstd blob)."""

    def __init__(self, f: BinaryIO | zstandard.ZstdCompressionReader) -> None:
        self._f = f
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.size += len(data)
        return bytes(data)


def check_sent(blob: Blob, reader: HashingReader) -> None:
    """Raise when the bytes that were uploaded are not the bytes the manifest will name."""
    if reader.size != blob.size or reader.hexdigest() != blob.digest:
        raise IntegrityError(
            f"{blob.name}: the file changed while it was uploaded "
            f"(sent {reader.size} bytes with sha256 {reader.hexdigest()[:12]}…, expected "
            f"{blob.size} bytes with sha256 {blob.digest[:12]}…); nothing was published"
        )


def receive(
    chunks: Iterable[bytes],
    blob: Blob,
    dest: Path,
    progress: Progress = no_progress,
    source: str = "",
) -> None:
    """Write a blob's stored bytes to ``dest``: decode, hash and count while streaming, into a
    temporary name beside ``dest``, renamed only when digest and size match."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    dctx = zstandard.ZstdDecompressor().decompressobj() if blob.encoding == "zstd" else None
    task = f"download {blob.name}"
    try:
        with tmp.open("wb") as out:
            for stored in chunks:
                data = dctx.decompress(stored) if dctx else stored
                if not data:
                    continue
                h.update(data)
                size += len(data)
                if size > blob.size:
                    break  # more bytes than the manifest promises: stop reading, fail below
                out.write(data)
                progress(task, size, blob.size)
        if size != blob.size or h.hexdigest() != blob.digest:
            raise IntegrityError(
                f"{source or blob.name}: corrupt blob in the store: got {size} bytes with sha256 "
                f"{h.hexdigest()}, the manifest names {blob.size} bytes with sha256 {blob.digest}"
            )
        os.replace(tmp, dest)
    except zstandard.ZstdError as exc:
        raise IntegrityError(
            f"{source or blob.name}: corrupt zstd blob in the store ({exc})"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
