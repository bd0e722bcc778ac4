"""The production ArtifactFinder: the store named by the spec (or the operator's default)."""

from __future__ import annotations

from typing import Any

from onnxship.api import Compression
from onnxship.plan.revision import cache_key
from onnxship.plan.workloads import StoreRef


class StoreArtifactFinder:
    def find(
        self,
        store: StoreRef,
        credentials: dict[str, str],
        source_sha256: str,
        compression: Compression,
        execution_provider: str,
    ) -> dict[str, Any] | None:
        from onnxship.compress import tool_versions
        from onnxship.compress.result import compact_result
        from onnxship.store import S3Credentials, open_store

        creds = (
            S3Credentials(
                access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                session_token=credentials.get("AWS_SESSION_TOKEN", ""),
            )
            if credentials.get("AWS_ACCESS_KEY_ID")
            else None
        )
        opened = open_store(
            store.uri, endpoint=store.endpoint, region=store.region, credentials=creds
        )
        key = cache_key(source_sha256, compression, tool_versions(execution_provider))
        manifest = opened.get_manifest(key)
        if manifest is None:
            return None
        return compact_result(manifest, opened.manifest_uri(key), cache_hit=True)
