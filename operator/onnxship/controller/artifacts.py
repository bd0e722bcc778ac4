"""The production ArtifactFinder: the store named by the spec (or the operator's default)."""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from typing import Any

from onnxship.api import Compression, ModelKind
from onnxship.plan.revision import cache_key
from onnxship.plan.workloads import StoreRef

# Opened stores kept for reuse. Opening one builds a boto3 client (tens of milliseconds of
# CPU and megabytes for its service model): once per lookup, it was half the operator's CPU
# with 200 ModelDeployments created at once. A few stores serve a cluster; the bound only
# keeps a churn of credentials from growing without end.
MAX_OPEN_STORES = 32
# Manifests found, kept for a while: a manifest's key is a digest of what it was made from
# (plan/revision.py cache_key), so what one says does not change. 1,000 ModelDeployments of
# one model applied at once made 1,000 GETs of the same manifest (moto's or a real S3's time,
# and boto3's signing CPU in the operator); one does now. Misses are not kept (a Job may
# publish the manifest any time), and a found one is asked again after MANIFEST_TTL_S in case
# the store was cleaned up.
MAX_MANIFESTS = 4096
MANIFEST_TTL_S = 300.0


class StoreArtifactFinder:
    def __init__(self) -> None:
        self._stores: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._versions: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        # (store slot, key) -> (when found, the compact result)
        self._found: OrderedDict[tuple[Any, ...], tuple[float, dict[str, Any]]] = OrderedDict()

    def find(
        self,
        store: StoreRef,
        credentials: dict[str, str],
        source_sha256: str,
        compression: Compression,
        execution_provider: str,
        kind: str = "",
        own_prompts: bool = False,
    ) -> dict[str, Any] | None:
        from onnxship.compress.result import compact_result

        slot, opened = self._open(store, credentials)
        for key in self._keys(source_sha256, compression, execution_provider, kind, own_prompts):
            if (kept := self._kept((*slot, key))) is not None:
                return kept
            manifest = opened.get_manifest(key)
            if manifest is not None:
                result = compact_result(manifest, opened.manifest_uri(key), cache_hit=True)
                self._keep((*slot, key), result)
                return copy.deepcopy(result)
        return None

    def _kept(self, slot: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._lock:
            entry = self._found.get(slot)
            if entry is None:
                return None
            at, result = entry
            if time.monotonic() - at > MANIFEST_TTL_S:
                del self._found[slot]
                return None
            self._found.move_to_end(slot)
            return copy.deepcopy(result)

    def _keep(self, slot: tuple[Any, ...], result: dict[str, Any]) -> None:
        with self._lock:
            self._found[slot] = (time.monotonic(), copy.deepcopy(result))
            self._found.move_to_end(slot)
            if len(self._found) > MAX_MANIFESTS:
                self._found.popitem(last=False)

    def _keys(
        self,
        source_sha256: str,
        compression: Compression,
        execution_provider: str,
        kind: str,
        own_prompts: bool,
    ) -> list[str]:
        """The keys the Job's compress would use, by the model's kind (both when the spec
        leaves it to the files, which the operator does not read)."""
        keys = []
        if kind != ModelKind.causal_lm.value:
            tools = self._tool_versions(execution_provider)
            keys.append(cache_key(source_sha256, compression, tools))
        if kind != ModelKind.onnx.value:
            from onnxship.compress.errors import InvalidSettingsError
            from onnxship.compress.llm.keys import llm_cache_key, llm_settings, prompts_in_key

            try:
                effective, _ = llm_settings(compression)
            except InvalidSettingsError:  # not settings a causal LM takes: the Job says so
                return keys
            if own_prompts and prompts_in_key(effective.quantize):
                return keys  # the key holds the prompts file's digest, which the Job reads
            keys.append(llm_cache_key(source_sha256, effective, execution_provider))
        return keys

    def _tool_versions(self, execution_provider: str) -> dict[str, str]:
        versions = self._versions.get(execution_provider)
        if versions is None:
            # compress.versions, not the compress package's pipeline: the operator process
            # must not load onnx, onnxruntime and numpy for a version string (issue 21).
            from onnxship.compress.versions import tool_versions

            versions = self._versions[execution_provider] = tool_versions(execution_provider)
        return versions

    def _open(self, store: StoreRef, credentials: dict[str, str]) -> tuple[tuple[str, ...], Any]:
        from onnxship.store import S3Credentials, open_store

        access = credentials.get("AWS_ACCESS_KEY_ID", "")
        secret = credentials.get("AWS_SECRET_ACCESS_KEY", "")
        token = credentials.get("AWS_SESSION_TOKEN", "")
        slot = (store.uri, store.endpoint, store.region, access, secret, token)
        with self._lock:  # boto3 clients are thread-safe once made; making one is not
            opened = self._stores.get(slot)
            if opened is not None:
                self._stores.move_to_end(slot)
                return slot, opened
            creds = (
                S3Credentials(access_key_id=access, secret_access_key=secret, session_token=token)
                if access
                else None
            )
            opened = open_store(
                store.uri, endpoint=store.endpoint, region=store.region, credentials=creds
            )
            self._stores[slot] = opened
            if len(self._stores) > MAX_OPEN_STORES:
                self._stores.popitem(last=False)
            return slot, opened
