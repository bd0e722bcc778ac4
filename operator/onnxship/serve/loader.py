"""Finding the model file: a local path, or an artifact fetched (and verified) from the store."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from .config import ServeConfig
from .errors import StartupError

log = logging.getLogger(__name__)


def resolve_model_file(config: ServeConfig) -> Path:
    if config.model_path is not None:
        path = config.model_path
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise StartupError(f"{path}: no such model file", kind="not_found")
        return path
    return _fetch_from_store(config)


def _fetch_from_store(config: ServeConfig) -> Path:
    assert config.store_uri and config.cache_key  # ServeConfig guarantees both
    # Imported here: boto3 is only needed on this path, and costs a second at start-up.
    from onnxship.store import StoreError, StoreNotFound, open_store

    uri, key = config.store_uri, config.cache_key
    # A fixed folder per cache key lets a restarted container reuse a verified download.
    dest = (config.cache_dir or Path(tempfile.gettempdir()) / "onnxship-serve") / key
    try:
        store = open_store(
            uri, endpoint=config.store_endpoint or "", region=config.store_region or ""
        )
        manifest = store.get_manifest(key)
        if manifest is None:
            raise StartupError(f"{uri}: no artifact with cache key {key!r}", kind="not_found")
        path = store.fetch(manifest, dest)
    except StoreNotFound as exc:
        raise StartupError(f"{uri}: artifact {key!r}: {exc}", kind="not_found") from exc
    except StoreError as exc:  # unreachable, denied, or a digest that does not match
        raise StartupError(
            f"{uri}: cannot fetch artifact {key!r}: {exc}", kind="store_error"
        ) from exc
    log.info(
        "fetched artifact",
        extra={"cache_key": key, "path": str(path), "source": manifest.source.uri},
    )
    return Path(path)
