"""The artifact store's contract, run on file:// and on S3 (moto over HTTP)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from onnxship.api import ArtifactManifest, Compression, CompressionReport, SourceInfo, ToolVersions
from onnxship.store import ArtifactStore, IntegrityError, StoreError, describe


def make_files(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, size in sizes.items():
        (folder / name).write_bytes(rng.bytes(size))
    return folder


def draft(folder: Path, names: list[str], key: str = "ab" * 16) -> ArtifactManifest:
    blobs = describe(folder, names)
    total = sum(b.size for b in blobs)
    return ArtifactManifest(
        cache_key=key,
        source=SourceInfo(uri="file:///src/model.onnx", sha256="0" * 64),
        compression=Compression(),
        model_file=names[0],
        blobs=blobs,
        report=CompressionReport(original_bytes=total, compressed_bytes=total, ratio=1.0),
        tools=ToolVersions(onnxship="0", onnx="0", onnxruntime="0"),
        created_at=datetime.now(UTC).isoformat(),
    )


def test_publish_then_fetch_round_trips_every_blob(store: ArtifactStore, tmp_path: Path) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 3000, "weights.bin": 200_000})
    # Compressible external data: the store may keep it as zstd, the fetched bytes are the same.
    (src / "zeros.bin").write_bytes(bytes(300_000))
    manifest = draft(src, ["model.onnx", "weights.bin", "zeros.bin"])

    assert store.get_manifest(manifest.cache_key) is None
    stored = store.publish(manifest, src)

    assert store.get_manifest(manifest.cache_key) == stored
    by_name = {b.name: b for b in stored.blobs}
    assert by_name["zeros.bin"].encoding == "zstd"
    assert by_name["zeros.bin"].stored_size < 10_000
    assert by_name["weights.bin"].encoding == "identity"  # random bytes do not compress

    model = store.fetch(stored, tmp_path / "dest")
    assert model == tmp_path / "dest" / "model.onnx"
    for name in ("model.onnx", "weights.bin", "zeros.bin"):
        assert (tmp_path / "dest" / name).read_bytes() == (src / name).read_bytes()
    assert [m.cache_key for m in store.list_manifests()] == [manifest.cache_key]


def test_publishing_again_keeps_the_first_manifest(store: ArtifactStore, tmp_path: Path) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 5000})
    first = store.publish(draft(src, ["model.onnx"]), src)
    second_draft = draft(src, ["model.onnx"]).model_copy(update={"created_at": "later"})
    assert store.publish(second_draft, src) == first


def test_identical_blobs_are_stored_once(store: ArtifactStore, tmp_path: Path) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 5000})
    events: list[tuple[str, int, int | None]] = []
    store.publish(draft(src, ["model.onnx"], key="11" * 16), src)
    store.publish(draft(src, ["model.onnx"], key="22" * 16), src, lambda *e: events.append(e))
    assert {m.cache_key for m in store.list_manifests()} == {"11" * 16, "22" * 16}
    # The second publish found the blob by digest: one "done" event, no byte-by-byte upload.
    assert events == [("upload model.onnx", 5000, 5000)]


def test_a_crash_before_the_manifest_leaves_nothing_visible_and_a_retry_completes(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 4000, "data.bin": 100_000})
    manifest = draft(src, ["model.onnx", "data.bin"])

    def crash(key: str, text: str) -> None:
        raise KeyboardInterrupt("killed between blob upload and manifest write")

    with monkeypatch.context() as m:
        m.setattr(store, "_put_text", crash)
        with pytest.raises(KeyboardInterrupt):
            store.publish(manifest, src)
    assert store.get_manifest(manifest.cache_key) is None
    assert store.list_manifests() == []

    stored = store.publish(manifest, src)
    store.fetch(stored, tmp_path / "dest")
    assert (tmp_path / "dest" / "data.bin").read_bytes() == (src / "data.bin").read_bytes()


def test_a_file_that_changes_during_upload_is_not_published(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 4000})
    manifest = draft(src, ["model.onnx"])
    (src / "model.onnx").write_bytes(os.urandom(4000))  # differs from the described digest
    with pytest.raises(IntegrityError, match="changed while it was uploaded"):
        store.publish(manifest, src)
    assert store.get_manifest(manifest.cache_key) is None


def test_fetch_refuses_a_blob_whose_bytes_do_not_match(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 4000})
    stored = store.publish(draft(src, ["model.onnx"]), src)
    lying = stored.model_copy(
        update={"blobs": [stored.blobs[0].model_copy(update={"digest": "f" * 64})]}
    )
    dest = tmp_path / "dest"
    with pytest.raises(StoreError):
        store.fetch(lying, dest)
    assert not (dest / "model.onnx").exists()
    assert list(dest.iterdir()) == []  # no temporary file left behind


def test_fetch_refuses_blob_names_that_leave_the_folder(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = make_files(tmp_path / "out", {"model.onnx": 100})
    stored = store.publish(draft(src, ["model.onnx"]), src)
    evil = stored.model_copy(
        update={"blobs": [stored.blobs[0].model_copy(update={"name": "../escaped.onnx"})]}
    )
    with pytest.raises(IntegrityError, match="relative path inside"):
        store.fetch(evil, tmp_path / "dest")
    assert not (tmp_path / "escaped.onnx").exists()


def test_missing_manifest_is_none_and_bad_keys_are_refused(store: ArtifactStore) -> None:
    assert store.get_manifest("cd" * 16) is None
    with pytest.raises(StoreError, match="not a cache key"):
        store.get_manifest("../../etc/passwd")
