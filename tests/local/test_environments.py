"""Two hardware pools on one machine: each serves its own compressed variant, picked by header.

Both pools are CPU here (int8 and fp32), which is what a laptop has; in a cluster they would
be a CPU pool and a GPU pool with an fp16 variant.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .conftest import Up, write_spec

POOLS = [
    {"name": "int8", "compression": {"quantize": {"mode": "dynamic"}}},
    {"name": "fp32", "compression": {"quantize": {"mode": "none"}}},
]


def infer(endpoint: str, environment: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    body = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
            for k, v in feeds.items()
        ]
    }
    req = urllib.request.Request(
        f"{endpoint}/v2/models/encoder/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "onnxship-environment": environment},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_two_pools_serve_their_own_variant_routed_by_header(
    demo_models: dict[str, Path], up_factory: Callable[[], Up], tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, demo_models, "v1", serving={"environments": POOLS})
    up = up_factory().start(str(spec))
    try:
        status = up.wait_for("v1 serving", lambda s: s.phase == "Ready", timeout=120)
        [record] = status.revisions
        envs = {e.name: e for e in record.environments}
        assert set(envs) == {"int8", "fp32"}
        assert envs["int8"].cache_key != envs["fp32"].cache_key, "one artifact per variant"
        int8, fp32 = envs["int8"].compression, envs["fp32"].compression
        assert int8 is not None and fp32 is not None
        assert int8.compressed_bytes < 0.5 * fp32.compressed_bytes

        samples = np.load(demo_models["samples"])
        feeds: dict[str, Any] = {k: samples[k][:1].astype(np.int64) for k in samples.files}
        original = ort.InferenceSession(str(demo_models["v1"])).run(None, feeds)[0]
        from_fp32 = infer(up.endpoint, "fp32", feeds)
        from_int8 = infer(up.endpoint, "int8", feeds)
        assert np.allclose(from_fp32, original, atol=1e-4), "fp32 pool answers like the original"
        assert not np.allclose(from_int8, original, atol=1e-4), "int8 pool runs its own variant"
        assert cosine(from_int8, original) > 0.99
    finally:
        assert up.interrupt() == 0
