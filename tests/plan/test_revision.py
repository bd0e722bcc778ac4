"""Revision names and cache keys change exactly when what a pod computes changes."""

from __future__ import annotations

from typing import Any

from onnxship.api import Compression, parse_spec
from onnxship.plan.revision import cache_key, canonical_json, revision_name

SHA = "a" * 64
TOOLS = {"onnx": "1.17.0", "onnxruntime": "1.20.0"}


def spec(**changes: Any) -> Any:
    base: dict[str, Any] = {"model": {"uri": "s3://m/model.onnx"}}
    base.update(changes)
    return parse_spec(base)


def test_name_is_deployment_and_short_hash() -> None:
    name = revision_name("encoder", spec(), SHA, "img:1")
    prefix, digest = name.rsplit("-", 1)
    assert prefix == "encoder" and len(digest) == 10 and len(name) <= 63


def test_same_inputs_same_revision() -> None:
    assert revision_name("e", spec(), SHA, "img:1") == revision_name("e", spec(), SHA, "img:1")


def test_in_place_changes_keep_the_revision() -> None:
    """Replicas, resources, rollout steps and batching knobs don't start a canary."""
    before = revision_name("e", spec(), SHA, "img:1")
    after = revision_name(
        "e",
        spec(
            serving={"replicas": 5, "resources": {"limits": {"cpu": 2}}},
            rollout={"steps": [{"setWeight": 50}]},
            revisionHistoryLimit=9,
        ),
        SHA,
        "img:1",
    )
    assert before == after


def test_what_changes_the_computation_changes_the_revision() -> None:
    base = revision_name("e", spec(), SHA, "img:1")
    variants = {
        revision_name("e", spec(), "b" * 64, "img:1"),
        revision_name("e", spec(), SHA, "img:2"),
        revision_name("e", spec(compression={"quantize": {"mode": "fp16"}}), SHA, "img:1"),
        revision_name(
            "e",
            spec(serving={"environments": [{"name": "default", "executionProvider": "CUDA"}]}),
            SHA,
            "img:1",
        ),
    }
    assert base not in variants and len(variants) == 4


def test_cache_key_separates_models_settings_and_tools() -> None:
    c = Compression()
    keys = {
        cache_key(SHA, c, TOOLS),
        cache_key("b" * 64, c, TOOLS),
        cache_key(SHA, Compression.model_validate({"quantize": {"mode": "none"}}), TOOLS),
        cache_key(SHA, Compression.model_validate({"prune": {"sparsity": 0.5}}), TOOLS),
        cache_key(SHA, c, {**TOOLS, "onnxruntime": "1.21.0"}),
    }
    assert len(keys) == 5


def test_accuracy_gate_does_not_change_the_artifact() -> None:
    """With an explicit mode the gate decides whether to publish, not what is published: a
    stricter gate reuses it. With quantize auto it picks the candidate: another key."""
    q = {"mode": "dynamic"}
    loose = Compression.model_validate({"quantize": q, "accuracyGate": {"min": 0.9}})
    strict = Compression.model_validate({"quantize": q, "accuracyGate": {"min": 0.999}})
    assert cache_key(SHA, loose, TOOLS) == cache_key(SHA, strict, TOOLS)
    auto_loose = Compression.model_validate({"accuracyGate": {"min": 0.9}})
    auto_strict = Compression.model_validate({"accuracyGate": {"min": 0.999}})
    assert cache_key(SHA, auto_loose, TOOLS) != cache_key(SHA, auto_strict, TOOLS)


def test_other_sample_inputs_are_another_cache_key() -> None:
    c = Compression()
    assert cache_key(SHA, c, TOOLS, samples_sha256="1" * 64) != cache_key(
        SHA, c, TOOLS, samples_sha256="2" * 64
    )
    assert cache_key(SHA, c, TOOLS, samples_sha256="1" * 64) != cache_key(SHA, c, TOOLS)


def test_canonical_json_ignores_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json(
        {"a": [1, {"c": 3, "d": 2}], "b": 1}
    )
