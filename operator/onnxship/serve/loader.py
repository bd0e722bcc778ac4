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
    try:
        # Imported here: the store and its boto3 import are only needed for this path.
        from onnxship.store import open_store
    except ImportError as exc:
        raise StartupError(
            f"the artifact store is not available in this build: {exc}", kind="store_error"
        ) from exc
    dest = config.cache_dir or Path(tempfile.mkdtemp(prefix="onnxship-serve-"))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        store = open_store(
            config.store_uri, endpoint=config.store_endpoint, region=config.store_region
        )
        manifest = store.get_manifest(config.cache_key)
    except Exception as exc:  # the store's own errors; all mean "cannot start from here"
        raise StartupError(
            f"{config.store_uri}: cannot read manifest {config.cache_key!r}: {exc}",
            kind="store_error",
        ) from exc
    if manifest is None:
        raise StartupError(
            f"{config.store_uri}: no artifact with cache key {config.cache_key!r}", kind="not_found"
        )
    try:
        path = Path(store.fetch(manifest, dest))
    except Exception as exc:
        raise StartupError(
            f"{config.store_uri}: cannot fetch {config.cache_key!r}: {exc}", kind="store_error"
        ) from exc
    log.info("fetched artifact", extra={"cache_key": config.cache_key, "path": str(path)})
    return path
