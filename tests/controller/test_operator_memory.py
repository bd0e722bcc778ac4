"""What the `onnxship operator` process loads: one operator pod per cluster holds it all day.

onnx, onnxruntime and numpy (the compression pipeline's tools) cost the operator ~40 MB of
RSS each before issue 21, though it never compresses: Jobs do. The process is started as the
operator image starts it, reconciles a ModelDeployment whose artifact is already in a real S3
store (moto), which makes the store lookup (cache key, manifest, compact result), and reports
its modules when it exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from onnxship.api import Compression
from onnxship.compress import compress
from onnxship.store import sha256_file
from tests.helpers import models
from tests.store.conftest import S3Server

from .conftest import Cluster
from .test_kubectl_plugin import kubeconfig
from .test_shared_store import pinned, secret, status

JOBS, DEPLOYS = "batch/v1/jobs", "apps/v1/deployments"
# Modules an operator pass has no use for, and what they weigh on a pod.
HEAVY = {
    "onnxruntime": "ONNX Runtime (~30 MB)",
    "onnx": "onnx (~15 MB)",
    "numpy": "numpy (~15 MB)",
    "onnxship.compress.pipeline": "the compression pipeline (onnx, onnxruntime's quantizers)",
    "onnxship.serve": "the model server",
    "onnxship.router.server": "the router's server",
}

# The operator entry (onnxship.cli.main:main, the console script) with a hook that writes
# the modules the process holds when it exits.
ENTRY = """
import atexit, json, sys
atexit.register(lambda: open(OUT, "w").write(json.dumps({"modules": sorted(sys.modules)})))
sys.argv = ["onnxship", *ARGS]
from onnxship.cli.main import main
main()
"""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def proc_status(pid: int) -> str:
    path = Path(f"/proc/{pid}/status")
    return path.read_text() if path.exists() else ""


def memory_kb(status_text: str, field: str) -> int:
    line = next(x for x in status_text.splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


async def test_operator_process_does_not_load_compression_tools(
    cluster: Cluster, s3_server: S3Server, tmp_path: Path, free_port: Any
) -> None:
    bucket = s3_server.new_bucket()
    store_uri = f"s3://{bucket}/shared/"
    model = models.save(models.mlp(), tmp_path / "model.onnx")
    sha, _ = sha256_file(model)
    # The artifact is in the store already (another cluster made it): the pass finds it.
    compress(
        model.as_uri(), Compression(), s3_server.store(store_uri), expected_sha256=sha
    )
    doc = pinned(model, sha, store_uri, s3_server.endpoint)
    report = tmp_path / "modules.json"
    liveness = free_port()
    args = ["--log-format", "json", "operator", "-A"]
    args += ["--metrics-port", str(free_port()), "--liveness-port", str(liveness)]
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig(tmp_path, str(cluster.server.url)),
        "ONNXSHIP_RUNTIME_IMAGE": "registry.example/onnxship/runtime:test",
    }
    code = f"OUT = {str(report)!r}\nARGS = {args!r}\n" + ENTRY
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Settled: logged in, watching, its health endpoint up (KMock answers on this loop).
        for _ in range(600):
            if await asyncio.to_thread(answers, f"http://127.0.0.1:{liveness}/healthz"):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        idle = proc_status(proc.pid)
        await cluster.create("/api/v1/namespaces/default/secrets", secret("default"))
        await cluster.apply(doc)
        await cluster.wait_for(
            lambda: cluster.objects(DEPLOYS), timeout=60, what="a Deployment from the store"
        )
        assert cluster.objects(JOBS) == {}, "the artifact was in the store: no Job"
        compressed = await cluster.wait_for(
            lambda: next(
                (c for c in status(cluster, "default").get("conditions", [])
                 if c["type"] == "Compressed"),
                None,
            ),
            what="the Compressed condition",
        )
        assert compressed["reason"] == "ArtifactReused", compressed
        after = proc_status(proc.pid)
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    seen = json.loads(report.read_text())
    if idle and after:  # the figures of issue 21's report (pytest -s shows them)
        print(
            f"operator RSS: idle {memory_kb(idle, 'VmRSS') // 1024} MB, after a pass with a "
            f"store lookup {memory_kb(after, 'VmRSS') // 1024} MB "
            f"(peak {memory_kb(after, 'VmHWM') // 1024} MB)"
        )
    loaded = {name: why for name, why in HEAVY.items() if name in seen["modules"]}
    assert not loaded, (
        f"the operator process loaded {sorted(loaded)} though it never compresses, serves or "
        f"routes: {'; '.join(loaded.values())} of RSS on every operator pod. Import them "
        "inside the command that uses them (onnxship/cli/*) or move the helper the operator "
        "needs to a light module (e.g. compress.versions)."
    )
