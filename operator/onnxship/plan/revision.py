"""Identity of revisions and artifacts: short hashes of canonical JSON.

A revision changes when anything that changes what a pod computes changes (model digest,
compression, runtime image, execution provider); a cache key changes when anything that
changes the compressed bytes changes (source digest, compression settings, tool versions).
Replica counts and resources are neither: they are applied in place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from onnxship.api import Compression, Environment, ModelDeploymentSpec

REVISION_HASH_LEN = 10
CACHE_KEY_LEN = 32


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values always give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(value: Any, length: int) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def cache_key(
    source_sha256: str,
    compression: Compression,
    tools: dict[str, str],
    samples_sha256: str = "",
) -> str:
    """Key of an artifact in the store: same model + same settings + same tools + same sample
    inputs = same key.

    ``tools`` holds the versions of what produces the bytes (onnx, onnxruntime). The accuracy
    gate is left out because it decides whether to publish, not what is published; except
    with quantize auto, where the gate picks the candidate that is published, and the outputs
    it reads, whose figures the stored report holds. The samples
    (``samples_sha256``) calibrate and judge: other samples, other figures, another key.
    """
    auto = compression.quantize.mode == "auto"
    settings = compression.model_dump(
        by_alias=True, mode="json", exclude=None if auto else {"accuracy_gate"}
    )
    if not auto and compression.accuracy_gate.outputs:
        # the stored report holds figures for the outputs read: other outputs, other figures
        settings["accuracyGate"] = {"outputs": list(compression.accuracy_gate.outputs)}
    doc: dict[str, Any] = {
        "source": source_sha256,
        "compression": settings,
        "tools": dict(sorted(tools.items())),
    }
    if samples_sha256:
        doc["samples"] = samples_sha256
    return short_hash(doc, CACHE_KEY_LEN)


def revision_inputs(spec: ModelDeploymentSpec, model_sha256: str, image: str) -> dict[str, Any]:
    """What a revision hash covers, per environment."""

    def env_part(env: Environment) -> dict[str, Any]:
        return {
            "name": env.name,
            "executionProvider": env.execution_provider,
            "compression": spec.compression_for(env).model_dump(by_alias=True, mode="json"),
        }

    return {
        "model": model_sha256 or spec.model.uri,
        "image": image,
        "environments": [env_part(e) for e in spec.serving.effective_environments()],
    }


def revision_name(deployment: str, spec: ModelDeploymentSpec, model_sha256: str, image: str) -> str:
    """``<deployment>-<hash>``; a new name means a new revision and a canary."""
    return (
        f"{deployment}-{short_hash(revision_inputs(spec, model_sha256, image), REVISION_HASH_LEN)}"
    )
